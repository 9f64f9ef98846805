from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from rillet.model import ModelLoadError, load_model
from rillet.model.gguf_file import open_gguf
from rillet.model.gguf_config import read_config
from rillet.model.gguf_loader import dequantize, unpermute_rope_rows
from tests.model.tiny_gguf import HAND_PACKED, Q, hand_packed_rows, write_gguf


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tmp_path / "absent.gguf"))
    assert "not found" in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(bogus))
    assert "GGUF" in str(caught.value) and "\n" not in str(caught.value)


def test_a_truncated_file_is_a_one_line_error(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tensors={"token_embd.weight": (np.ones((5, 64), np.float32), Q.Q8_0)})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ModelLoadError) as caught:
        open_gguf(path)
    assert "truncated" in str(caught.value) and "\n" not in str(caught.value)


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch="mamba")
    with pytest.raises(ModelLoadError, match="unsupported model architecture 'mamba'"):
        read_config(open_gguf(path))


def test_metadata_and_config_read_like_gguf_reader(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    ours, reference = open_gguf(path), gguf.GGUFReader(path)
    for key, field in reference.fields.items():
        if not key.startswith("GGUF."):  # the reader's own pseudo-fields for the header
            assert ours.get(key) == pytest.approx(field.contents()), key
    config = read_config(ours)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (2, 1, 4, 5)
    assert config.rope_theta == 500000.0 and config.tie_word_embeddings


@pytest.mark.parametrize("qtype, tolerance", [
    (Q.F32, 0.0), (Q.F16, 1e-3), (Q.BF16, 1e-2), (Q.Q8_0, 2e-2), (Q.Q4_0, 0.4), (Q.Q4_1, 0.4),
])
def test_quantized_tensors_load_in_torch_order(tmp_path, qtype, tolerance):
    values = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    try:
        path = write_gguf(tmp_path / "m.gguf", tensors={"blk.0.ffn_up.weight": (values, qtype)})
    except NotImplementedError:
        pytest.skip(f"gguf cannot quantize {qtype.name}")
    (tensor,) = open_gguf(path).tensors
    restored = dequantize(tensor)
    assert restored.shape == (6, 64) and restored.dtype == torch.float32
    assert (restored - torch.from_numpy(values)).abs().max().item() <= tolerance


@pytest.mark.parametrize("ggml_type", list(HAND_PACKED))
def test_blocks_of_shipped_types_load_as_the_values_they_stand_for(tmp_path, ggml_type):
    qtype = Q[ggml_type]
    raw, expected = hand_packed_rows(ggml_type, 3, 512, np.random.default_rng(int(qtype)))
    assert raw.shape[1] == 512 // gguf.GGML_QUANT_SIZES[qtype][0] * gguf.GGML_QUANT_SIZES[qtype][1]
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tensor,) = open_gguf(path).tensors
    assert tensor.shape == (3, 512)
    torch.testing.assert_close(dequantize(tensor), torch.from_numpy(expected), rtol=0, atol=0)


def test_unpermute_restores_half_rotation_order():
    # One head of 4 rows: llama.cpp stores the rotary halves interleaved (0, 2, 1, 3).
    stored = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    assert unpermute_rope_rows(stored, num_heads=1).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_config_of_the_default_model(ours):
    c = ours.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert c.rope_theta == 100000.0 and c.tie_word_embeddings and c.max_context_len == 8192
    assert c.rms_norm_eps == pytest.approx(1e-5) and c.vocab_size == 49152
    assert len(ours.file_fingerprint) == 64

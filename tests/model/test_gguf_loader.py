from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from rillet.model import ModelLoadError, load_model
from rillet.model.gguf_loader import unpermute_rope_rows


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


@pytest.mark.parametrize("qtype, tolerance", [
    (gguf.GGMLQuantizationType.F16, 1e-3),
    (gguf.GGMLQuantizationType.BF16, 1e-2),
    (gguf.GGMLQuantizationType.Q8_0, 2e-2),
    (gguf.GGMLQuantizationType.Q4_0, 0.4),
    (gguf.GGMLQuantizationType.Q4_1, 0.4),
])
def test_dequantize_round_trip(qtype, tolerance):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((8, 256)).astype(np.float32)
    try:
        packed = gguf.quants.quantize(values, qtype)
    except NotImplementedError:
        pytest.skip(f"gguf cannot quantize {qtype.name}")
    restored = gguf.quants.dequantize(packed, qtype)
    assert restored.shape == values.shape
    assert np.abs(restored - values).max() < tolerance


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quant_types_are_supported_by_dequantize(qtype):
    assert gguf.GGMLQuantizationType[qtype] in gguf.quants._type_traits


def test_unpermute_restores_half_rotation_order():
    # One head of 4 rows: llama.cpp stores the rotary halves interleaved (0, 2, 1, 3).
    stored = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    assert unpermute_rope_rows(stored, num_heads=1).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_config_of_the_default_model(ours):
    c = ours.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert c.rope_theta == 100000.0 and c.tie_word_embeddings and c.max_context_len == 8192

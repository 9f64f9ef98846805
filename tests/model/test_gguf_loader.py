from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from rillet.model import ModelLoadError, load_model
from rillet.model.gguf_loader import dequantize, open_gguf, read_config, unpermute_rope_rows
from tests.model.tiny_gguf import Q, write_gguf


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


# Blocks of the types llama.cpp's files ship, packed here by hand from chosen integers, scales and
# offsets, with the values each must stand for computed from those choices (not from the bytes).


def _fp16(value: float) -> bytes:
    return np.float16(value).tobytes()


def _k_scales(sc: np.ndarray, m: np.ndarray) -> bytes:
    """The 12 bytes of eight 6-bit scales and mins of Q4_K and Q5_K."""
    packed = np.zeros(12, np.uint8)
    for j in range(4):
        packed[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
        packed[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6)
        packed[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4)
    return packed.tobytes()


def _q4_k(rng) -> tuple[bytes, np.ndarray]:
    q, sc, m = rng.integers(0, 16, 256), rng.integers(0, 64, 8), rng.integers(0, 64, 8)
    d, dmin = 0.5, 0.25
    qs = np.zeros(128, np.uint8)
    for c in range(4):
        qs[32 * c:32 * c + 32] = q[64 * c:64 * c + 32] | (q[64 * c + 32:64 * c + 64] << 4)
    values = d * np.repeat(sc, 32) * q - dmin * np.repeat(m, 32)
    return _fp16(d) + _fp16(dmin) + _k_scales(sc, m) + qs.tobytes(), values


def _q5_k(rng) -> tuple[bytes, np.ndarray]:
    q, sc, m = rng.integers(0, 32, 256), rng.integers(0, 64, 8), rng.integers(0, 64, 8)
    d, dmin = 0.5, 0.25
    qs, qh = np.zeros(128, np.uint8), np.zeros(32, np.uint8)
    for c in range(4):
        low, high = q[64 * c:64 * c + 32], q[64 * c + 32:64 * c + 64]
        qs[32 * c:32 * c + 32] = (low & 15) | ((high & 15) << 4)
        qh |= ((low >> 4) << (2 * c)).astype(np.uint8) | ((high >> 4) << (2 * c + 1)).astype(np.uint8)
    values = d * np.repeat(sc, 32) * q - dmin * np.repeat(m, 32)
    return _fp16(d) + _fp16(dmin) + _k_scales(sc, m) + qh.tobytes() + qs.tobytes(), values


def _q6_k(rng) -> tuple[bytes, np.ndarray]:
    q, sc = rng.integers(0, 64, 256), rng.integers(-128, 128, 16)
    d = 0.5
    ql, qh = np.zeros(128, np.uint8), np.zeros(64, np.uint8)
    for h in range(2):
        part = q[128 * h:128 * h + 128]
        q1, q2, q3, q4 = part[0:32], part[32:64], part[64:96], part[96:128]
        ql[64 * h:64 * h + 32] = (q1 & 15) | ((q3 & 15) << 4)
        ql[64 * h + 32:64 * h + 64] = (q2 & 15) | ((q4 & 15) << 4)
        qh[32 * h:32 * h + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    values = d * np.repeat(sc, 16) * (q - 32)
    return ql.tobytes() + qh.tobytes() + sc.astype(np.int8).tobytes() + _fp16(d), values


def _q5_0(rng) -> tuple[bytes, np.ndarray]:
    q, d = rng.integers(0, 32, 32), 0.5
    qh = sum(int(q[j] >> 4) << j for j in range(32))
    qs = ((q[:16] & 15) | ((q[16:] & 15) << 4)).astype(np.uint8)
    return _fp16(d) + qh.to_bytes(4, "little") + qs.tobytes(), d * (q - 16)


def _q5_1(rng) -> tuple[bytes, np.ndarray]:
    q, d, m = rng.integers(0, 32, 32), 0.5, -3.0
    qh = sum(int(q[j] >> 4) << j for j in range(32))
    qs = ((q[:16] & 15) | ((q[16:] & 15) << 4)).astype(np.uint8)
    return _fp16(d) + _fp16(m) + qh.to_bytes(4, "little") + qs.tobytes(), d * q + m


@pytest.mark.parametrize("qtype, pack", [(Q.Q4_K, _q4_k), (Q.Q5_K, _q5_k), (Q.Q6_K, _q6_k), (Q.Q5_0, _q5_0),
                                         (Q.Q5_1, _q5_1)], ids=["Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"])
def test_blocks_of_shipped_types_load_as_the_values_they_stand_for(tmp_path, qtype, pack):
    rng = np.random.default_rng(int(qtype))
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, blocks_per_row = 3, 512 // block_values
    packed = [[pack(rng) for _ in range(blocks_per_row)] for _ in range(rows)]
    raw = np.frombuffer(b"".join(data for row in packed for data, _ in row), np.uint8).reshape(rows, -1)
    assert raw.shape[1] == blocks_per_row * block_bytes
    expected = np.array([np.concatenate([values for _, values in row]) for row in packed], np.float32)
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tensor,) = open_gguf(path).tensors
    assert tensor.shape == (rows, 512)
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

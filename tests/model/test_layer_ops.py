"""The native small ops of a layer (rillet/model/native/layer_ops.c) against their PyTorch versions."""
from __future__ import annotations

import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from rillet.model.layer_ops import LayerOps


@pytest.fixture(scope="module")
def native_ops() -> LayerOps:
    ops = LayerOps(torch.device("cpu"))
    if ops.lib is None:
        # Where a compiler exists, a source that does not build is a defect, not a reason to skip.
        assert not (shutil.which("cc") and platform.machine() == "x86_64"), "layer_ops.c failed to build"
        pytest.skip("layer_ops.c cannot be built here")
    return ops


@pytest.fixture(scope="module")
def torch_ops() -> LayerOps:
    ops = LayerOps(torch.device("cpu"))
    ops.lib = None
    return ops


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_add_rms_norm(native_ops, rows):
    hidden, delta, weight = random(rows, 96), random(rows, 96, seed=1), random(96, seed=2)
    expected_hidden = hidden + delta
    expected = expected_hidden * torch.rsqrt(expected_hidden.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    got_hidden, got = native_ops.add_rms_norm(hidden.clone(), delta, weight, 1e-5)
    assert torch.equal(got_hidden, expected_hidden)
    assert torch.allclose(got, expected, atol=1e-5)
    _, alone = native_ops.add_rms_norm(expected_hidden.clone(), None, weight, 1e-5)
    assert torch.equal(alone, got)


@pytest.mark.parametrize("rows", [1, 5, 33])
def test_rope_rotates_the_first_heads_in_place(native_ops, torch_ops, rows):
    heads, dim, width = 4, 64, 4 * 64 + 96  # 96 more columns per row that must stay as they are
    x = random(rows, width)
    angles = random(rows, dim // 2, seed=3)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    expected, got = x.clone(), x.clone()
    torch_ops.rope_(expected, heads, dim, cos, sin)
    native_ops.rope_(got, heads, dim, cos, sin)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got[:, heads * dim:], x[:, heads * dim:])
    # A rotation keeps each pair's length.
    first, second = got[:, :heads * dim].view(rows, heads, 2, dim // 2).unbind(2)
    before = x[:, :heads * dim].view(rows, heads, 2, dim // 2)
    assert torch.allclose(first ** 2 + second ** 2, before[:, :, 0] ** 2 + before[:, :, 1] ** 2, atol=1e-4)


def test_silu_mul(native_ops):
    x = random(7, 2 * 80) * 4
    assert torch.allclose(native_ops.silu_mul(x), F.silu(x[:, :80]) * x[:, 80:], atol=1e-5)


def test_silu_mul_of_a_very_negative_gate_is_zero_not_nan(native_ops):
    # exp(100) overflows float32: the gate's activation must still come out (near) zero.
    gate = torch.tensor([[-90.0, -100.0, -1000.0, -1e6, 90.0, 0.5, -0.5, -20.0]])
    got = native_ops.silu_mul(torch.cat([gate, torch.full_like(gate, 3.0)], dim=-1))
    assert torch.isfinite(got).all() and torch.allclose(got, F.silu(gate) * 3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_write_kv_puts_strided_rows_in_their_slots(native_ops, torch_ops, dtype):
    kv_heads, dim, rows = 2, 8, 5
    qkv = random(rows, (3 + 2 * kv_heads) * dim)  # q (3 heads), k, v side by side, as the layer has them
    k = qkv[:, 3 * dim:(3 + kv_heads) * dim].view(rows, kv_heads, dim)
    v = qkv[:, (3 + kv_heads) * dim:].view(rows, kv_heads, dim)
    slots = torch.tensor([17, 0, 5, 31, 16])
    got, expected = (torch.zeros(2, 4, 8, kv_heads, dim, dtype=dtype) for _ in range(2))
    native_ops.write_kv(k, v, got, slots)
    torch_ops.write_kv(k, v, expected, slots)
    assert torch.equal(got, expected)
    assert torch.equal(got.view(2, 32, kv_heads, dim)[0, 31], k[3].to(dtype))

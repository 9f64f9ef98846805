"""The small steps of a decoder layer: residual add with RMSNorm, rotary embedding, the MLP's gate
(SwiGLU or GeGLU), q/k/v biases and per-head norms, and writing keys and values into the paged cache.

On the CPU each is one call into rillet/model/native/layer_ops.c (a dozen PyTorch ops and their
dispatch cost more than the arithmetic at small batch); elsewhere, or without a C compiler, the
same in PyTorch ops. Tensors are float32; hidden states are contiguous [T, dim].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rillet.model import native


class LayerOps:
    def __init__(self, device: torch.device) -> None:
        self.lib = native.layer_ops() if torch.device(device).type == "cpu" else None

    def add_rms_norm(self, hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden + delta (in place where native), and its RMSNorm times weight."""
        if self.lib is None:
            if delta is not None:
                hidden = hidden + delta
            return hidden, torch.rms_norm(hidden, (hidden.shape[-1],), weight, eps)
        out = torch.empty_like(hidden)
        self.lib.add_rms_norm(hidden.data_ptr(), None if delta is None else delta.contiguous().data_ptr(),
                              weight.data_ptr(), out.data_ptr(), hidden.shape[0], hidden.shape[1], eps)
        return hidden, out

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm of each row of x [T, dim] times weight; x itself is left as it is."""
        return self.add_rms_norm(x.contiguous(), None, weight, eps)[1]

    def rope_(self, x: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotates the first heads heads of each row of x [T, >= heads * head_dim] in place; cos,
        sin: [T, head_dim]. The two halves of a head are rotated together (Hugging Face layout)."""
        if self.lib is None:
            view = x[:, :heads * head_dim].view(-1, heads, head_dim)
            first, second = view.chunk(2, dim=-1)
            rotated = torch.cat([-second, first], dim=-1)
            view.copy_(view * cos.unsqueeze(1) + rotated * sin.unsqueeze(1))
            return
        self.lib.rope(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), x.shape[0], x.stride(0), heads, head_dim)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up, for gate and up side by side in each row of gate_up [T, 2 * width]."""
        if self.lib is None:
            gate, up = gate_up.chunk(2, dim=-1)
            return F.silu(gate) * up
        width = gate_up.shape[1] // 2
        out = gate_up.new_empty(gate_up.shape[0], width)
        self.lib.silu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], width)
        return out

    def gelu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gelu_tanh(gate) * up, for gate and up side by side in each row of gate_up [T, 2 * width]."""
        if self.lib is None:
            gate, up = gate_up.chunk(2, dim=-1)
            return F.gelu(gate, approximate="tanh") * up
        width = gate_up.shape[1] // 2
        out = gate_up.new_empty(gate_up.shape[0], width)
        self.lib.gelu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], width)
        return out

    def add_bias_(self, x: torch.Tensor, bias: torch.Tensor) -> None:
        """x [T, width] (contiguous) += bias [width], in place."""
        if self.lib is None:
            x += bias
            return
        self.lib.add_bias(x.data_ptr(), bias.data_ptr(), x.shape[0], x.stride(0), x.shape[1])

    def head_rms_norm_(self, x: torch.Tensor, start: int, heads: int, head_dim: int, weight: torch.Tensor,
                       eps: float) -> None:
        """RMSNorm, in place, of the heads heads of each row of x [T, >= start + heads * head_dim] that
        begin at column start, each times weight [head_dim]."""
        if self.lib is None:
            view = x[:, start:start + heads * head_dim]
            view.copy_(torch.rms_norm(view.reshape(-1, heads, head_dim), (head_dim,), weight, eps).reshape(view.shape))
            return
        self.lib.head_rms_norm(x.data_ptr() + start * x.element_size(), weight.data_ptr(), x.shape[0], x.stride(0),
                               heads, head_dim, eps)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """k, v [T, kv_heads, dim] (rows may be strided) into their slots of cache
        [2, blocks, block_size, kv_heads, dim]."""
        num_kv_heads, head_dim = cache.shape[-2], cache.shape[-1]
        if (self.lib is None or cache.dtype not in (torch.float32, torch.float16) or not cache.is_contiguous()
                or k.stride(0) != v.stride(0) or k.stride()[1:] != (head_dim, 1) or v.stride()[1:] != (head_dim, 1)):
            slots = cache.view(2, -1, num_kv_heads, head_dim)
            slots[0].index_copy_(0, slot_mapping, k.to(cache.dtype))
            slots[1].index_copy_(0, slot_mapping, v.to(cache.dtype))
            return
        slot_mapping = slot_mapping.contiguous()
        self.lib.write_kv(k.data_ptr(), v.data_ptr(), k.stride(0), slot_mapping.data_ptr(), k.shape[0],
                          num_kv_heads * head_dim, cache.data_ptr(), cache.shape[1] * cache.shape[2],
                          int(cache.dtype == torch.float16))

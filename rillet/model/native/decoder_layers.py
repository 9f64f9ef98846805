"""The decoder layers of a step in one call of decoder_layers.c, where every piece of the layer
has a native kernel: matrices in the file's blocks (the quantized formats), LayerOps in C, the
paged attention kernel for the cache's dtype. It computes bit for bit what DecoderModel's Python
loop over the same kernels does, without that loop's per-kernel cost.
"""
from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence

import torch

from rillet.model import native
from rillet.model.attention_metadata import AttentionMetadata

log = logging.getLogger("rillet.native")
_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p

# The structs of decoder_layers.c, mirrored field for field; layout_differences() compares the two.


class _Linear(ctypes.Structure):
    _fields_ = [("multiply", _PTR), ("packed", _PTR), ("in_features", _I64), ("out_features", _I64)]


# A family's optional vectors of a layer: NULL in the struct where the family has none.
_OPTIONAL = ("qkv_bias", "q_norm", "k_norm", "post_attn_norm", "post_mlp_norm")


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", _PTR), ("mlp_norm", _PTR), ("qkv", _Linear), ("o", _Linear), ("gate_up", _Linear),
                ("down", _Linear), ("window", _I64), ("rope_index", _I64), *((name, _PTR) for name in _OPTIONAL)]


class _Decoder(ctypes.Structure):
    _fields_ = [("num_layers", _I64), ("hidden_size", _I64), ("intermediate_size", _I64), ("num_heads", _I64),
                ("num_kv_heads", _I64), ("head_dim", _I64), ("eps", _F32), ("scale", _F32),
                ("add_rms_norm", _PTR), ("rope", _PTR), ("gate", _PTR), ("write_kv", _PTR), ("add_bias", _PTR),
                ("head_rms_norm", _PTR), ("final_norm", _PTR), ("layers", ctypes.POINTER(_Layer))]


class _Caches(ctypes.Structure):
    _fields_ = [("layers", ctypes.POINTER(_PTR)), ("num_blocks", _I64), ("block_size", _I64),
                ("half", ctypes.c_int), ("attention", _PTR)]


# Each class's struct in decoder_layers.c.
_C_NAMES = {_Linear: "linear_t", _Layer: "layer_t", _Decoder: "decoder_t", _Caches: "kv_caches_t"}


def python_layout() -> dict[str, int]:
    """The ctypes classes' sizes and field offsets, named as decoder_layers.c's decoder_layout names them."""
    layout = {}
    for cls, name in _C_NAMES.items():
        layout[name] = ctypes.sizeof(cls)
        for field, _ in cls._fields_:
            layout[f"{name}.{field}"] = getattr(cls, field).offset
    return layout


def c_layout(lib: ctypes.CDLL) -> dict[str, int]:
    """The C structs' sizes and field offsets, as the compiled decoder_layers.c reports them."""
    function = lib.decoder_layout
    function.restype, function.argtypes = _I64, [_I64, ctypes.POINTER(ctypes.c_char_p)]
    layout, name = {}, ctypes.c_char_p()
    while (value := function(len(layout), ctypes.byref(name))) >= 0:
        layout[name.value.decode()] = value
    return layout


def layout_differences(lib: ctypes.CDLL) -> list[str]:
    """Where the ctypes classes and the C structs disagree (a field added, renamed or retyped on one side)."""
    ours, theirs = python_layout(), c_layout(lib)
    return [f"{name}: ctypes {ours.get(name)}, C {theirs.get(name)}"
            for name in sorted(ours.keys() | theirs.keys()) if ours.get(name) != theirs.get(name)]


class NativeDecoder:
    """Built once per model by build(); call it for a step where supports() says so."""

    def __init__(self, function, decoder: _Decoder, rope_bases: list[float], keep_alive: list) -> None:
        self._function = function
        self._decoder = decoder
        self._rope_bases = rope_bases  # the order of the RoPE tables a layer's rope_index points into
        self._keep_alive = keep_alive  # the tensors and arrays the struct points into
        self._caches: tuple[tuple[int, ...], _Caches, list[torch.Tensor]] | None = None
        self._supported: list[torch.Tensor] | None = None  # the list of caches last found supported

    @classmethod
    def build(cls, model) -> NativeDecoder | None:
        """For a DecoderModel; None where some piece has no native kernel here: LayerOps or this
        library cannot be built, a matrix's format has no kernel, a norm is not float32, or the heads
        are beyond the attention kernel's limits. Every part an architecture may have
        (rillet/model/architecture.py: biases, q/k norms, sandwich norms, GeGLU, a RoPE base per
        layer) runs here."""
        c = model.config
        ops = model.ops.lib
        limits = native.decode_attention_limits()
        if ops is None or limits is None or c.num_heads > limits.heads or c.head_dim > limits.head_dim:
            return None
        vectors = [model.norm] + [w for layer in model.layers for w in (
            layer.attn_norm, layer.mlp_norm, *(getattr(layer, name) for name in _OPTIONAL)) if w is not None]
        if any(w.dtype != torch.float32 or not w.is_contiguous() for w in vectors):
            return None
        rope_bases = sorted(model.rope_frequencies)
        layers = (_Layer * c.num_layers)()
        keep_alive: list = [layers, vectors]
        for layer, entry in zip(model.layers, layers):
            for name in ("qkv", "o", "gate_up", "down"):
                kernel = getattr(layer, f"{name}_proj").native_kernel()
                if kernel is None:
                    return None
                address, packed, in_features, out_features = kernel
                setattr(entry, name, _Linear(address, packed.data_ptr(), in_features, out_features))
                keep_alive.append(packed)
            entry.attn_norm, entry.mlp_norm = layer.attn_norm.data_ptr(), layer.mlp_norm.data_ptr()
            entry.window, entry.rope_index = layer.window or 0, rope_bases.index(layer.rope_base)
            for name in _OPTIONAL:
                vector = getattr(layer, name)
                setattr(entry, name, None if vector is None else vector.data_ptr())
        lib = native.library("decoder_layers")
        if lib is None:
            return None
        if differences := layout_differences(lib):
            log.error("decoder_layers.c and its ctypes classes disagree (%s): the layers run in Python",
                      "; ".join(differences))
            return None
        gate = ops.gelu_mul if c.arch.activation == "gelu_tanh" else ops.silu_mul
        decoder = _Decoder(c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim,
                           c.rms_norm_eps, c.scale, *(native.address(f) for f in (
                               ops.add_rms_norm, ops.rope, gate, ops.write_kv, ops.add_bias, ops.head_rms_norm)),
                           model.norm.data_ptr(), layers)
        function = lib.run_decoder_layers
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.POINTER(_Decoder), ctypes.POINTER(_Caches), _PTR, _PTR, _I64, _PTR, _PTR, _PTR,
                             _PTR, _PTR, _PTR, _PTR]
        return cls(function, decoder, rope_bases, keep_alive)

    def supports(self, kv_caches: Sequence[torch.Tensor]) -> bool:
        if kv_caches is self._supported:  # the engine passes the same list of caches every step
            return True
        cache = kv_caches[0]
        limits = native.decode_attention_limits()
        supported = (cache.device.type == "cpu" and limits is not None and cache.shape[2] <= limits.block_size
                     and native.decode_attention_address(cache.dtype) is not None
                     and all(c.is_contiguous() and c.dtype == cache.dtype for c in kv_caches))
        if supported and isinstance(kv_caches, list):
            self._supported = kv_caches  # held, so that no other list can take its identity
        return supported

    def __call__(self, hidden: torch.Tensor, rope: dict[float, tuple[torch.Tensor, torch.Tensor]],
                 kv_caches: Sequence[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        """hidden: [T, dim] float32 embeddings (becomes the residual stream); rope: each RoPE base's
        cos and sin of the step's positions, [T, head_dim] float32. Returns the final norm of the
        stream, [T, dim]."""
        assert hidden.dtype == torch.float32 and hidden.is_contiguous()
        caches = self._caches_struct(kv_caches)
        groups = meta.groups or [meta]  # each KV group's tables and slots (rillet/engine/kv_layout.py)
        tables = [group.query_rows().block_tables.contiguous() for group in groups]
        lens = meta.query_rows().context_lens.contiguous()
        slots = [group.slot_mapping.contiguous() for group in groups]
        layer_groups = torch.tensor(meta.layer_groups or [0] * len(kv_caches), dtype=torch.int64)
        widths = torch.tensor([t.shape[1] for t in tables], dtype=torch.int64)
        tables_of_step = [tuple(t.contiguous() for t in rope[base]) for base in self._rope_bases]
        cos = (_PTR * len(tables_of_step))(*(c.data_ptr() for c, _ in tables_of_step))
        sin = (_PTR * len(tables_of_step))(*(s.data_ptr() for _, s in tables_of_step))
        out = torch.empty_like(hidden)
        status = self._function(ctypes.byref(self._decoder), ctypes.byref(caches), hidden.data_ptr(), out.data_ptr(),
                                hidden.shape[0], cos, sin, _pointers(slots), _pointers(tables), lens.data_ptr(),
                                widths.data_ptr(), layer_groups.data_ptr())
        if status != 0:
            raise RuntimeError(f"run_decoder_layers failed (status {status})")
        return out

    def _caches_struct(self, kv_caches: Sequence[torch.Tensor]) -> _Caches:
        """The engine allocates its caches once: their struct is built once and kept."""
        key = tuple(c.data_ptr() for c in kv_caches)
        if self._caches is None or self._caches[0] != key:
            first = kv_caches[0]
            caches = _Caches((_PTR * len(key))(*key), first.shape[1], first.shape[2], int(first.dtype == torch.float16),
                             native.decode_attention_address(first.dtype))
            self._caches = (key, caches, list(kv_caches))  # the tensors stay alive while the struct points at them
        return self._caches[1]


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (_PTR * len(tensors))(*(t.data_ptr() for t in tensors))

"""Small C kernels for the CPU, compiled on first use with the machine's C compiler and loaded
with ctypes. Without a compiler, or on another device, callers fall back to PyTorch ops.

Each library is built for one instruction set (ISA): the best one this CPU has, found at start
(machine_isa), or a lower one named by $RILLET_ISA. The sources choose their code paths by what the
flags enable (avx512: AVX-512 with VNNI; avx2: AVX2, FMA and F16C; neon_dotprod and neon on
AArch64, with and without sdot; scalar: portable C), and each library says which path it took
(kernel_isa). The shared object is cached under $RILLET_CACHE_DIR (default ~/.cache/rillet), keyed
by the source (and the headers beside it) and the flags. It links the OpenMP runtime PyTorch has
already loaded, so both share one thread pool.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch

log = logging.getLogger("rillet.native")

SOURCE_DIR = Path(__file__).parent
FLAGS = ["-O3", "-fopenmp", "-fPIC"]
# The instruction sets, best first, per machine: the compiler flags that enable each, and the CPU
# features (/proc/cpuinfo's flags) it needs.
ISAS = {
    "x86_64": {
        "avx512": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"],
                   {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx2", "fma", "f16c"}),
        "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}),
        "scalar": ([], set()),
    },
    # Explicit -march flags (not -mcpu=native): the cache key has the flags, not the CPU. Plain
    # -march=armv8-a has NEON, so the portable C path is built with +nosimd. +fp16 lets the compiler
    # use half-precision arithmetic, so neon_dotprod needs the CPU's fphp and asimdhp too.
    "aarch64": {
        "neon_dotprod": (["-march=armv8.2-a+fp16+dotprod"], {"asimd", "asimddp", "fphp", "asimdhp"}),
        "neon": (["-march=armv8-a"], {"asimd"}),
        "scalar": (["-march=armv8-a+nosimd"], set()),
    },
}
# -ffast-math only when compiling: linked with it, the library would turn on flush-to-zero for
# the whole process as it loads. Kernels whose results must not depend on the batch keep IEEE
# arithmetic exactly as written.
EXTRA_FLAGS = {"decode_attention": ["-ffast-math"], "layer_ops": ["-ffast-math"], "matmul": ["-ffp-contract=off"]}
# glibc's vector math (expf over 8 lanes), where the C library has it.
LIBRARIES = [["-lmvec", "-lm"], ["-lm"]]
_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p


def machine_isas() -> list[str]:
    """The instruction sets this machine runs, best first (empty where there are no native kernels)."""
    features = _cpu_features()
    return [isa for isa, (_, needs) in ISAS.get(platform.machine(), {}).items() if needs <= features]


@cache
def machine_isa() -> str | None:
    """The instruction set the libraries are built for: the best this CPU has, or $RILLET_ISA where
    it names one the CPU has (to run or measure a lower path). None: no native kernels here."""
    isas = machine_isas()
    wanted = os.environ.get("RILLET_ISA")
    if wanted and wanted not in isas:
        log.warning("RILLET_ISA=%s is not one this CPU runs (%s): using %s", wanted, ", ".join(isas) or "none",
                    isas[0] if isas else "none")
    chosen = wanted if wanted in isas else (isas[0] if isas else None)
    log.info("native kernels: %s (this CPU runs %s)", chosen or "none", ", ".join(isas) or "none of ours")
    return chosen


def cache_dir() -> Path:
    return Path(os.environ.get("RILLET_CACHE_DIR") or Path.home() / ".cache" / "rillet")


@cache
def library(name: str, isa: str | None = None) -> ctypes.CDLL | None:
    """The compiled SOURCE_DIR/<name>.c for isa (default: machine_isa()), or None where it cannot be built here."""
    isa = isa or machine_isa()
    if platform.system() != "Linux" or isa is None:
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: %s falls back to PyTorch ops", name)
        return None
    # The headers the sources include count too: a change to one rebuilds every library.
    source = (SOURCE_DIR / f"{name}.c").read_bytes() + b"".join(h.read_bytes() for h in sorted(SOURCE_DIR.glob("*.h")))
    flags = FLAGS + ISAS[platform.machine()][isa][0] + EXTRA_FLAGS.get(name, [])
    key = hashlib.sha256(source + repr((flags, LIBRARIES)).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{isa}-{key}.so"
    try:
        if not target.is_file():
            _compile(compiler, SOURCE_DIR / f"{name}.c", target, flags)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("cannot build %s for %s (%s): falls back to PyTorch ops", name, isa, str(error)[:200])
        return None


def _compile(compiler: str, source: Path, target: Path, flags: list[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target, then renamed: processes starting together never load half a file.
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-c", "-o", f"{partial}.o", str(source)], check=True,
                       capture_output=True, timeout=120)
        for libraries in LIBRARIES:
            command = [compiler, "-shared", "-fopenmp", "-o", partial, f"{partial}.o", *libraries]
            if subprocess.run(command, capture_output=True, timeout=120).returncode == 0:
                os.replace(partial, target)
                return
        subprocess.run(command, check=True, capture_output=True, timeout=120)  # raises with the error
    finally:
        Path(partial).unlink(missing_ok=True)
        Path(f"{partial}.o").unlink(missing_ok=True)


def _cpu_features() -> set[str]:
    """/proc/cpuinfo's feature flags (x86 "flags", ARM "Features")."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


@cache
def _decode_attention_function(dtype: torch.dtype):
    suffix = {torch.float32: "f32", torch.float16: "f16"}.get(dtype)
    lib = library("decode_attention") if suffix else None
    if lib is None:
        return None
    function = getattr(lib, f"paged_decode_attention_{suffix}")
    function.restype = ctypes.c_int
    function.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR] + [_I64] * 7 + [_F32, _I64]
    return function


class AttentionLimits(NamedTuple):
    """decode_attention.c's fixed buffers: beyond these it declines and PyTorch's attention runs."""
    heads: int
    head_dim: int
    block_size: int


@cache
def decode_attention_limits() -> AttentionLimits | None:
    """The attention kernel's limits, as its C source declares them; None where it cannot be built here."""
    lib = library("decode_attention")
    if lib is None:
        return None
    out = (_I64 * 3)()
    lib.decode_attention_limits.restype = None
    lib.decode_attention_limits(out)
    return AttentionLimits(*out)


def address(function) -> int | None:
    """A loaded C function's address, for other native code to call; None for None."""
    return None if function is None else ctypes.cast(function, _PTR).value


def decode_attention_address(dtype: torch.dtype) -> int | None:
    """The attention kernel for a cache of dtype."""
    return address(_decode_attention_function(dtype))


def paged_decode_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor, scale: float | None = None,
                           window: int | None = None) -> torch.Tensor | None:
    """q: [S, heads, dim]; cache: [2, blocks, block_size, kv_heads, dim] float32 or float16 on the
    CPU; block_tables: [S, width] int64; context_lens: [S] int64; scale: of the scores (default
    dim ** -0.5); window: a sliding window (each row sees its last `window` tokens). Returns
    [S, heads, dim] float32, or None where the kernel does not apply (then the caller uses PyTorch ops)."""
    function = _decode_attention_function(cache.dtype) if cache.device.type == "cpu" and cache.is_contiguous() else None
    if function is None:
        return None
    q = q.float().contiguous()
    block_tables, context_lens = block_tables.long().contiguous(), context_lens.long().contiguous()
    out = torch.empty_like(q)
    num_seqs, num_heads, head_dim = q.shape
    _, num_blocks, block_size, num_kv_heads, _ = cache.shape
    status = function(q.data_ptr(), cache.data_ptr(), block_tables.data_ptr(), context_lens.data_ptr(),
                      out.data_ptr(), num_seqs, num_heads, num_kv_heads, head_dim, num_blocks, block_size,
                      block_tables.shape[1], head_dim ** -0.5 if scale is None else scale, window or 0)
    return out if status == 0 else None


# matmul.c: the kernels that multiply a GGUF file's own blocks, one driver over a table of (activation
# mode, block type) entries (matmul_table.h), each a function of the same signature.


@dataclass(frozen=True, slots=True)
class BlockKernel:
    """An entry of matmul.c's MATMUL_KERNELS, as built for one instruction set."""

    name: str  # "float32_q4_k", "int8_q4_k"...
    ggml_types: tuple[str, ...]  # the GGUF block types it multiplies
    mode: str  # its activations: "float32" (exact), "int8" (rounded per block of 32) or "int8x2" (rounded twice)
    group: int  # output rows packed together
    address: int  # of its C function, for native code to call
    isa: str  # the code path of the build it comes from


class _Entry(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("ggml_types", ctypes.c_char_p), ("mode", ctypes.c_int32),
                ("group", ctypes.c_int32), ("function", _PTR)]


_MODES = ("float32", "int8", "int8x2")  # matmul_table.h's enum activations
_MATMUL_FN = ctypes.CFUNCTYPE(ctypes.c_int, _PTR, _I64, _I64, _PTR, _I64, _PTR)


@cache
def block_kernels(isa: str | None = None) -> dict[str, BlockKernel]:
    """matmul.c's table as built for isa (default: the machine's), by kernel name; empty where it cannot be built."""
    lib = library("matmul", isa)
    if lib is None:
        return {}
    count = _I64.in_dll(lib, "MATMUL_KERNEL_COUNT").value
    path = kernel_isa("matmul", isa)
    return {entry.name.decode(): BlockKernel(entry.name.decode(), tuple(entry.ggml_types.decode().split()),
                                             _MODES[entry.mode], entry.group, entry.function, path)
            for entry in (_Entry * count).in_dll(lib, "MATMUL_KERNELS")}


@cache
def _callable(address: int):
    return _MATMUL_FN(address)


@cache
def kernel_isa(name: str, isa: str | None = None) -> str | None:
    """The code path library name's kernels took in the build for isa ("avx512", "avx2", "neon_dotprod",
    "neon", "scalar"): the library says, from what its flags enabled. None where it cannot be built."""
    lib = library(name, isa)
    if lib is None:
        return None
    function = getattr(lib, f"{name}_isa")
    function.restype, function.argtypes = ctypes.c_char_p, []
    return function().decode()


def block_matmul(x: torch.Tensor, packed: torch.Tensor, kernel: BlockKernel, out_features: int) -> torch.Tensor:
    """x [..., K] times weights packed for kernel (QuantizedWeight.pack): [..., out_features] float32."""
    x2 = x if x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous() else \
        x.reshape(-1, x.shape[-1]).float().contiguous()
    rows, k = x2.shape
    out = torch.empty(rows, out_features, dtype=torch.float32)
    status = _callable(kernel.address)(x2.data_ptr(), rows, k, packed.data_ptr(), out_features, out.data_ptr())
    if status != 0:
        raise RuntimeError(f"matmul {kernel.name} failed (status {status})")
    return out if x2 is x else out.reshape(*x.shape[:-1], out_features)


def stacked_matmul_address() -> int | None:
    """decoder_layers.c's stacked_matmul: row-stacked parts of different block types, each by its kernel."""
    lib = library("decoder_layers")
    return None if lib is None else address(lib.stacked_matmul)


@cache
def layer_ops() -> ctypes.CDLL | None:
    """layer_ops.c, or None where it cannot be built (the model then uses PyTorch ops)."""
    lib = library("layer_ops")
    if lib is None:
        return None
    signatures = {
        "add_rms_norm": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _F32],
        "rope": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64],
        "silu_mul": [_PTR, _PTR, _I64, _I64],
        "gelu_mul": [_PTR, _PTR, _I64, _I64],
        "add_bias": [_PTR, _PTR, _I64, _I64, _I64],
        "head_rms_norm": [_PTR, _PTR, _I64, _I64, _I64, _I64, _F32],
        "write_kv": [_PTR, _PTR, _I64, _PTR, _I64, _I64, _PTR, _I64, ctypes.c_int],
    }
    for name, argtypes in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib

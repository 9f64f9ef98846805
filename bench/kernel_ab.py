"""Times this checkout's block kernels against another checkout's, alternated call by call in one process:

    git worktree add /tmp/before HEAD~1          (the kernels before a change)
    python bench/kernel_ab.py --base /tmp/before --types Q4_1 Q4_K --rows 1 8 64

On a shared 2-core machine the speed of separate runs drifts by a fifth from one minute to the next,
more than most kernel changes are worth. Here both builds of rillet/model/native/matmul.c (the base's
compiled from its own sources, into its own cached library) multiply the same packed weights by the same
x in turn, so any drift falls on both alike. The packed layout must be the same in both checkouts
(block_packing.py): this one packs. Prints one JSON object per (type, rows): the median and the fastest
call of each, base / this (above 1: this checkout is faster), and the largest difference between their
outputs (0 where the change keeps every result bit for bit).

    python bench/kernel_ab.py --base /tmp/before --attention     (decode_attention.c instead of matmul.c)

    python bench/kernel_ab.py --base /tmp/before --step --rows 1     (a decode step's matrices, from memory)

A call repeated on one matrix finds its weights in the caches, which hides how a kernel reads memory. With
--step each build multiplies every matrix of a decode step in the forward's order (each layer's, then the
output head: --model, default the default model, in --format), so that each matrix comes from memory as in
the engine; the two builds alternate sweep by sweep, --calls sweeps each. Prints one object per rows.

With --attention it times the paged attention kernel (decode_attention.c) the same way, over a float16
cache of random keys and values, on the cases in ATTENTION_CASES: a decode row and a batch of them, and
a prefill chunk's rows (one block table, each row a token further), with SmolLM2-135M's heads (9 query
heads on 3 KV heads) and a 1.7B model's (32 on 32), head size 64. Repeated calls find the keys and
values in the caches; --cold writes 64 MB before each call, so that they come from memory, as in a step:

    python bench/kernel_ab.py --base /tmp/before --attention --cold
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from block_kernels import TYPES, random_weight
from engine_step import LAYER_MATRICES
from rillet.model import default_model_path, load_model, native
from rillet.model.quantized import kernels


def base_native(checkout: Path):
    """The other checkout's rillet.model.native package, imported under its own name."""
    package = checkout / "rillet" / "model" / "native"
    spec = importlib.util.spec_from_file_location("base_native", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_native"] = module
    spec.loader.exec_module(module)
    return module


# name: (rows, query heads, KV heads, head size, context tokens, whether the rows are one prefill chunk)
ATTENTION_CASES = {
    "decode, 1 row, 9/3 heads, 1,000 tokens": (1, 9, 3, 64, 1000, False),
    "decode, 1 row, 32/32 heads, 1,000 tokens": (1, 32, 32, 64, 1000, False),
    "decode, 64 rows, 9/3 heads, 200 tokens": (64, 9, 3, 64, 200, False),
    "prefill, 256 rows, 32/32 heads, 1,000 tokens": (256, 32, 32, 64, 1000, True),
    "prefill, 256 rows, 9/3 heads, 1,000 tokens": (256, 9, 3, 64, 1000, True),
}
BLOCK_SIZE = 16


def attention_inputs(rows: int, heads: int, kv_heads: int, dim: int, context: int, prefill: bool):
    """q, a float16 cache with its blocks shuffled, block tables and context lengths: decode rows each
    with a context of its own, or a prefill chunk's rows on one table, the last `rows` tokens of it."""
    generator = torch.Generator().manual_seed(rows * context)
    width, tables_count = -(-context // BLOCK_SIZE), 1 if prefill else rows
    num_blocks = tables_count * width + 1
    cache = torch.randn(2, num_blocks, BLOCK_SIZE, kv_heads, dim, generator=generator).half()
    tables = (torch.randperm(num_blocks - 1, generator=generator) + 1).view(tables_count, width)
    if prefill:
        tables, lens = tables.expand(rows, width).contiguous(), torch.arange(context - rows + 1, context + 1)
    else:
        lens = torch.full((rows,), context)
    return torch.randn(rows, heads, dim, generator=generator), cache, tables, lens


def alternated(builds: dict, calls: int, before=None) -> tuple[dict, dict]:
    """Each build called `calls` times, the two in turn (the first of each pair alternating); their
    times in seconds, and each one's last result. before(), if given, runs untimed before each call."""
    results, seconds = {}, {name: [] for name in builds}
    for name, call in builds.items():
        call()  # warm
    for i in range(calls):
        for name in (("base", "this") if i % 2 == 0 else ("this", "base")):
            if before is not None:
                before()
            started = time.perf_counter()
            results[name] = builds[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds, results


def timing(seconds: dict, results: dict, calls: int) -> dict:
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    return {"threads": torch.get_num_threads(), "calls": calls,
            "base_ms": round(medians["base"] * 1e3, 3), "base_fastest_ms": round(min(seconds["base"]) * 1e3, 3),
            "this_ms": round(medians["this"] * 1e3, 3), "this_fastest_ms": round(min(seconds["this"]) * 1e3, 3),
            "base_over_this": round(medians["base"] / medians["this"], 3),
            "max_difference": float(f"{(results['base'] - results['this']).abs().max().item():.3g}")}


def attention_ab(base, calls: int, cold: bool = False) -> None:
    this_lib, base_lib = native.library("decode_attention"), base.library("decode_attention")
    if this_lib is None or base_lib is None:
        raise SystemExit("a build of decode_attention.c failed")
    if Path(this_lib._name).name == Path(base_lib._name).name:
        print("warning: both checkouts build the same decode_attention.c", file=sys.stderr)
    # Cold: 64 MB written before each call (more than the caches hold), so that the keys and values
    # come from memory, as in a step, where a layer's weights pass through the caches between two
    # reads of its cache.
    evict = torch.zeros(64 << 20, dtype=torch.uint8) if cold else None
    for name, case in ATTENTION_CASES.items():
        q, cache, tables, lens = attention_inputs(*case)
        builds = {"base": lambda: base.paged_decode_attention(q, cache, tables, lens),
                  "this": lambda: native.paged_decode_attention(q, cache, tables, lens)}
        seconds, results = alternated(builds, calls, before=None if evict is None else lambda: evict.add_(1))
        if any(result is None for result in results.values()):
            raise SystemExit(f"{name}: a build's kernel declined")
        print(json.dumps({"attention": name, "cold": cold, **timing(seconds, results, calls)}), flush=True)


def step_matrices(model) -> list[tuple[str, torch.Tensor, int, int]]:
    """The matrices of a decode step in the order the forward multiplies them, each part of a stacked one
    on its own: (kernel name, packed blocks, in_features, out_features). Linear has no public view of its
    parts and blocks: its private fields are read here."""
    matrices = []
    for linear in [getattr(layer, name) for layer in model.layers for name in LAYER_MATRICES] + [model.lm_head]:
        for part in linear._parts or [linear]:
            if part._blocks is not None:
                matrices.append((part._kernel.name, part._blocks, part.in_features, part.out_features))
    return matrices


def step_ab(base, model_path: str | None, weight_format: str, rows_list: list[int], sweeps: int) -> None:
    loaded = load_model(model_path or default_model_path(), weight_format=weight_format)
    matrices = step_matrices(loaded.model)
    if not matrices:
        raise SystemExit(f"no matrix of this model has a block kernel in {weight_format}")
    tables = {"base": (base, base.block_kernels()), "this": (native, native.block_kernels())}
    weight_bytes = sum(packed.numel() * packed.element_size() for _, packed, _, _ in matrices)
    for rows in rows_list:
        generator = torch.Generator().manual_seed(rows)
        xs = {k: torch.randn(rows, k, generator=generator) for k in sorted({k for _, _, k, _ in matrices})}
        outs = {name: [torch.empty(rows, n) for _, _, _, n in matrices] for name in tables}
        calls = {name: [(module._callable(table[kernel].address), xs[k].data_ptr(), k, packed.data_ptr(), n, y.data_ptr())
                        for (kernel, packed, k, n), y in zip(matrices, outs[name])]
                 for name, (module, table) in tables.items()}

        def sweep(name: str) -> None:
            for function, x, k, packed, n, y in calls[name]:
                if function(x, rows, k, packed, n, y) != 0:
                    raise SystemExit(f"a {name} kernel failed")

        seconds, _ = alternated({name: lambda name=name: sweep(name) for name in tables}, sweeps)
        results = {name: torch.cat([y.flatten() for y in ys]) for name, ys in outs.items()}
        result = timing(seconds, results, sweeps)
        print(json.dumps({"step": Path(model_path).name if model_path else "default model", "format": weight_format,
                          "rows": rows, "matrices": len(matrices), "weight_mb": round(weight_bytes / 1e6, 1),
                          **result, "this_gb_per_s": round(weight_bytes / result["this_ms"] / 1e6, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (its repository root)")
    parser.add_argument("--types", nargs="+", default=["Q4_1", "Q4_K"], choices=TYPES)
    parser.add_argument("--format", default="quantized-int8x2", choices=["quantized", "quantized-int8", "quantized-int8x2"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--shape", type=int, nargs=2, default=[11264, 2048], metavar=("OUT", "IN"),
                        help="the matrix (default: a 1.7B model's gate and up projections)")
    parser.add_argument("--calls", type=int, default=40, help="calls of each build per (type, rows)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--attention", action="store_true", help="time decode_attention.c instead of matmul.c")
    parser.add_argument("--cold", action="store_true",
                        help="with --attention: the caches overwritten before each call (the cache from memory)")
    parser.add_argument("--step", action="store_true", help="time a decode step's matrices, from memory (--model)")
    parser.add_argument("--model", default=None, help="with --step: a GGUF file (default: the default model)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = base_native(args.base.resolve())
    if args.attention:
        attention_ab(base, args.calls, args.cold)
        return
    if args.step:
        step_ab(base, args.model, args.format, args.rows, args.calls)
        return
    this_lib, base_lib = native.library("matmul"), base.library("matmul")
    if this_lib is None or base_lib is None:
        raise SystemExit("a build of matmul.c failed")
    if Path(this_lib._name).name == Path(base_lib._name).name:
        print("warning: both checkouts build the same matmul.c", file=sys.stderr)
    out_features, in_features = args.shape
    rng = np.random.default_rng(0)
    for ggml_type in args.types:
        kernel = kernels()[(ggml_type, args.format)]
        packed = random_weight(ggml_type, out_features, in_features, rng).pack(kernel)
        # Each checkout's own table and call (the same entry by name, from its own library).
        builds = {"base": (base.block_matmul, base.block_kernels()[kernel.name]), "this": (native.block_matmul, kernel)}
        for rows in args.rows:
            x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))
            calls = {name: (lambda multiply=multiply, entry=entry: multiply(x, packed, entry, out_features))
                     for name, (multiply, entry) in builds.items()}
            seconds, results = alternated(calls, args.calls)
            print(json.dumps({"type": ggml_type, "format": args.format, "rows": rows, "shape": args.shape,
                              **timing(seconds, results, args.calls)}), flush=True)

if __name__ == "__main__":
    main()

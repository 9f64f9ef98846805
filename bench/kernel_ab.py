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
from rillet.model import native
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = base_native(args.base.resolve())
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
            y: dict[str, torch.Tensor] = {}
            seconds: dict[str, list[float]] = {name: [] for name in builds}
            for name, (multiply, entry) in builds.items():
                multiply(x, packed, entry, out_features)  # warm
            for i in range(args.calls):
                for name in (("base", "this") if i % 2 == 0 else ("this", "base")):
                    multiply, entry = builds[name]
                    started = time.perf_counter()
                    y[name] = multiply(x, packed, entry, out_features)
                    seconds[name].append(time.perf_counter() - started)
            medians = {name: statistics.median(times) for name, times in seconds.items()}
            print(json.dumps({"type": ggml_type, "format": args.format, "rows": rows, "shape": args.shape,
                              "threads": torch.get_num_threads(), "calls": args.calls,
                              "base_ms": round(medians["base"] * 1e3, 3), "base_fastest_ms": round(min(seconds["base"]) * 1e3, 3),
                              "this_ms": round(medians["this"] * 1e3, 3), "this_fastest_ms": round(min(seconds["this"]) * 1e3, 3),
                              "base_over_this": round(medians["base"] / medians["this"], 3),
                              "max_difference": float(f"{(y['base'] - y['this']).abs().max().item():.3g}")}), flush=True)


if __name__ == "__main__":
    main()

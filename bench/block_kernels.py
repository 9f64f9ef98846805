"""Times the native block kernels on one layer's matrices of a Llama-style model, per block type and
weight format, against Q4_1 (the type whose kernel came first):

    python bench/block_kernels.py --threads 1 --batch 1 16
    RILLET_ISA=avx2 python bench/block_kernels.py ...     (a lower instruction set than the machine's best)

The layers' weights are copied until they far exceed the last-level cache, and each step multiplies
every copy once, so the weights stream from memory as they do in a model. Random blocks with sane
scales: the values do not change the work. Prints one JSON object per (format, type, batch).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import gguf
import numpy as np
import torch

from rillet.model import native
from rillet.model.quantized import BLOCK_FORMATS, QuantizedWeight, kernels

TYPES = ["Q4_1", "Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"]
# Where each type keeps its float16 scales (random bytes there could be NaN or inf).
FLOAT16_OFFSETS = {"Q4_0": [0], "Q4_1": [0, 2], "Q8_0": [0], "Q5_0": [0], "Q5_1": [0, 2], "Q4_K": [0, 2],
                   "Q5_K": [0, 2], "Q6_K": [208]}


def random_weight(ggml_type: str, rows: int, cols: int, rng: np.random.Generator) -> QuantizedWeight:
    values, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]]
    blocks = rng.integers(0, 256, (rows, cols // values, size), dtype=np.uint8)
    for offset in FLOAT16_OFFSETS[ggml_type]:
        halves = (rng.standard_normal(blocks.shape[:2]) * 0.01).astype(np.float16)
        blocks[..., offset:offset + 2] = halves[..., None].view(np.uint8)
    return QuantizedWeight(ggml_type, torch.from_numpy(blocks.reshape(rows, -1)), cols)


def time_type(ggml_type: str, weight_format: str, args, batch: int, rng) -> dict | None:
    kernel = kernels().get((ggml_type, weight_format))
    if kernel is None:
        return None
    h, i = args.hidden, args.intermediate
    shapes = [(h + 2 * args.kv_width, h), (h, h), (2 * i, h), (h, i)]  # qkv, o, gate_up, down
    layer = [(random_weight(ggml_type, n, k, rng).pack(kernel), n, k) for n, k in shapes]
    layers = [[(packed.clone(), n, k) for packed, n, k in layer] for _ in range(args.copies)]
    inputs = {k: torch.randn(batch, k) for _, k in shapes}

    def step() -> None:
        for layer in layers:
            for packed, n, k in layer:
                native.block_matmul(inputs[k], packed, kernel, n)

    step()
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) / args.copies)
    seconds = statistics.median(times)
    layer_bytes = sum(packed.numel() for packed, _, _ in layers[0])
    return {"format": weight_format, "type": ggml_type, "isa": kernel.isa, "batch": batch, "threads": args.threads,
            "layer_shapes": shapes, "layer_mb": round(layer_bytes / 1e6, 2), "ms_per_layer": round(seconds * 1e3, 3),
            "gb_per_s": round(layer_bytes / seconds / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=TYPES, choices=TYPES)
    parser.add_argument("--formats", nargs="+", default=list(BLOCK_FORMATS), choices=BLOCK_FORMATS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--kv-width", type=int, default=256, help="rows of k and of v (grouped-query attention)")
    parser.add_argument("--copies", type=int, default=6, help="copies of the layer cycled through (beyond the cache)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for weight_format in args.formats:
        for batch in args.batch:
            baseline = None
            for ggml_type in ["Q4_1"] + [t for t in args.types if t != "Q4_1"]:
                result = time_type(ggml_type, weight_format, args, batch, rng)
                if result is None:
                    continue
                baseline = baseline or result["ms_per_layer"]
                result["vs_q4_1"] = round(result["ms_per_layer"] / baseline, 2)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

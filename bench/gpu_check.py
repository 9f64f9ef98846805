"""Decode speed on a GPU, for issue 29: tokens/s at batch 1 and 64 on the default model's shape and on
SmolLM2-1.7B's, with and without CUDA graphs, and the share of the device's memory bandwidth at batch 1.

    python bench/gpu_check.py --device cuda            (bench/gpu_check.sh runs it on a lent GPU)
    python bench/gpu_check.py --device cpu --tiny      (the same code on tiny shapes: a dry run)

The weights are random (float16, as --device cuda holds a GGUF file's blocks once dequantized at
load), in each model's real shape: speed does not depend on their values, and the default model's
file (98 MB) is larger than what travels to a lent GPU machine. Each decode runs through LLMEngine
(scheduler, model, sampler), greedy, over prompts of --prompt-tokens tokens, timing every step of
--decode-tokens. Prints one JSON object per line; the last one, "summary", holds the figures.

bandwidth_share = (bytes of weights and KV read per step) / step time / bandwidth, where bandwidth is
measured first: the median of 10 sums over a 1 GiB float32 tensor (one read of each byte), timed by
CUDA events on the GPU. Weight bytes count every matrix, vector and the output head once a step and
one embedding row a token (bench/engine_step.py's count).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from rillet.engine.config import EngineConfig
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.model_runner import ModelRunner
from rillet.engine.sampling_params import SamplingParams
from rillet.model.config import ModelConfig
from rillet.model.decoder import DecoderModel

GB = 1e9
# name: (hidden, layers, heads, kv heads, intermediate, vocabulary, tied, max context, RoPE base)
SHAPES = {
    # The default model, SmolLM2-135M-Instruct (tests/bench/test_gpu_check.py checks it against its file).
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True, 8192, 100000.0),
    # bench/real_size_model.py's default: 1.7 billion parameters.
    "smollm2-1.7b": (2048, 24, 32, 32, 8192, 49152, True, 8192, 130000.0),
    # Dry runs on the CPU.
    "tiny": (64, 2, 4, 2, 128, 256, True, 512, 10000.0),
}


def _engine_step():
    """bench/engine_step.py (not a package) as a module: its byte counts."""
    spec = importlib.util.spec_from_file_location("engine_step", Path(__file__).with_name("engine_step.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("engine_step", module)
    spec.loader.exec_module(module)
    return module


def shape_config(name: str, layer_windows: tuple[int | None, ...] = ()) -> ModelConfig:
    hidden, layers, heads, kv_heads, intermediate, vocabulary, tied, context, theta = SHAPES[name]
    return ModelConfig(architecture="llama", vocab_size=vocabulary, hidden_size=hidden,
                       intermediate_size=intermediate, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=hidden // heads, rope_theta=theta, rms_norm_eps=1e-5, max_context_len=context,
                       tie_word_embeddings=tied, layer_windows=layer_windows)


def random_weights(config: ModelConfig, device: str = "cpu", dtype: torch.dtype = torch.float16,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of config's shape, as the loader names them: matrices of std 0.02 in dtype
    (made on device), norms of 1 in float32."""
    generator = torch.Generator(device=device).manual_seed(seed)
    c = config

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=generator, device=device, dtype=torch.float32) * 0.02).to(dtype)

    def ones() -> torch.Tensor:
        return torch.ones(c.hidden_size, device=device)

    weights = {"model.embed_tokens.weight": matrix(c.vocab_size, c.hidden_size), "model.norm.weight": ones()}
    if not c.tie_word_embeddings:
        weights["lm_head.weight"] = matrix(c.vocab_size, c.hidden_size)
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    for i in range(c.num_layers):
        prefix = f"model.layers.{i}."
        weights |= {prefix + "input_layernorm.weight": ones(), prefix + f"{c.arch.mlp_norm_name}.weight": ones(),
                    prefix + "self_attn.q_proj.weight": matrix(q, c.hidden_size),
                    prefix + "self_attn.k_proj.weight": matrix(kv, c.hidden_size),
                    prefix + "self_attn.v_proj.weight": matrix(kv, c.hidden_size),
                    prefix + "self_attn.o_proj.weight": matrix(c.hidden_size, q),
                    prefix + "mlp.gate_proj.weight": matrix(c.intermediate_size, c.hidden_size),
                    prefix + "mlp.up_proj.weight": matrix(c.intermediate_size, c.hidden_size),
                    prefix + "mlp.down_proj.weight": matrix(c.hidden_size, c.intermediate_size)}
    return weights


def random_model(config: ModelConfig, device: str, weight_format: str = "float16", seed: int = 0,
                 dtype: torch.dtype = torch.float16) -> DecoderModel:
    """A decoder of config's shape with random_weights, made on device."""
    weights = random_weights(config, device, dtype, seed)
    with torch.device(device):
        return DecoderModel(config, weights, weight_format).eval()


class _Tokenizer:
    """What LLMEngine asks of a tokenizer when no request is constrained: no stop tokens, so every
    sequence decodes to its max_tokens and the batch stays whole."""

    stop_token_ids: frozenset[int] = frozenset()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def measure_bandwidth(device: str, gib: float = 1.0, repeats: int = 10) -> float:
    """GB/s of one read of every byte: the median sum over a float32 tensor of gib GiB."""
    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    data.sum()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            data.sum()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            data.sum()
            times.append(time.perf_counter() - started)
    return data.numel() * 4 / statistics.median(times) / GB


def make_engine(model: DecoderModel, device: str, max_num_seqs: int, kv_cache_tokens: int) -> LLMEngine:
    config = EngineConfig(device=device, kv_cache_dtype="float16", max_num_seqs=max_num_seqs,
                          kv_cache_tokens=kv_cache_tokens, max_num_batched_tokens=4096, enable_prefix_caching=False)
    engine = LLMEngine(model, _Tokenizer(), model.config.max_context_len, config)
    if engine.runner.decode_graphs is None and device == "cpu":  # a dry run: DecodeGraphs' eager stand-in
        engine.runner = ModelRunner(model, engine.kv_layout.num_pages(config.num_blocks), config.block_size,
                                    torch.float16, engine.device, engine.kv_layout, max_num_seqs=max_num_seqs,
                                    decode_graphs=True)
    return engine


def time_decode(engine: LLMEngine, batch: int, prompt_tokens: int, decode_tokens: int, graphs: bool) -> dict:
    """Median step time of a batch's greedy decode; graphs False runs the engine's steps eagerly."""
    runner = engine.runner
    captured, runner.decode_graphs = runner.decode_graphs, runner.decode_graphs if graphs else None
    vocabulary = engine.runner.model.config.vocab_size
    try:
        for i in range(batch):
            prompt = [(j * 7919 + i * 104729) % (vocabulary - 1) + 1 for j in range(prompt_tokens)]
            engine.add_request(f"d{batch}-{i}-{graphs}", prompt, SamplingParams(temperature=0, max_tokens=decode_tokens + 1))
        while any(s.num_computed_tokens < s.num_prompt_tokens
                  for s in engine.scheduler.running + list(engine.scheduler.waiting)):
            engine.step()  # the prefill, untimed
        times, contexts = [], []
        while engine.has_work:
            context = [s.num_tokens for s in engine.scheduler.running]
            started = time.perf_counter()
            outputs = engine.step()  # returns once the sampled tokens are on the host
            if outputs and len(context) == batch:
                times.append(time.perf_counter() - started)
                contexts.append(context)
    finally:
        runner.decode_graphs = captured
    step = statistics.median(times)
    return {"batch": batch, "graphs": graphs and captured is not None, "steps": len(times),
            "step_ms_median": round(step * 1000, 3), "tokens_per_s": round(batch / step, 1),
            "context_median": statistics.median(statistics.mean(c) for c in contexts),
            "contexts": contexts[len(contexts) // 2]}


def bench_shape(name: str, args, bandwidth: float) -> dict:
    engine_step = _engine_step()
    started = time.perf_counter()
    model = random_model(shape_config(name), args.device)
    built = time.perf_counter() - started
    engine = make_engine(model, args.device, max(args.batch), args.kv_cache_tokens)
    captured = time.perf_counter() - started - built
    weights = engine_step.weight_bytes(model)
    parameters = sum(linear.in_features * linear.out_features for layer in model.layers
                     for linear in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj))
    result = {"measure": "shape", "shape": name, "device": args.device, "parameters_in_layers": parameters,
              "weight_bytes_per_step": weights["per_step"], "build_s": round(built, 2),
              "engine_and_graphs_s": round(captured, 2),
              "graph_sizes": engine.runner.decode_graphs.sizes if engine.runner.decode_graphs else None,
              "decode": []}
    for batch in args.batch:
        for graphs in (True, False):
            try:
                figures = time_decode(engine, batch, args.prompt_tokens, args.decode_tokens, graphs)
            except Exception as error:  # one device run is all there is: say what broke, go on
                print(json.dumps({"measure": "error", "shape": name, "batch": batch, "graphs": graphs,
                                  "error": traceback.format_exc(limit=-8)}), flush=True)
                result.setdefault("errors", []).append(f"batch {batch} graphs {graphs}: {error!r}")
                engine = make_engine(model, args.device, max(args.batch), args.kv_cache_tokens)
                continue
            contexts = figures.pop("contexts")
            read = engine_step.step_bytes(model, contexts, torch.float16)
            gb_per_s = read["bytes"] / (figures["step_ms_median"] / 1000) / GB
            figures |= {"bytes_per_step": read["bytes"], "kv_bytes_per_step": read["kv_bytes"],
                        "gb_per_s": round(gb_per_s, 1), "bandwidth_share": round(gb_per_s / bandwidth, 4)}
            result["decode"].append(figures)
            print(json.dumps({"measure": "decode", "shape": name, **figures}), flush=True)
    del engine, model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def summary(results: list[dict], bandwidth: float, device_name: str) -> dict:
    """Tokens/s at each batch with graphs, and batch 1's share of the bandwidth, per shape."""
    figures = {}
    for result in results:
        best = {d["batch"]: d for d in result["decode"] if d["graphs"]} or {d["batch"]: d for d in result["decode"]}
        eager = {d["batch"]: d for d in result["decode"] if not d["graphs"]}
        entry = {f"tokens_per_s_batch_{b}": d["tokens_per_s"] for b, d in sorted(best.items())}
        entry |= {f"eager_tokens_per_s_batch_{b}": d["tokens_per_s"] for b, d in sorted(eager.items())}
        if 1 in best:
            entry["bandwidth_share_batch_1"] = best[1]["bandwidth_share"]
        if 1 in best and len(best) > 1:
            top = max(best)
            entry[f"batch_{top}_over_batch_1"] = round(best[top]["tokens_per_s"] / best[1]["tokens_per_s"], 1)
        if result.get("errors"):
            entry["errors"] = result["errors"]
        figures[result["shape"]] = entry
    return {"measure": "summary", "device_name": device_name, "bandwidth_gb_per_s": round(bandwidth, 1),
            "shapes": figures}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "smollm2-1.7b"], choices=SHAPES)
    parser.add_argument("--tiny", action="store_true", help="the tiny shape only, small figures: a dry run")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--kv-cache-tokens", type=int, default=16384)
    parser.add_argument("--bandwidth-gib", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=None, help="also write every line here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shapes, args.prompt_tokens, args.decode_tokens, args.bandwidth_gib = ["tiny"], 8, 4, 0.05
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    bandwidth = measure_bandwidth(args.device, args.bandwidth_gib)
    lines = [{"measure": "bandwidth", "device_name": device_name, "gb_per_s": round(bandwidth, 1),
              "gib": args.bandwidth_gib}]
    print(json.dumps(lines[0]), flush=True)
    results = []
    for name in args.shapes:
        try:
            results.append(bench_shape(name, args, bandwidth))
        except Exception as error:
            print(json.dumps({"measure": "error", "shape": name, "error": traceback.format_exc(limit=-8)}), flush=True)
            results.append({"measure": "shape", "shape": name, "decode": [], "errors": [repr(error)]})
    lines += results
    lines.append(summary(results, bandwidth, device_name))
    print(json.dumps(lines[-1]), flush=True)
    if args.output:
        args.output.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines[-1]


if __name__ == "__main__":
    sys.exit(1 if any("errors" in figures for figures in main()["shapes"].values()) else 0)

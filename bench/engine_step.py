"""Times the engine without HTTP: prefill of one long prompt, then batched greedy decode.

    python bench/engine_step.py --batch 1 16 64 --prompt-tokens 1000
    python bench/engine_step.py --batch 1 --context 4000 --no-bandwidth     (decode at a long context)

Prints one JSON object per measurement. Each decode line also says what a step reads from memory
and how fast: bytes_per_step (the weights the forward reads once per step, weight_bytes, plus the
KV cache its sequences' attention reads at the median step, kv_bytes_per_step), gb_per_s (those
bytes over the median step time, 1 GB = 1e9 bytes) and bandwidth_share (gb_per_s over
bandwidth_gb_per_s, the machine's bandwidth with the engine's threads). The bandwidth is measured
first, in the "bandwidth" line: the median of 5 torch.sum over a 1 GiB float32 tensor, with one
thread and with the engine's threads; --no-bandwidth skips it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rillet.engine.config import EngineConfig
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.sampling_params import SamplingParams
from rillet.model import default_model_path, load_model
from rillet.model.linear import DEFAULT_WEIGHT_FORMAT, WEIGHT_FORMATS, Linear
from rillet.model.quantized import QuantizedWeight

GB = 1e9
# A decoder layer's vectors, where its family has them (rillet/model/decoder.py's DecoderLayer).
LAYER_VECTORS = ("attn_norm", "mlp_norm", "qkv_bias", "q_norm", "k_norm", "post_attn_norm", "post_mlp_norm")
LAYER_MATRICES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def linear_bytes(linear: Linear) -> int:
    """The bytes one multiplication by this layer reads of its weights, as they are held: the
    packed blocks of a native kernel (rows padded to its group), a float matrix, or FBGEMM's
    packed float16 matrix (2 bytes a weight; its packing is opaque), each part of a mixed one.
    Linear has no public figure for this: its private fields are read here."""
    if linear._parts:
        return sum(linear_bytes(part) for part in linear._parts)
    if linear._blocks is not None:
        return tensor_bytes(linear._blocks)
    if linear._packed is not None:
        return linear.out_features * linear.in_features * 2
    return tensor_bytes(linear.weight)


def embedding_row_bytes(model) -> int:
    """The bytes one token's embedding lookup reads: one row of the table (or of a tied Q8_0 head)."""
    if model.embed_from_head:  # the head's packed Q8_0 blocks: 2 bytes of scale and 32 of int8 per block
        return model.lm_head.in_features // 32 * 34
    if isinstance(model.embed_tokens, QuantizedWeight):
        return model.embed_tokens.blocks.shape[1]
    return model.embed_tokens.shape[1] * model.embed_tokens.element_size()


def weight_bytes(model) -> dict[str, int]:
    """The weights a forward reads once per step, whatever its batch: every layer's matrices and
    vectors, the final norm and the output head; and embedding_row, read once per token."""
    matrices = sum(linear_bytes(getattr(layer, name)) for layer in model.layers for name in LAYER_MATRICES)
    vectors = tensor_bytes(model.norm) + sum(tensor_bytes(v) for layer in model.layers for name in LAYER_VECTORS
                                             if (v := getattr(layer, name)) is not None)
    head = linear_bytes(model.lm_head)
    return {"layers": matrices, "vectors": vectors, "head": head, "per_step": matrices + vectors + head,
            "embedding_row": embedding_row_bytes(model)}


def kv_bytes(config, context_lens: list[int], dtype: torch.dtype) -> int:
    """The KV cache a step's attention reads: for each sequence and layer, the keys and values of
    every context token it sees (at most the layer's window), kv_heads x head_dim of each."""
    per_token = config.num_kv_heads * config.head_dim * 2 * torch.empty((), dtype=dtype).element_size()
    windows = [config.window(i) for i in range(config.num_layers)]
    return per_token * sum(min(n, w) if w else n for n in context_lens for w in windows)


def step_bytes(model, context_lens: list[int], kv_dtype: torch.dtype) -> dict[str, int]:
    """What a decode step of these sequences (one new token each; context_lens count it) reads."""
    weights = weight_bytes(model)
    kv = kv_bytes(model.config, context_lens, kv_dtype)
    weight = weights["per_step"] + weights["embedding_row"] * len(context_lens)
    return {"weight_bytes": weight, "kv_bytes": kv, "bytes": weight + kv}


def measure_bandwidth(threads: int, repeats: int = 5, gib: float = 1.0) -> dict:
    """GB/s of torch.sum over a float32 tensor of `gib` GiB, the median of `repeats`, with one
    thread and with `threads`; the thread count is left at `threads`."""
    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    result = {}
    for key, count in (("bandwidth_gb_per_s_1thread", 1), ("bandwidth_gb_per_s", threads)):
        torch.set_num_threads(count)
        data.sum()  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            data.sum()
            times.append(time.perf_counter() - started)
        result[key] = round(tensor_bytes(data) / statistics.median(times) / GB, 2)
    torch.set_num_threads(threads)
    return {"measure": "bandwidth", "gib": gib, "threads": threads, "repeats": repeats, **result}


def make_engine(loaded, args) -> LLMEngine:
    config = EngineConfig(kv_cache_tokens=args.kv_cache_tokens, kv_cache_dtype=args.kv_cache_dtype, max_num_seqs=max(args.batch),
                          max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=False)
    return LLMEngine(loaded.model, loaded.tokenizer, loaded.config.max_context_len, config)


def time_prefill(loaded, args) -> dict:
    engine = make_engine(loaded, args)
    prompt = [(i * 7919) % 40000 + 100 for i in range(args.prompt_tokens)]
    times = []
    for run in range(args.repeats):
        engine.add_request(f"p{run}", prompt, SamplingParams(temperature=0, max_tokens=1))
        started = time.perf_counter()
        while engine.has_work:
            engine.step()
        times.append(time.perf_counter() - started)
    return {"measure": "prefill", "prompt_tokens": args.prompt_tokens, "seconds_median": round(statistics.median(times), 3),
            "tokens_per_s": round(args.prompt_tokens / statistics.median(times), 1)}


def time_decode(loaded, args, batch: int, bandwidth: float | None = None) -> dict:
    engine = make_engine(loaded, args)
    for i in range(batch):
        messages = [{"role": "user", "content": f"Tell me a long story about the number {i}."}]
        prompt = loaded.tokenizer.encode(loaded.chat_template.render(messages))
        if args.context:  # a long context: token ids of no meaning in front, a different run per sequence
            prompt = [(j * 7919 + i * 104729) % 40000 + 100 for j in range(args.context - len(prompt))] + prompt
        # End-of-turn tokens are banned so every sequence decodes to the end and the batch stays whole.
        no_end = {t: -100.0 for t in loaded.tokenizer.stop_token_ids}
        engine.add_request(f"d{i}", prompt, SamplingParams(temperature=0, max_tokens=args.decode_tokens + 1,
                                                           logit_bias=no_end))
    engine.step()  # prefill everything first
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    step_times, kv_read, contexts = [], [], []
    kv_dtype = getattr(torch, args.kv_cache_dtype)
    while engine.has_work:
        # Each running sequence computes one token, which it attends to along with its context.
        context = [s.num_tokens for s in engine.scheduler.running]
        started = time.perf_counter()
        outputs = engine.step()
        if outputs:
            step_times.append(time.perf_counter() - started)
            kv_read.append(kv_bytes(loaded.config, context, kv_dtype))
            contexts.append(statistics.mean(context))
    step = statistics.median(step_times)
    kv = int(statistics.median(kv_read))
    weights = step_bytes(loaded.model, [0] * batch, kv_dtype)["weight_bytes"]  # no context: the weights alone
    result = {"measure": "decode", "batch": batch, "context_median": round(statistics.median(contexts)), "step_ms_median": round(step * 1000, 2),
              "tokens_per_s": round(batch / step, 1), "steps": len(step_times), "bytes_per_step": weights + kv,
              "weight_bytes": weights, "kv_bytes_per_step": kv, "gb_per_s": round((weights + kv) / step / GB, 2)}
    if bandwidth:
        result["bandwidth_share"] = round((weights + kv) / step / GB / bandwidth, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=0,
                        help="decode with this many tokens of context per sequence (default: a short chat prompt)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", default=DEFAULT_WEIGHT_FORMAT, choices=WEIGHT_FORMATS)
    parser.add_argument("--kv-cache-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--kv-cache-tokens", type=int, default=16384)
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    parser.add_argument("--bandwidth", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the memory bandwidth first (torch.sum over 1 GiB) for bandwidth_share")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.model or default_model_path(), weight_format=args.weights)
    print(json.dumps({"measure": "load", "seconds": round(time.perf_counter() - started, 2),
                      "threads": torch.get_num_threads(), "weights": args.weights,
                      "weight_format": loaded.model.weight_format, "weight_bytes": weight_bytes(loaded.model)}),
          flush=True)
    bandwidth = None
    if args.bandwidth:
        measured = measure_bandwidth(torch.get_num_threads())
        bandwidth = measured["bandwidth_gb_per_s"]
        print(json.dumps(measured), flush=True)
    print(json.dumps(time_prefill(loaded, args)), flush=True)
    for batch in args.batch:
        print(json.dumps(time_decode(loaded, args, batch, bandwidth)), flush=True)


if __name__ == "__main__":
    main()

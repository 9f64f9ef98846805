"""Times the engine without HTTP: prefill of one long prompt, then batched greedy decode.

    python bench/engine_step.py --batch 1 16 64 --prompt-tokens 1000

Prints one JSON object per measurement.
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
from rillet.model.linear import DEFAULT_WEIGHT_FORMAT, WEIGHT_FORMATS


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


def time_decode(loaded, args, batch: int) -> dict:
    engine = make_engine(loaded, args)
    for i in range(batch):
        messages = [{"role": "user", "content": f"Tell me a long story about the number {i}."}]
        prompt = loaded.tokenizer.encode(loaded.chat_template.render(messages))
        # End-of-turn tokens are banned so every sequence decodes to the end and the batch stays whole.
        no_end = {t: -100.0 for t in loaded.tokenizer.stop_token_ids}
        engine.add_request(f"d{i}", prompt, SamplingParams(temperature=0, max_tokens=args.decode_tokens + 1,
                                                           logit_bias=no_end))
    engine.step()  # prefill everything first
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    step_times = []
    while engine.has_work:
        started = time.perf_counter()
        outputs = engine.step()
        if outputs:
            step_times.append(time.perf_counter() - started)
    step = statistics.median(step_times)
    return {"measure": "decode", "batch": batch, "step_ms_median": round(step * 1000, 2),
            "tokens_per_s": round(batch / step, 1), "steps": len(step_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", default=DEFAULT_WEIGHT_FORMAT, choices=WEIGHT_FORMATS)
    parser.add_argument("--kv-cache-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--kv-cache-tokens", type=int, default=16384)
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.model or default_model_path(), weight_format=args.weights)
    print(json.dumps({"measure": "load", "seconds": round(time.perf_counter() - started, 2),
                      "threads": torch.get_num_threads(), "weights": args.weights}), flush=True)
    print(json.dumps(time_prefill(loaded, args)), flush=True)
    for batch in args.batch:
        print(json.dumps(time_decode(loaded, args, batch)), flush=True)


if __name__ == "__main__":
    main()

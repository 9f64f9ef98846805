"""Load benchmark for any OpenAI-compatible server: concurrent streaming chat clients over HTTP.

    python bench/serve.py --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct

Prints one JSON object per concurrency level: aggregate output tokens/s, TTFT and
inter-token latency percentiles (ms), request and error counts.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a hash table works and when it performs badly.",
    "List ten facts about the planet Mars.",
    "What are the main causes of the French Revolution? Answer in detail.",
    "Write a Python function that checks whether a string is a palindrome, then explain it.",
    "Describe the water cycle to a ten year old.",
    "Give me a recipe for a vegetarian lasagna with step by step instructions.",
    "Compare TCP and UDP, with examples of where each is used.",
    "Write a poem about autumn in the city.",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines train the immune system?",
    "Suggest a weekly workout plan for a beginner runner.",
    "What is the difference between a list and a tuple in Python?",
    "Explain photosynthesis step by step.",
    "Write a polite email asking a colleague to review my report by Friday.",
    "Why is the sky blue? Explain the physics.",
]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, args, prompt: str, stats: dict) -> None:
    body = {"model": args.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True,
            **getattr(args, "extra_body", {})}
    started = time.perf_counter()
    last = None
    tokens = 0
    try:
        async with client.stream("POST", f"{args.base_url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                stats["errors"] += 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    stats["errors"] += 1
                    return
                if any(c.get("delta", {}).get("content") or c.get("delta", {}).get("tool_calls")
                       for c in chunk.get("choices", [])):
                    now = time.perf_counter()
                    if last is None:
                        stats["ttft"].append(now - started)
                    else:
                        stats["itl"].append(now - last)
                    last = now
                    tokens += 1
                usage = chunk.get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    except httpx.HTTPError:
        stats["errors"] += 1
        return
    stats["tokens"] += tokens
    stats["completed"] += 1


async def run_level(args, concurrency: int) -> dict:
    stats = {"ttft": [], "itl": [], "tokens": 0, "completed": 0, "errors": 0}
    num_requests = max(args.min_requests, concurrency * args.rounds)
    prompts = iter([PROMPTS[i % len(PROMPTS)] for i in range(num_requests)])
    limits = httpx.Limits(max_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {args.api_key}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits, headers=headers) as client:
        async def worker() -> None:
            for prompt in prompts:
                await one_request(client, args, prompt, stats)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "concurrency": concurrency, "requests": num_requests, "completed": stats["completed"],
        "errors": stats["errors"], "output_tokens": stats["tokens"], "seconds": round(elapsed, 2),
        "output_tokens_per_s": round(stats["tokens"] / elapsed, 1),
        "ttft_ms_p50": ms(percentile(stats["ttft"], 0.5)), "ttft_ms_p95": ms(percentile(stats["ttft"], 0.95)),
        "itl_ms_p50": ms(percentile(stats["itl"], 0.5)), "itl_ms_p95": ms(percentile(stats["itl"], 0.95)),
        "itl_ms_mean": ms(statistics.fmean(stats["itl"])) if stats["itl"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON",
                        help='fields added to every request, e.g. \'{"response_format": {"type": "json_object"}}\'')
    args = parser.parse_args()
    for concurrency in args.concurrency:
        print(json.dumps(asyncio.run(run_level(args, concurrency))), flush=True)


if __name__ == "__main__":
    main()

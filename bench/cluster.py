"""Throughput of `rillet serve --replicas 2` (Ray Serve, a local Ray of this machine) against one
`rillet serve`, on the same concurrent streaming load. Prints one JSON object.

Each server is started on a free port, loaded with --requests streamed chat completions at
--concurrency (distinct prompts, greedy, a fixed number of tokens each: end-of-text banned), then
stopped. tokens/s is completion tokens over the load's wall time. A third setup, two plain servers
of one thread each with the load split between them by the client, shows what two replicas cost
without Ray Serve's path. On a machine of two cores two replicas of one thread share the cores that
one server of two threads uses: equal throughput is what to expect of the engines there, less the
CPU that Ray Serve's processes take; replicas add throughput where they add cores, GPUs or machines.

    .venv/bin/python bench/cluster.py --requests 64 --concurrency 16 --rounds 2

Run it on an otherwise idle machine: a server of two threads on two busy cores loses far more than
two servers of one thread each do, which says nothing of replicas.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time

import httpx

from rillet_server import start_rillet  # bench/rillet_server.py

MODEL = "SmolLM2-135M-Instruct"
SUBJECTS = ["the sea", "a red bicycle", "autumn", "a lighthouse", "bread", "the moon", "a lost key", "rain",
            "a clock", "snow", "a garden", "the desert", "a violin", "a market", "an owl", "a river"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per server (default: 64)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens of each (default: 64)")
    parser.add_argument("--kv-cache-tokens", type=int, default=8192, help="per server or replica (default: 8192)")
    parser.add_argument("--rounds", type=int, default=2, help="each setup this often, alternating, so that "
                        "other load on the machine falls on both alike (default: 2)")
    return parser.parse_args()


def replicas_ready(flags: list[str]):
    """Ready when /metrics counts the replicas --replicas asked for (any answer without it)."""
    wanted = flags[flags.index("--replicas") + 1] if "--replicas" in flags else None

    def ready(base_url: str) -> bool:
        metrics = httpx.get(f"{base_url}/metrics", timeout=2)
        replicas = [line for line in metrics.text.splitlines() if line.startswith("rillet_replicas ")]
        return metrics.status_code == 200 and (wanted is None or replicas == [f"rillet_replicas {wanted}.0"])
    return ready


def start(flags: list[str]) -> tuple[subprocess.Popen, str, str]:
    return start_rillet(flags, ready=replicas_ready(flags))


def stop(process: subprocess.Popen, log: str) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    os.unlink(log)


async def one_request(http: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[int, float]:
    body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "logit_bias": {"0": -100, "2": -100}, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"{index}. Write a long poem about {SUBJECTS[index % 16]}."}]}
    started = time.perf_counter()
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - started


async def load(base_url: str, args) -> dict:
    semaphore = asyncio.Semaphore(args.concurrency)

    async def bounded(http, index):
        async with semaphore:
            return await one_request(http, index, args.max_tokens)

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
        await one_request(http, 10_000, 4)  # warm up
        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(http, i) for i in range(args.requests)))
        wall = time.perf_counter() - started
    tokens = sum(t for t, _ in results)
    latencies = sorted(latency for _, latency in results)
    return {"completion_tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "median_latency_s": round(latencies[len(latencies) // 2], 2)}


async def load_all(base_urls: list[str], args) -> dict:
    """The load split evenly between the servers, all at once; tokens/s over the longest wall time."""
    share = argparse.Namespace(requests=args.requests // len(base_urls), max_tokens=args.max_tokens,
                               concurrency=max(1, args.concurrency // len(base_urls)))
    results = await asyncio.gather(*(load(url, share) for url in base_urls))
    tokens, wall = sum(r["completion_tokens"] for r in results), max(r["wall_s"] for r in results)
    return {"completion_tokens": tokens, "wall_s": wall, "tokens_per_s": round(tokens / wall, 1),
            "median_latency_s": max(r["median_latency_s"] for r in results)}


def main() -> None:
    args = parse_args()
    common = ["--kv-cache-tokens", str(args.kv_cache_tokens), "--log-level", "warning", "--no-playground"]
    # The third: two plain servers of one thread each, the load split between them by the client:
    # what two replicas would do without Ray Serve's path (proxy, ingress, replica actors).
    setups = {"one_server_2_threads": [["--threads", "2", *common]],
              "two_replicas_1_thread_each": [["--replicas", "2", "--threads", "1", *common]],
              "two_servers_1_thread_each_without_ray": [["--threads", "1", *common]] * 2}
    figures = {"cores": os.cpu_count(), "requests": args.requests, "concurrency": args.concurrency,
               "max_tokens": args.max_tokens}
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, servers in setups.items():
            started = []
            try:
                for flags in servers:
                    started.append(start(flags))
                runs[name].append(asyncio.run(load_all([base_url for _, base_url, _ in started], args)))
            finally:
                for process, _, log in started:
                    stop(process, log)
    for name, results in runs.items():
        figures[name] = {"tokens_per_s_best": max(r["tokens_per_s"] for r in results), "runs": results}
    one, two, plain = (figures[name]["tokens_per_s_best"] for name in setups)
    figures["two_replicas_over_one_server"] = round(two / one, 2)
    figures["two_servers_without_ray_over_one_server"] = round(plain / one, 2)
    figures["load_average_after"] = os.getloadavg()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""A bounded loopback load test: many concurrent streaming clients, some hanging up mid-stream.

Starts `rillet serve` on a free port (or uses --base-url), runs the clients, then checks what a
production server owes its callers: no 500s, every accepted request either completed or was
cancelled by its client, every KV block free again, and the server still answering. Prints one
JSON object of figures; exits 1 if a check failed.

    .venv/bin/python bench/load_test.py --clients 200 --hang-up 0.2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter

import httpx

from rillet_server import start_rillet  # bench/rillet_server.py

MODEL = "SmolLM2-135M-Instruct"
TOPICS = ["the sea", "a red bicycle", "autumn", "a lighthouse", "bread", "the moon", "a lost key", "rain"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent streaming clients (default: 200)")
    parser.add_argument("--hang-up", type=float, default=0.2, help="share of clients that hang up mid-stream")
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of each request (default: 48)")
    parser.add_argument("--base-url", help="an already running server (default: start one on a free port)")
    parser.add_argument("--server-args", default="", help="extra flags for the started server, one string")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.completed = 0
        self.cancelled = 0
        self.stream_errors = 0
        self.transport_errors = 0


async def one_client(http: httpx.AsyncClient, rng: random.Random, args, tally: Tally) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": args.max_tokens, "temperature": 0.7,
            "messages": [{"role": "user", "content": f"Write a short poem about {rng.choice(TOPICS)}."}]}
    hang_up_after = rng.randint(1, 8) if rng.random() < args.hang_up else None
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            tally.statuses[response.status_code] += 1
            if response.status_code != 200:
                await response.aread()
                return
            events = 0
            async for line in response.aiter_lines():
                if not line:
                    continue
                if line == "data: [DONE]":
                    tally.completed += 1
                    return
                if '"error"' in line and json.loads(line[len("data: "):]).get("error"):
                    tally.stream_errors += 1
                events += 1
                if hang_up_after is not None and events >= hang_up_after:
                    tally.cancelled += 1
                    return  # leaving the block closes the connection mid-stream
    except httpx.HTTPError:
        tally.transport_errors += 1


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def wait_for_idle(base_url: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (metric(base_url, "rillet_kv_blocks_free") == metric(base_url, "rillet_kv_blocks_total")
                and metric(base_url, "rillet_running_sequences") == 0
                and metric(base_url, "rillet_waiting_sequences") == 0):
            return True
        time.sleep(0.2)
    return False


async def run_clients(base_url: str, args) -> tuple[Tally, float]:
    rng = random.Random(args.seed)
    tally = Tally()
    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http, random.Random(rng.random()), args, tally)
                               for _ in range(args.clients)))
        return tally, time.perf_counter() - started


def main() -> int:
    args = parse_args()
    process = None
    base_url = args.base_url
    if base_url is None:
        process, base_url, log_name = start_rillet(args.server_args.split())
    try:
        tally, duration = asyncio.run(run_clients(base_url, args))
        idle = wait_for_idle(base_url)
        probe = httpx.post(f"{base_url}/v1/chat/completions", timeout=120, json={
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]})
        accepted = tally.statuses[200]
        checks = {
            "no_500s": not any(status >= 500 and status != 503 for status in tally.statuses),
            "accepted_all_completed_or_cancelled": accepted == tally.completed + tally.cancelled
            and tally.stream_errors == 0 and tally.transport_errors == 0,
            "all_kv_blocks_free": idle,
            "still_answers": probe.status_code == 200,
        }
        print(json.dumps({
            "clients": args.clients, "hang_up_share": args.hang_up, "max_tokens": args.max_tokens,
            "duration_s": round(duration, 2), "accepted": accepted, "completed": tally.completed,
            "cancelled": tally.cancelled, "rate_limited_429": tally.statuses[429], "overloaded_503": tally.statuses[503],
            "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "stream_errors": tally.stream_errors, "transport_errors": tally.transport_errors,
            "kv_blocks_free": metric(base_url, "rillet_kv_blocks_free"),
            "kv_blocks_total": metric(base_url, "rillet_kv_blocks_total"),
            "checks": checks, "passed": all(checks.values()),
        }))
        return 0 if all(checks.values()) else 1
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
            os.unlink(log_name)


if __name__ == "__main__":
    sys.exit(main())

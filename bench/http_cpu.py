"""CPU per streamed token of rillet's two processes: the HTTP server and the engine child.

    .venv/bin/python bench/http_cpu.py                       # starts `rillet serve` (its defaults) on a free port
    .venv/bin/python bench/http_cpu.py --concurrency 64 --rounds 2 --server-args "--weights quantized-int8"
    .venv/bin/python bench/http_cpu.py --base-url http://127.0.0.1:8000/v1 --pid 12345   # a running server

The load is bench/serve.py's (streaming chat clients over httpx, its prompts, max_tokens 128,
temperature 0), each request asking for `stream_options: {"include_usage": true}` so that the
completion tokens are the server's own count from the final chunk. A short warm-up runs first and
is not counted. The CPU time (utime + stime of every thread, from /proc/PID/stat) of the HTTP
process and of its engine child (the multiprocessing spawn child of that pid) is read just before
and just after the measured load. Prints one JSON object:
cpu_s_per_1000_tokens for "http" and "engine", the tokens, the wall seconds, tokens/s, the
concurrency, and the load generator's own CPU seconds (it shares the machine's cores).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import signal
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rillet_server import start_rillet  # bench/rillet_server.py
from serve import run_level  # bench/serve.py: the load

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def engine_pid_of(http_pid: int) -> int:
    """The engine child: the child of the HTTP process started by multiprocessing's spawn (not its
    resource tracker)."""
    children = []
    for task in os.listdir(f"/proc/{http_pid}/task"):
        with open(f"/proc/{http_pid}/task/{task}/children") as file:
            children += [int(pid) for pid in file.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            if b"spawn_main" in file.read():
                return pid
    raise SystemExit(f"no engine child found under pid {http_pid} (children: {children})")


def measure(args, http_pid: int) -> dict:
    engine_pid = args.engine_pid or engine_pid_of(http_pid)
    args.extra_body = {**args.extra_body, "stream_options": {"include_usage": True}}
    warm = argparse.Namespace(**{**vars(args), "rounds": 1, "min_requests": 1})
    asyncio.run(run_level(warm, args.warmup))  # not counted
    http_before, engine_before = cpu_seconds(http_pid), cpu_seconds(engine_pid)
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    level = asyncio.run(run_level(args, args.concurrency))
    http_cpu, engine_cpu = cpu_seconds(http_pid) - http_before, cpu_seconds(engine_pid) - engine_before
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (own_after.ru_utime - own_before.ru_utime) + (own_after.ru_stime - own_before.ru_stime)
    tokens = level["output_tokens"]
    per_1000 = (lambda seconds: round(seconds * 1000 / tokens, 3) if tokens else None)
    return {
        "measure": "http_cpu", "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "requests": level["requests"], "completed": level["completed"], "errors": level["errors"],
        "tokens": tokens, "seconds": level["seconds"], "tokens_per_s": level["output_tokens_per_s"],
        "cpu_s_per_1000_tokens": {"http": per_1000(http_cpu), "engine": per_1000(engine_cpu)},
        "cpu_s": {"http": round(http_cpu, 2), "engine": round(engine_cpu, 2), "client": round(client_cpu, 2)},
        "ttft_ms_p50": level["ttft_ms_p50"], "itl_ms_p50": level["itl_ms_p50"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server (give its HTTP process with --pid); "
                                           "without it, `rillet serve` is started for the run")
    parser.add_argument("--pid", type=int, help="the HTTP process of the server at --base-url")
    parser.add_argument("--engine-pid", type=int, help="its engine process (default: found as the pid's spawn child)")
    parser.add_argument("--server-args", default="", help="more flags for the `rillet serve` this starts")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client (concurrency x rounds in all)")
    parser.add_argument("--min-requests", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=8, help="requests at once before the measured load")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON")
    args = parser.parse_args()
    if args.base_url:
        if args.pid is None:
            parser.error("--base-url needs --pid (the server's HTTP process)")
        print(json.dumps(measure(args, args.pid)), flush=True)
        return
    server, base_url, _ = start_rillet(shlex.split(args.server_args))
    args.base_url = f"{base_url}/v1"
    try:
        print(json.dumps(measure(args, server.pid)), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()

"""What constrained decoding costs: the same streaming load with and without a json_schema
response_format, in alternating runs on one server, with the ratio of their medians.

    python bench/constrained.py --base-url http://127.0.0.1:8000/v1 --concurrency 1 16 --repeats 3

Prints one JSON object per concurrency level. The schema (a list of short records) keeps the
constrained answers about as long as free ones, so tokens/s compare like with like.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import run_level  # noqa: E402

SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {
    "type": "object", "properties": {"title": {"type": "string", "maxLength": 60}, "score": {"type": "integer"}},
    "required": ["title", "score"], "additionalProperties": False}}}, "required": ["items"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "items", "schema": SCHEMA, "strict": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each kind per level")
    args = parser.parse_args()
    for concurrency in args.concurrency:
        runs: dict[str, list[dict]] = {"free": [], "json_schema": []}
        for _ in range(args.repeats):
            for kind, extra in (("free", {}), ("json_schema", {"response_format": RESPONSE_FORMAT})):
                args.extra_body = extra
                runs[kind].append(asyncio.run(run_level(args, concurrency)))
        medians = {kind: statistics.median(r["output_tokens_per_s"] for r in results) for kind, results in runs.items()}
        print(json.dumps({
            "concurrency": concurrency, "repeats": args.repeats,
            "free_tokens_per_s": medians["free"], "json_schema_tokens_per_s": medians["json_schema"],
            "json_schema_over_free": round(medians["json_schema"] / medians["free"], 3),
            "errors": sum(r["errors"] for results in runs.values() for r in results),
            "mean_output_tokens": {kind: round(statistics.fmean(r["output_tokens"] / r["completed"] for r in results), 1)
                                   for kind, results in runs.items()},
        }), flush=True)


if __name__ == "__main__":
    main()

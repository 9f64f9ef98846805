"""Time to first token of a long prompt, one request at a time, over HTTP (streamed, max_tokens 8).

    python bench/long_prompt.py --base-url http://127.0.0.1:8000/v1 --words 840 --repeats 3

Each request starts with a different number, so no prompt shares a cached prefix with another.
Prints one JSON object: the prompt's token count as the server reports it, and each TTFT in s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

TEXT = ("The river runs past the old mill and the stone bridge, under willows, through fields of "
        "barley and past the church where the bells ring at noon. ")


def first_token_seconds(client: httpx.Client, args, index: int) -> tuple[float, int]:
    words = TEXT.split()
    text = " ".join(words[i % len(words)] for i in range(args.words))
    body = {"model": args.model, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"{index}. {text}\nSummarize this."}]}
    started = time.perf_counter()
    first = None
    prompt_tokens = 0
    with client.stream("POST", f"{args.base_url}/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    return first, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--words", type=int, default=840, help="words of filler text (840 is about 1,000 tokens with SmolLM2)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"}

    def on_a_new_connection(index: int) -> tuple[float, int]:
        # Each request on a connection of its own: llama-server closed a kept-alive connection just as
        # the next long prompt went out on it, which the client saw as "Server disconnected".
        with httpx.Client(headers=headers, timeout=600) as client:
            return first_token_seconds(client, args, index)

    on_a_new_connection(-1)  # warm-up, not counted
    results = [on_a_new_connection(i) for i in range(args.repeats)]
    seconds = [round(s, 3) for s, _ in results]
    print(json.dumps({"measure": "long_prompt_ttft", "prompt_tokens": results[0][1], "ttft_s": seconds,
                      "ttft_s_median": round(statistics.median(seconds), 3)}))


if __name__ == "__main__":
    main()

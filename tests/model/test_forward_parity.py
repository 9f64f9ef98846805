"""Our forward against Hugging Face transformers running the same GGUF file.

Both dequantize the file to float32, so the only differences are the order of float
operations: measured max |logit difference| about 5e-5 on logits of magnitude ~30.
"""
from __future__ import annotations

import torch

from rillet.model.attention_metadata import AttentionMetadata

LOGITS_ATOL = 1e-3
PROMPTS = [
    "The quick brown fox jumps over the lazy dog because",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def add(a, b):\n    return",
    "Once",
]
BLOCK_SIZE = 16


def batch_metadata(lengths: list[int], cached: list[int], first_block: int = 0) -> tuple[AttentionMetadata, list[list[int]]]:
    """Gives each sequence its own run of blocks; `cached` tokens of each are already in the cache."""
    tables, slots, starts, next_block = [], [], [0], first_block
    for length, done in zip(lengths, cached):
        blocks = list(range(next_block, next_block + -(-length // BLOCK_SIZE)))
        next_block += len(blocks)
        tables.append(blocks)
        slots.extend(blocks[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(done, length))
        starts.append(starts[-1] + length - done)
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(starts, list(lengths), torch.tensor([t + [0] * (width - len(t)) for t in tables]),
                             torch.tensor(slots), BLOCK_SIZE)
    return meta, tables


@torch.inference_mode()
def reference_logits(reference_model, ids: list[int]) -> torch.Tensor:
    return reference_model(torch.tensor([ids])).logits[0].float()


@torch.inference_mode()
def test_batched_prefill_logits_match_transformers(ours, reference_model):
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    meta, _ = batch_metadata([len(p) for p in prompts], [0] * len(prompts))
    cache = ours.model.allocate_kv_cache(64, BLOCK_SIZE, torch.float32)
    flat = torch.tensor([t for p in prompts for t in p])
    positions = torch.tensor([i for p in prompts for i in range(len(p))])
    logits = ours.model.compute_logits(ours.model(flat, positions, cache, meta))
    for i, ids in enumerate(prompts):
        expected = reference_logits(reference_model, ids)
        got = logits[meta.query_start[i]:meta.query_start[i + 1]]
        assert (got - expected).abs().max().item() < LOGITS_ATOL


@torch.inference_mode()
def test_decoding_through_the_cache_matches_a_full_forward(ours, reference_model):
    ids = ours.tokenizer.encode(PROMPTS[0] + " it was chased by a very hungry wolf that night")
    split = 5
    cache = ours.model.allocate_kv_cache(16, BLOCK_SIZE, torch.float32)
    meta, _ = batch_metadata([split], [0])
    ours.model(torch.tensor(ids[:split]), torch.arange(split), cache, meta)
    expected = reference_logits(reference_model, ids)
    for position in range(split, len(ids)):
        meta, _ = batch_metadata([position + 1], [position])
        hidden = ours.model(torch.tensor([ids[position]]), torch.tensor([position]), cache, meta)
        got = ours.model.compute_logits(hidden)[0]
        assert (got - expected[position]).abs().max().item() < LOGITS_ATOL


@torch.inference_mode()
def test_greedy_generation_of_32_tokens_matches_transformers(ours, reference_model):
    from rillet.engine.config import EngineConfig
    from rillet.engine.llm_engine import LLMEngine
    from rillet.engine.sampling_params import SamplingParams

    prompt = ours.tokenizer.encode(ours.chat_template.render([{"role": "user", "content": "Tell me about the moon."}]))
    engine = LLMEngine(ours.model, ours.tokenizer, ours.config.max_context_len, EngineConfig(kv_cache_tokens=2048))
    engine.add_request("a", prompt, SamplingParams(temperature=0, max_tokens=32))
    ids, text = [], ""
    while engine.has_work:
        for out in engine.step():
            for delta in out.deltas:
                ids += delta.token_ids
                text += delta.text
    expected = reference_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                        eos_token_id=ours.tokenizer.eos_token_id, pad_token_id=0)[0, len(prompt):]
    expected = expected.tolist()
    assert ids == expected[:len(ids)] and len(ids) in (32, len(expected))
    assert text == ours.tokenizer.decode([t for t in expected if t not in ours.tokenizer.stop_token_ids])

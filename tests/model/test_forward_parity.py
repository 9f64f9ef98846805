"""Our forward against Hugging Face transformers running the same GGUF file.

Both dequantize the file to float32, so the only differences are the order of float operations
(and our float64 RoPE tables): measured max |logit difference| 4e-5 .. 6e-5 on logits of
magnitude ~30-40, in prefill, batched decode and mixed steps alike.
"""
from __future__ import annotations

import pytest
import torch

from rillet.model import load_model
from rillet.model.attention_metadata import AttentionMetadata
from tests.model.tiny_gguf import SPM_VOCAB_SIZE, tiny_llama_tensors, write_gguf

LOGITS_ATOL = 5e-4  # ~10x the measured 6e-5
PROMPTS = [
    "The quick brown fox jumps over the lazy dog because",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def add(a, b):\n    return",
    "Once",
]
BLOCK_SIZE = 16


class PagedSequences:
    """Hands out KV blocks round-robin across sequences, so no sequence's blocks are contiguous,
    and builds each step's AttentionMetadata."""

    def __init__(self, num_seqs: int) -> None:
        self.tables: list[list[int]] = [[] for _ in range(num_seqs)]
        self.lengths = [0] * num_seqs
        self.next_block = 1  # block 0 stays unused: it is also the padding id of block tables

    def step(self, new_tokens: list[int]) -> AttentionMetadata:
        starts, slots = [0], []
        for i, count in enumerate(new_tokens):
            for position in range(self.lengths[i], self.lengths[i] + count):
                if position % BLOCK_SIZE == 0:
                    self.tables[i].append(self.next_block)
                    self.next_block += 1
                slots.append(self.tables[i][position // BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE)
            self.lengths[i] += count
            starts.append(starts[-1] + count)
        width = max(len(t) for t in self.tables)
        padded = torch.tensor([t + [0] * (width - len(t)) for t in self.tables])
        return AttentionMetadata(starts, list(self.lengths), padded, torch.tensor(slots), BLOCK_SIZE)


def run_step(ours, cache, paged: PagedSequences, new_ids: list[list[int]]) -> list[torch.Tensor]:
    """One flat forward over every sequence's new tokens; returns each sequence's logits."""
    starts = list(paged.lengths)
    meta = paged.step([len(ids) for ids in new_ids])
    flat = torch.tensor([t for ids in new_ids for t in ids])
    positions = torch.tensor([s + j for s, ids in zip(starts, new_ids) for j in range(len(ids))])
    logits = ours.model.compute_logits(ours.model(flat, positions, cache, meta))
    return [logits[meta.query_start[i]:meta.query_start[i + 1]] for i in range(len(new_ids))]


@torch.inference_mode()
def reference_logits(reference_model, ids: list[int]) -> torch.Tensor:
    return reference_model(torch.tensor([ids])).logits[0].float()


def max_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


@torch.inference_mode()
def test_batched_prefill_logits_match_transformers(ours, reference_model):
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    cache = ours.model.allocate_kv_cache(64, BLOCK_SIZE, torch.float32)
    logits = run_step(ours, cache, PagedSequences(len(prompts)), prompts)
    for got, ids in zip(logits, prompts):
        assert max_diff(got, reference_logits(reference_model, ids)) < LOGITS_ATOL


@torch.inference_mode()
def test_chunked_prefill_then_batched_decode_match_a_full_forward(ours, reference_model):
    """Sequences cross block boundaries at different steps; steps mix prefill chunks and decodes."""
    texts = [PROMPTS[0] + " it was chased by a very hungry wolf that night, far from home",
             PROMPTS[2] + " a + b\n\nprint(add(2, 3))  # five", PROMPTS[1] + "The capital of France is Paris."]
    full = [ours.tokenizer.encode(t) for t in texts]
    expected = [reference_logits(reference_model, ids) for ids in full]
    cache = ours.model.allocate_kv_cache(32, BLOCK_SIZE, torch.float32)
    paged = PagedSequences(len(full))
    # A mixed step: a prefill chunk, a one-token prefill, a longer prefill chunk.
    chunks = [full[0][:5], full[1][:1], full[2][:17]]
    for i, got in enumerate(run_step(ours, cache, paged, chunks)):
        assert max_diff(got, expected[i][:len(chunks[i])]) < LOGITS_ATOL
    # A mixed step continuing each prefill from where its cache ends.
    chunks = [full[0][5:9], full[1][1:12], full[2][17:18]]
    for i, got in enumerate(run_step(ours, cache, paged, chunks)):
        done = paged.lengths[i]
        assert max_diff(got, expected[i][done - len(chunks[i]):done]) < LOGITS_ATOL
    # Decode-only steps (the batched path), context lengths all different.
    while all(paged.lengths[i] < len(full[i]) for i in range(len(full))):
        got = run_step(ours, cache, paged, [[ids[paged.lengths[i]]] for i, ids in enumerate(full)])
        for i in range(len(full)):
            assert max_diff(got[i][0], expected[i][paged.lengths[i] - 1]) < LOGITS_ATOL


@torch.inference_mode()
def test_greedy_generation_of_32_tokens_matches_transformers(ours, reference_model):
    """Two conversations generated side by side through the paged cache, each decode step one
    batched forward, against transformers' generate(do_sample=False) for each alone."""
    prompts = [ours.tokenizer.encode(ours.chat_template.render([{"role": "user", "content": question}]))
               for question in ("Tell me about the moon.", "Write a haiku about rain.")]
    cache = ours.model.allocate_kv_cache(64, BLOCK_SIZE, torch.float32)
    paged = PagedSequences(len(prompts))
    generated: list[list[int]] = [[] for _ in prompts]
    logits = run_step(ours, cache, paged, prompts)
    for _ in range(32):
        for ids, seq_logits in zip(generated, logits):
            ids.append(int(seq_logits[-1].argmax()))
        logits = run_step(ours, cache, paged, [[ids[-1]] for ids in generated])
    for prompt, ids in zip(prompts, generated):
        output = reference_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=0)
        expected = output[0, len(prompt):].tolist()
        # transformers stops at end of turn; we generated on, so compare up to there.
        assert len(expected) == 32 or expected[-1] in ours.tokenizer.stop_token_ids
        assert ids[:len(expected)] == expected
        assert ours.tokenizer.decode(ids[:len(expected)]) == ours.tokenizer.decode(expected)


@torch.inference_mode()
def test_a_tiny_sentencepiece_llama_file_matches_transformers(tmp_path):
    """Random float32 weights (2 heads, 1 kv head) and a SentencePiece-style vocabulary."""
    transformers = pytest.importorskip("transformers")
    path = write_gguf(tmp_path / "tiny.gguf", tokenizer="llama", tensors=tiny_llama_tensors(SPM_VOCAB_SIZE))
    ours = load_model(str(path), weight_format="float32")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ids = ours.tokenizer.encode("hello world, hello world!")
    cache = ours.model.allocate_kv_cache(4, BLOCK_SIZE, torch.float32)
    (got,) = run_step(ours, cache, PagedSequences(1), [ids])
    assert max_diff(got, reference_logits(reference.eval(), ids)) < 1e-5  # measured 3e-6


@torch.inference_mode()
def test_a_hugging_face_folder_loads_like_its_gguf(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_gguf(tmp_path / "tiny.gguf", tokenizer="llama", tensors=tiny_llama_tensors(SPM_VOCAB_SIZE))
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    del converted.config.quantization_config  # a GGUF-loaded model refuses save_pretrained otherwise
    plain = transformers.LlamaForCausalLM(converted.config)
    plain.load_state_dict(converted.state_dict())
    plain.save_pretrained(tmp_path / "hf")
    transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name).save_pretrained(tmp_path / "hf")
    from_gguf, from_folder = (load_model(str(p), weight_format="float32") for p in (path, tmp_path / "hf"))
    ids = from_gguf.tokenizer.encode("hello world, hello world!")
    assert from_folder.tokenizer.encode("hello world, hello world!") == ids
    logits = [run_step(m, m.model.allocate_kv_cache(4, BLOCK_SIZE, torch.float32), PagedSequences(1), [ids])[0]
              for m in (from_gguf, from_folder)]
    assert max_diff(*logits) < 1e-5

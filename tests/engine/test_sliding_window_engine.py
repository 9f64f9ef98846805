"""A Gemma 3 style model (local layers with a sliding window, global ones without) through the
engine: its windowed KV groups give exactly the tokens that one block table for every layer gives,
across chunked prefill, batched decode, forks and prefix-cache hits, while the windowed groups
hand their old blocks back."""
from __future__ import annotations

import pytest
import torch

from rillet.engine import llm_engine
from rillet.engine.config import EngineConfig
from rillet.engine.kv_layout import KVLayout
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.sequence import DEAD_BLOCK
from rillet.model import load_model
from rillet.model.architecture import ARCHITECTURES
from tests.model.tiny_gguf import SPM_VOCAB_SIZE, Q, tiny_llama_tensors, write_gguf, write_model_gguf

from .helpers import CharTokenizer

transformers = pytest.importorskip("transformers")

WINDOW = 12
BLOCK_SIZE = 4
# Two local layers for each global one: KV groups of two layers, one global group and two local ones.
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"] * 2


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """The transformers model and its folder."""
    torch.manual_seed(1)
    config = transformers.Gemma3TextConfig(
        vocab_size=SPM_VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, num_hidden_layers=6,
        sliding_window=WINDOW, layer_types=LAYER_TYPES, tie_word_embeddings=True, query_pre_attn_scalar=16,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" in name:
                weight.copy_(torch.randn_like(weight) * 0.3)
    folder = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(folder)
    vocab = write_gguf(folder / "vocab.gguf", tokenizer="llama", tensors=tiny_llama_tensors(SPM_VOCAB_SIZE))
    transformers.AutoTokenizer.from_pretrained(folder, gguf_file=vocab.name).save_pretrained(folder)
    vocab.unlink()
    return model, folder


def engine_for(loaded, grouped: bool, monkeypatch) -> LLMEngine:
    if not grouped:
        monkeypatch.setattr(llm_engine.KVLayout, "of", classmethod(lambda cls, w, n, c: cls.single(n)))
    tokenizer = CharTokenizer()
    tokenizer.stop_token_ids = frozenset()
    config = EngineConfig(block_size=BLOCK_SIZE, kv_cache_tokens=512, max_num_seqs=8, max_num_batched_tokens=16)
    engine = LLMEngine(loaded.model, tokenizer, max_context_len=512, config=config)
    monkeypatch.undo()
    return engine


def prompt(seed: int, length: int) -> list[int]:
    return [(i * 37 + seed * 101 + 11) % (SPM_VOCAB_SIZE - 3) + 3 for i in range(length)]


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, dict[int, list[int]]]:
    for request_id, (ids, params) in requests.items():
        engine.add_request(request_id, ids, params)
    tokens: dict[str, dict[int, list[int]]] = {}
    while engine.has_work:
        for out in engine.step():
            for delta in out.deltas:
                tokens.setdefault(out.request_id, {}).setdefault(delta.index, []).extend(delta.token_ids)
    return tokens


def workload(engine: LLMEngine) -> dict[str, dict[int, list[int]]]:
    """Long and short prompts side by side (chunked: 16 tokens a step), two choices forked from one
    prompt, then follow-up turns that hit the first turns' cached prefixes."""
    greedy = SamplingParams(temperature=0, max_tokens=24)
    first = {"long": (prompt(0, 45), greedy), "short": (prompt(1, 6), greedy),
             "forked": (prompt(2, 30), SamplingParams(temperature=0.8, seed=3, max_tokens=20, n=2))}
    out = run(engine, first)
    follow = {"long-2": (prompt(0, 45) + out["long"][0] + prompt(3, 7), greedy),
              "short-2": (prompt(1, 6) + out["short"][0] + prompt(4, 20), greedy)}
    return out | run(engine, follow)


@pytest.mark.parametrize("source", ["folder-float32", "gguf-quantized"])
def test_windowed_groups_give_the_tokens_of_one_table_for_all_layers(gemma3, source, tmp_path, monkeypatch):
    model, folder = gemma3
    if source == "folder-float32":
        loaded = load_model(str(folder), weight_format="float32")
    else:  # the native layer loop, where this machine has it
        path = write_model_gguf(tmp_path / "gemma3.gguf", model, ARCHITECTURES["gemma3"], Q.Q8_0)
        loaded = load_model(str(path), weight_format="quantized")
    assert loaded.config.layer_windows == tuple(WINDOW if t == "sliding_attention" else None for t in LAYER_TYPES)
    grouped = engine_for(loaded, True, monkeypatch)
    assert grouped.kv_layout.group_windows == (None, WINDOW, WINDOW) and grouped.kv_layout.group_size == 2
    single = engine_for(loaded, False, monkeypatch)
    assert single.kv_layout.num_groups == 1
    expected = workload(single)
    assert workload(grouped) == expected
    assert grouped.block_manager.prefix_cache_hits > 0
    for engine in (grouped, single):
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_long_sequence_holds_its_window_not_its_length_in_the_local_layers(gemma3, monkeypatch):
    _, folder = gemma3
    engine = engine_for(load_model(str(folder), weight_format="float32"), True, monkeypatch)
    engine.add_request("r", prompt(5, 40), SamplingParams(temperature=0, max_tokens=80))
    (seq,) = [s for s in engine.scheduler.waiting]
    while engine.has_work:
        engine.step()
        if seq.num_computed_tokens >= 100:
            break
    full, *windowed = seq.block_tables
    assert len(full) == 25 and DEAD_BLOCK not in full
    for table in windowed:
        live = [b for b in table if b != DEAD_BLOCK]
        assert len(live) <= -(-(WINDOW - 1) // BLOCK_SIZE) + 1
    pool = engine.block_manager
    # Pages of two layers: one table for every layer would hold 3 x 25 of them.
    assert pool.num_blocks - pool.num_free_blocks <= 25 + 2 * 4 < 3 * 25


def test_the_router_counts_a_windowed_model_s_cache_in_its_pages(gemma3, monkeypatch):
    """The cluster's router pictures a replica's prefix cache (rillet/cluster/prefix_index.py) at
    the size the engine reports, engine.cacheable_blocks: here three times the blocks of the KV
    cache's tokens, since a cached block keeps a page of the global group only. Three prompts of
    135 blocks in all, more than the 128 blocks of 512 tokens: the engine still hits the first
    whole, and so does the router's picture, where one of 128 blocks had forgotten it."""
    from rillet.cluster.prefix_index import PrefixIndex

    _, folder = gemma3
    engine = engine_for(load_model(str(folder), weight_format="float32"), True, monkeypatch)
    assert engine.config.num_blocks == 128 and engine.block_manager.num_blocks == 384
    assert engine.cacheable_blocks == 384
    pictures = {"pages": PrefixIndex(BLOCK_SIZE, engine.cacheable_blocks),
                "tokens": PrefixIndex(BLOCK_SIZE, engine.config.num_blocks)}
    prompts = [prompt(seed, 180) for seed in range(3)]
    one_token = SamplingParams(temperature=0, max_tokens=1)
    for index, ids in enumerate(prompts):
        answer = run(engine, {f"p{index}": (ids, one_token)})[f"p{index}"][0]
        for picture in pictures.values():  # as the router inserts: the prompt when routed, all of it at the end
            picture.insert("replica", picture.hashes(ids))
            picture.insert("replica", picture.hashes(ids + answer))
    hits = engine.block_manager.prefix_cache_hits
    run(engine, {"again": (prompts[0], one_token)})
    hit_blocks = engine.block_manager.prefix_cache_hits - hits
    assert hit_blocks == 179 // BLOCK_SIZE  # all but the last token, which is computed again
    first = pictures["pages"].hashes(prompts[0])
    assert pictures["pages"].matches("replica", first)[0] == len(first) >= hit_blocks
    assert pictures["tokens"].matches("replica", first)[0] == 0

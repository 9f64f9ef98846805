from __future__ import annotations

import random

from rillet.engine.config import EngineConfig
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.sampling_params import SamplingParams

from .helpers import CharTokenizer
from .toy_model import VOCAB, ToyModel, expected_continuation


def make_engine(**overrides) -> LLMEngine:
    settings = dict(block_size=4, kv_cache_tokens=256, max_num_seqs=16, max_num_batched_tokens=32)
    settings.update(overrides)
    tokenizer = CharTokenizer()
    tokenizer.stop_token_ids = frozenset()  # let every sequence run to its max_tokens
    return LLMEngine(ToyModel(), tokenizer, max_context_len=512, config=EngineConfig(**settings))


def run_all(engine: LLMEngine) -> dict[str, dict[int, list[int]]]:
    tokens: dict[str, dict[int, list[int]]] = {}
    finished: set[str] = set()
    for _ in range(10_000):
        if not engine.has_work:
            break
        for out in engine.step():
            for delta in out.deltas:
                tokens.setdefault(out.request_id, {}).setdefault(delta.index, []).extend(delta.token_ids)
            if out.finished:
                finished.add(out.request_id)
    assert finished == set(tokens)
    return tokens


def random_prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(1, VOCAB) for _ in range(9)]
    return [shared + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 40))] for _ in range(count)]


def check(engine: LLMEngine, prompts: list[list[int]], max_tokens: int, n: int = 1) -> None:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=max_tokens, n=n))
    results = run_all(engine)
    for i, prompt in enumerate(prompts):
        expected = expected_continuation(prompt, max_tokens)
        assert results[f"r{i}"] == {index: expected for index in range(n)}, f"request r{i}"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_concurrent_requests_with_chunked_prefill_and_shared_prefixes():
    engine = make_engine()
    check(engine, random_prompts(12), max_tokens=10)
    assert engine.block_manager.prefix_cache_hits > 0


def test_preemption_under_a_small_kv_pool_recomputes_correctly():
    engine = make_engine(kv_cache_tokens=96, max_num_batched_tokens=64)
    check(engine, random_prompts(10, seed=1), max_tokens=24)
    assert engine.scheduler.num_preemptions > 0


def test_n_choices_share_the_prompt_and_copy_on_write():
    engine = make_engine()
    check(engine, random_prompts(3, seed=2), max_tokens=9, n=3)


def test_prefix_cache_computes_only_new_tokens():
    engine = make_engine(max_num_batched_tokens=256)
    prompt = random_prompts(1, seed=3)[0]
    check(engine, [prompt], max_tokens=2)
    before = engine.num_computed_prompt_tokens
    check(engine, [prompt + [5, 6, 7]], max_tokens=2)
    full_blocks = len(prompt) // 4
    assert engine.num_computed_prompt_tokens - before == len(prompt) + 3 - full_blocks * 4


def test_abort_mid_prefill_and_mid_decode_frees_every_block():
    engine = make_engine(max_num_batched_tokens=8)
    engine.add_request("decoding", [1, 2, 3], SamplingParams(temperature=0, max_tokens=100))
    engine.step()
    engine.step()
    engine.add_request("prefilling", list(range(1, 40)), SamplingParams(temperature=0, max_tokens=100))
    engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    engine.abort_request("prefilling")
    engine.abort_request("decoding")
    assert not engine.has_work
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_max_tokens_sets_finish_reason_length():
    engine = make_engine()
    engine.add_request("a", [1, 2], SamplingParams(temperature=0, max_tokens=3))
    reasons = [d.finish_reason for _ in range(10) for out in engine.step() for d in out.deltas]
    assert reasons == [None, None, "length"]

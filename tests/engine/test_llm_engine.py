from __future__ import annotations

import collections
import random

import pytest

from rillet.engine import block_manager
from rillet.engine.config import EngineConfig
from rillet.engine.errors import TooManyChoicesError
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


def test_n_choices_share_the_prompt_and_copy_on_write(monkeypatch):
    """Each request's prompt is computed once; its two other choices fork off it and share every
    block of it; the next token of each of those two goes into a private copy of the shared last
    block (where the prompt ends inside one), KV entries and all; the third keeps the original."""
    engine = make_engine()
    manager, runner = engine.block_manager, engine.runner
    forks, copies, last_tokens = [], [], {}
    fork, copy_blocks = manager.fork, runner.copy_blocks

    def watched_fork(parent, child):
        fork(parent, child)
        assert child.block_tables == parent.block_tables
        forks.append((parent.request_id, list(parent.block_tables[0]),
                      [manager._blocks[block].ref_count for block in parent.block_tables[0]]))
        computed = parent.num_computed_tokens  # the prompt's tokens in its last block
        last_tokens[parent.block_tables[0][-1]] = parent.prompt_token_ids[computed // 4 * 4:computed]

    def watched_copy_blocks(pairs):
        copy_blocks(pairs)
        (cache,) = runner.kv_caches  # the toy model keeps each position's token id as its key
        for source, destination in pairs:
            tokens = last_tokens[source]
            assert cache[0, destination, :len(tokens), 0, 0].tolist() == tokens
        copies.extend(pairs)

    monkeypatch.setattr(manager, "fork", watched_fork)
    monkeypatch.setattr(runner, "copy_blocks", watched_copy_blocks)
    prompts = random_prompts(3, seed=2)
    check(engine, prompts, max_tokens=9, n=3)
    assert collections.Counter(request_id for request_id, _, _ in forks) == {"r0": 2, "r1": 2, "r2": 2}
    tables = {request_id: table for request_id, table, _ in forks}
    for request_id, table, ref_counts in forks[1::2]:  # after each request's second fork
        assert len(table) == -(-len(prompts[int(request_id[1:])]) // 4) and min(ref_counts) >= 3
    ends_inside_a_block = [tables[f"r{i}"][-1] for i, prompt in enumerate(prompts) if len(prompt) % 4]
    assert ends_inside_a_block, "no prompt here ends inside a block: nothing to copy"
    assert sorted(source for source, _ in copies) == sorted(ends_inside_a_block * 2)
    shared = {block for table in tables.values() for block in table}
    assert len({destination for _, destination in copies}) == len(copies) and not shared & {d for _, d in copies}


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


# -- one request's failure is its own ------------------------------------------------------


class _PoisonedToyModel(ToyModel):
    """Raises for any batch that holds the token POISON, as a model could for one request's data."""

    POISON = 49

    def forward(self, input_ids, *args):
        if bool((input_ids == self.POISON).any()):
            raise RuntimeError("poisoned input")
        return super().forward(input_ids, *args)


def finished_outputs(engine: LLMEngine) -> dict[str, object]:
    """Runs the engine dry; the last output of each request (an error output, or its final tokens)."""
    last = {}
    while engine.has_work:
        for out in engine.step():
            if out.finished:
                last[out.request_id] = out
    return last


def test_too_many_choices_are_refused_before_they_can_block_the_queue():
    engine = make_engine(max_num_seqs=4)
    with pytest.raises(TooManyChoicesError, match="n is 5"):
        engine.add_request("wide", [1, 2], SamplingParams(temperature=0, max_tokens=2, n=5))
    assert not engine.has_work
    check(engine, [[1, 2, 3]], max_tokens=3, n=4)


def test_a_request_whose_forward_raises_fails_alone_and_the_others_are_exact():
    engine = LLMEngine(_PoisonedToyModel(), _no_stop_tokenizer(), max_context_len=512,
                       config=EngineConfig(block_size=4, kv_cache_tokens=256, max_num_seqs=16, max_num_batched_tokens=64))
    prompts = {"a": [1, 2, 3], "poison": [5, _PoisonedToyModel.POISON, 6], "b": [7, 8, 9, 10, 11]}
    for request_id, prompt in prompts.items():
        engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_tokens=4))
    last = finished_outputs(engine)
    assert last["poison"].error and last["poison"].deltas == []
    for request_id in ("a", "b"):
        assert last[request_id].error is None
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    check(engine, [prompts["a"], prompts["b"]], max_tokens=4)


def test_a_failure_shared_by_every_request_of_a_batch_is_the_engines():
    engine = LLMEngine(_PoisonedToyModel(), _no_stop_tokenizer(), max_context_len=512,
                       config=EngineConfig(block_size=4, kv_cache_tokens=256, max_num_batched_tokens=64))
    for request_id in ("p1", "p2"):
        engine.add_request(request_id, [_PoisonedToyModel.POISON, 1], SamplingParams(temperature=0, max_tokens=2))
    with pytest.raises(RuntimeError, match="poisoned input"):
        engine.step()


def test_a_request_whose_sampling_raises_fails_alone():
    engine = make_engine()
    # A token id beyond the model's logits: the sampler's index_add raises for this row only.
    engine.add_request("bad-bias", [1, 2, 3], SamplingParams(temperature=0, max_tokens=4, logit_bias={VOCAB + 5: 1.0}))
    engine.add_request("good", [1, 2, 3], SamplingParams(temperature=0, max_tokens=4))
    engine.add_request("good-n2", [4, 5], SamplingParams(temperature=0, max_tokens=3, n=2))
    tokens = run_all_with_errors(engine)
    assert tokens["bad-bias"] == "error"
    assert tokens["good"] == {0: expected_continuation([1, 2, 3], 4)}
    assert tokens["good-n2"] == {0: expected_continuation([4, 5], 3), 1: expected_continuation([4, 5], 3)}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_request_whose_text_cannot_be_decoded_fails_alone():
    tokenizer = _no_stop_tokenizer()
    bad_token = expected_continuation([1, 2], 2)[1]

    def decode(ids, skip_special_tokens=True):
        if bad_token in ids:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return CharTokenizer.decode(tokenizer, ids)

    tokenizer.decode = decode
    engine = LLMEngine(ToyModel(), tokenizer, max_context_len=512, config=EngineConfig(block_size=4))
    engine.add_request("undecodable", [1, 2], SamplingParams(temperature=0, max_tokens=4))
    engine.add_request("fine", [3, 4], SamplingParams(temperature=0, max_tokens=2))
    tokens = run_all_with_errors(engine)
    assert tokens == {"undecodable": "error", "fine": {0: expected_continuation([3, 4], 2)}}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def run_all_with_errors(engine: LLMEngine) -> dict[str, object]:
    """Each request's tokens by choice, or "error" for a request the engine failed."""
    tokens: dict[str, object] = {}
    while engine.has_work:
        for out in engine.step():
            if out.error is not None:
                tokens[out.request_id] = "error"
                continue
            for delta in out.deltas:
                tokens.setdefault(out.request_id, {}).setdefault(delta.index, []).extend(delta.token_ids)
    return tokens


def _no_stop_tokenizer() -> CharTokenizer:
    tokenizer = CharTokenizer()
    tokenizer.stop_token_ids = frozenset()
    return tokenizer


# -- finish reasons, prefix-cache keys -------------------------------------------------------


def test_finish_reason_is_stop_when_the_text_flushed_at_max_tokens_completes_a_stop_string():
    """The last token's text is held back (it ends in a partial character) and flushed at the length
    limit; the flushed text holds the stop string, so the choice stopped, it was not cut."""
    tokenizer = _no_stop_tokenizer()
    held = expected_continuation([1, 2], 3)[2]
    tokenizer.decode = lambda ids, skip_special_tokens=True: "".join(
        "x\ufffd" if i == held else chr(i + 64) for i in ids)
    engine = LLMEngine(ToyModel(), tokenizer, max_context_len=512, config=EngineConfig(block_size=4))
    engine.add_request("r", [1, 2], SamplingParams(temperature=0, max_tokens=3, stop=["x"]))
    deltas = [d for _ in range(5) for out in engine.step() for d in out.deltas]
    assert [d.finish_reason for d in deltas] == [None, None, "stop"]
    assert "".join(d.text for d in deltas) == "".join(chr(t + 64) for t in expected_continuation([1, 2], 2))


def test_prefix_cache_keys_forced_to_collide_never_share_a_block(monkeypatch):
    """With every key equal, a lookup finds a block of another prompt; the check of its tokens must
    turn it down, so each prompt's output is the one it has with prefix caching off."""
    monkeypatch.setattr(block_manager, "hash_block", lambda parent, tokens: b"collision")
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19], [1, 2, 3, 4, 21, 22, 23, 24, 25]]
    cached, uncached = make_engine(), make_engine(enable_prefix_caching=False)
    for engine in (cached, uncached):
        for i, prompt in enumerate(prompts):  # one after another, so each sees the others' cached blocks
            engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=6))
            run_all(engine)
    for i, prompt in enumerate(prompts):
        cached.add_request(f"again{i}", prompt, SamplingParams(temperature=0, max_tokens=6))
        assert run_all(cached)[f"again{i}"] == {0: expected_continuation(prompt, 6)}
    # The one block the colliding key names ([1, 2, 3, 4], cached first) was found three times, by the
    # prompts that start with it: r2, again0 and again2.
    assert cached.block_manager.prefix_cache_hits == 3


def test_a_request_leaves_the_queue_before_its_first_forward():
    """The start notice (an output of no deltas) goes out through on_scheduled before the step's
    forward runs, so the queue clock never counts the time a prompt takes to compute."""
    engine = make_engine(max_num_batched_tokens=8)
    engine.add_request("r", list(range(1, 30)), SamplingParams(temperature=0, max_tokens=2))
    seen = []
    outputs = engine.step(on_scheduled=lambda notices: seen.append(
        ([(n.request_id, n.deltas) for n in notices], engine.num_computed_prompt_tokens)))
    assert seen == [([("r", [])], 0)]
    assert outputs == []  # the first chunk samples nothing, and the notice has gone already
    assert engine.step(on_scheduled=seen.append) == [] and len(seen) == 1  # told once

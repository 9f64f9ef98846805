"""Constrained decoding in the engine: each sequence of a request with a grammar samples only what
the grammar allows, whatever the logits say, while requests without one in the same step are left
alone. A model of random logits over the default model's real vocabulary: unconstrained, it writes
noise; constrained, it must still write what the grammar describes."""
from __future__ import annotations

import json

import pytest
import torch

from rillet.engine.config import EngineConfig
from rillet.engine.errors import RequestRejectedError
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.sampling_params import SamplingParams
from rillet.model import default_model_path
from rillet.model.gguf_file import open_gguf
from rillet.model.tokenizer import Tokenizer

from .toy_model import ToyModel

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                              "maximum": 99},
                                            "kind": {"enum": ["cat", "dog"]}},
          "required": ["ok", "n", "kind"], "additionalProperties": False}
JSON_GRAMMAR = f"start: answer\nanswer: %json {json.dumps({**SCHEMA, 'x-guidance': {'whitespace_flexible': False}})}\n"


class RandomLogitsModel(ToyModel):
    """The toy model's bookkeeping (its context sum), with logits that are a fixed random row per
    context sum: deterministic, batch-independent, and spread over the whole vocabulary."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = torch.randn(97, vocab_size, generator=torch.Generator().manual_seed(0)) * 3

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.table[hidden[:, 0].long() % 97]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(open_gguf(default_model_path()))


def make_engine(tokenizer) -> LLMEngine:
    return LLMEngine(RandomLogitsModel(tokenizer.vocab_size), tokenizer, max_context_len=512,
                     config=EngineConfig(block_size=4, kv_cache_tokens=512, max_num_batched_tokens=64))


def run(engine: LLMEngine) -> dict[str, dict[int, tuple[str, str]]]:
    """Each request's choices: (text, finish_reason)."""
    texts: dict[str, dict[int, list]] = {}
    while engine.has_work:
        for out in engine.step():
            assert out.error is None, out.error
            for delta in out.deltas:
                entry = texts.setdefault(out.request_id, {}).setdefault(delta.index, ["", None])
                entry[0] += delta.text
                entry[1] = delta.finish_reason or entry[1]
    return {rid: {i: tuple(v) for i, v in choices.items()} for rid, choices in texts.items()}


def test_every_choice_follows_the_grammar_beside_a_free_request(tokenizer):
    engine = make_engine(tokenizer)
    prompt = tokenizer.encode("Answer in JSON.")
    engine.add_request("free", prompt, SamplingParams(temperature=0, max_tokens=12))
    engine.add_request("json", prompt, SamplingParams(temperature=1.0, max_tokens=60, n=4, seed=5,
                                                      grammar=JSON_GRAMMAR))
    results = run(engine)
    for text, finish_reason in results["json"].values():
        assert finish_reason == "stop", text
        value = json.loads(text)  # compact: no blank outside strings
        assert set(value) == {"ok", "n", "kind"} and value["kind"] in ("cat", "dog") and 0 <= value["n"] <= 99
        assert text == json.dumps(value, separators=(",", ":"))
    # The free request is what it is alone: the grammar's masks touched only its own rows.
    alone = make_engine(tokenizer)
    alone.add_request("free", prompt, SamplingParams(temperature=0, max_tokens=12))
    assert run(alone)["free"] == results["free"]
    assert not results["free"][0][0].startswith("{")
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_grammar_wins_over_logit_bias(tokenizer):
    engine = make_engine(tokenizer)
    forced = tokenizer.encode("hello")[0]
    engine.add_request("r", tokenizer.encode("Hi"), SamplingParams(temperature=0, max_tokens=60, grammar=JSON_GRAMMAR,
                                                                   logit_bias={forced: 100.0}))
    text, finish_reason = run(engine)["r"][0]
    assert json.loads(text)["kind"] in ("cat", "dog") and finish_reason == "stop"


def test_a_grammar_that_does_not_compile_is_refused(tokenizer):
    engine = make_engine(tokenizer)
    with pytest.raises(RequestRejectedError, match="grammar"):
        engine.add_request("r", [1, 2], SamplingParams(grammar="start: undefined_rule\n"))
    assert not engine.has_work

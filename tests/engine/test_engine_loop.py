"""The engine loop's contract with its commands: a refused or failing add ends that request alone,
and an engine with work it cannot schedule waits for the next command instead of spinning."""
from __future__ import annotations

import pytest

from rillet.engine.config import EngineConfig
from rillet.engine.engine_loop import run_engine_loop
from rillet.engine.errors import RequestFailedError, TooManyChoicesError
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.messages import STOP, AddRequest, EngineCommand
from rillet.engine.sampling_params import SamplingParams

from .helpers import CharTokenizer, make_seq
from .toy_model import ToyModel


class ScriptedIO:
    """Hands out the given commands, then STOP when the loop blocks; counts polls that found none."""

    def __init__(self, commands: list[EngineCommand], max_idle_polls: int = 1000) -> None:
        self.commands = list(commands)
        self.max_idle_polls = max_idle_polls
        self.idle_polls = 0
        self.blocking_receives = 0
        self.published: list = []
        self.failures: list[tuple[str, Exception]] = []

    def receive(self, block: bool):
        if self.commands:
            return self.commands.pop(0)
        if block:
            self.blocking_receives += 1
            return STOP
        self.idle_polls += 1
        if self.idle_polls > self.max_idle_polls:
            raise AssertionError("the loop spins: it polls for commands without blocking")
        return None

    def publish(self, outputs) -> None:
        self.published.extend(outputs)

    def fail_request(self, request_id: str, error: Exception) -> None:
        self.failures.append((request_id, error))

    def commands_handled(self) -> None:
        pass


def make_engine(**settings) -> LLMEngine:
    tokenizer = CharTokenizer()
    tokenizer.stop_token_ids = frozenset()
    return LLMEngine(ToyModel(), tokenizer, max_context_len=512,
                     config=EngineConfig(block_size=4, kv_cache_tokens=256, **settings))


def test_an_engine_with_work_it_can_never_schedule_blocks_instead_of_spinning():
    engine = make_engine(max_num_seqs=2)
    # Three choices for two places: add_request refuses this; placed here by hand, as a scheduler
    # bug would, it can never be admitted.
    stuck = make_seq([1, 2, 3])
    stuck.pending_forks = 2
    engine.scheduler.add(stuck)
    io = ScriptedIO([])
    run_engine_loop(engine, io)
    assert engine.stalled and engine.has_work
    assert io.blocking_receives == 1 and io.idle_polls <= 1


def test_refused_and_failing_adds_fail_their_request_and_the_loop_runs_on():
    engine = make_engine(max_num_seqs=2)
    broken = SamplingParams(temperature=0, max_tokens=2)
    broken.stop = None  # not a list: building the request's stop checker raises TypeError
    io = ScriptedIO([
        AddRequest("wide", [1, 2], SamplingParams(temperature=0, max_tokens=2, n=3)),
        AddRequest("broken", [1, 2], broken),
        AddRequest("fine", [1, 2], SamplingParams(temperature=0, max_tokens=2)),
    ])
    run_engine_loop(engine, io)
    (wide, refused), (broken_id, failed) = io.failures
    assert (wide, broken_id) == ("wide", "broken")
    assert isinstance(refused, TooManyChoicesError)
    assert isinstance(failed, RequestFailedError) and "TypeError" in str(failed)
    assert [out.request_id for out in io.published if out.finished] == ["fine"]


@pytest.mark.parametrize("prompt_len", [600])
def test_a_prompt_over_the_context_is_refused(prompt_len):
    engine = make_engine()
    io = ScriptedIO([AddRequest("long", list(range(1, prompt_len)), SamplingParams(max_tokens=1))])
    run_engine_loop(engine, io)
    assert io.failures[0][0] == "long" and io.failures[0][1].param == "messages"


def test_the_loop_hands_freed_heap_back_each_time_it_goes_idle(monkeypatch):
    """After a burst of steps the C heap keeps the step buffers (500 MB after 16 Gemma streams) unless
    told to return them; the loop does once per busy spell, not per step."""
    from rillet.engine import engine_loop

    trims = []
    monkeypatch.setattr(engine_loop, "release_freed_memory", lambda: trims.append(len(io.published)))
    engine = make_engine()
    io = ScriptedIO([AddRequest("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=5))])
    run_engine_loop(engine, io)
    assert not engine.has_work and trims == [len(io.published)] and trims[0] >= 5

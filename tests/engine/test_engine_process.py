"""The engine loop in a child process (EngineProcess) and on a thread (AsyncEngine), over the toy
model: outputs, stats snapshots, refused requests, aborts, and how the child ends: a stop, a
failed build, a failed step, a SIGKILL (and the new child that replaces it), and its parent dying."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

import pytest

from rillet.engine.async_engine import AsyncEngine
from rillet.engine.config import EngineConfig
from rillet.engine.engine_client import EngineDeadError
from rillet.engine.engine_process import EngineProcess, EngineStartError, RestartPolicy
from rillet.engine.errors import PromptTooLongError, RequestFailedError, TooManyChoicesError
from rillet.engine.llm_engine import LLMEngine
from rillet.engine.sampling_params import SamplingParams
from rillet.model.errors import ModelLoadError

from .helpers import CharTokenizer
from .toy_model import ToyModel, expected_continuation


class _SlowToyModel(ToyModel):
    def __init__(self, step_seconds: float, fail_at_call: int | None) -> None:
        super().__init__()
        self.step_seconds = step_seconds
        self.fail_at_call = fail_at_call
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("the toy model broke")
        time.sleep(self.step_seconds)
        return super().forward(*args)


@dataclass(frozen=True)
class ToyEngineSpec:
    """Builds the toy engine in the child process; picklable, as EngineProcess needs."""

    config: EngineConfig = field(default_factory=lambda: EngineConfig(
        block_size=4, kv_cache_tokens=256, max_num_seqs=16, max_num_batched_tokens=32, num_threads=1))
    step_seconds: float = 0.0
    fail_at_call: int | None = None
    engine_fails: bool = False
    load_error: str | None = None
    build_seconds: float = 0.0

    def build(self) -> tuple[LLMEngine, str]:
        time.sleep(self.build_seconds)
        if self.load_error is not None:
            raise ModelLoadError(self.load_error)
        tokenizer = CharTokenizer()
        tokenizer.stop_token_ids = frozenset()
        model = _SlowToyModel(self.step_seconds, self.fail_at_call)
        engine_class = _FailingEngine if self.engine_fails else LLMEngine
        return engine_class(model, tokenizer, max_context_len=512, config=self.config), "toy"


class _FailingEngine(LLMEngine):
    """Fails in its own bookkeeping, outside any one request's part of a step."""

    def step(self):
        raise RuntimeError("the engine broke")


NUM_BLOCKS = ToyEngineSpec().config.num_blocks


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens)


@pytest.fixture
def engine_process():
    """A launched, ready EngineProcess factory; every one is shut down after the test."""
    launched: list[EngineProcess] = []

    def launch(restart_policy: RestartPolicy = RestartPolicy(), **spec_fields) -> EngineProcess:
        engine = EngineProcess(ToyEngineSpec(**spec_fields), restart_policy=restart_policy)
        launched.append(engine)
        engine.launch()
        engine.wait_ready()
        return engine

    yield launch
    for engine in launched:
        engine.shutdown()


async def collect(engine, request_id: str, prompt: list[int], params: SamplingParams) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(request_id, prompt, params):
        tokens.extend(t for delta in output.deltas for t in delta.token_ids)
    return tokens


async def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_child_generates_what_the_engine_would_and_reports_stats(engine_process):
    engine = engine_process()
    assert engine.is_alive and engine.stats().num_free_kv_blocks == NUM_BLOCKS

    async def main():
        engine.start()
        prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
        results = await asyncio.gather(*(collect(engine, f"r{i}", p, greedy(6)) for i, p in enumerate(prompts)))
        assert results == [expected_continuation(p, 6) for p in prompts]
        stats = engine.stats()
        assert stats.num_generated_tokens == 12 and stats.num_free_kv_blocks == NUM_BLOCKS

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_consumer_that_stops_early_aborts_and_frees_its_blocks(engine_process, kind):
    if kind == "process":
        engine = engine_process(step_seconds=0.01)
    else:
        engine = AsyncEngine(ToyEngineSpec(step_seconds=0.01).build()[0], num_threads=1)

    async def main():
        engine.start()
        outputs = engine.generate("long", [1, 2, 3], greedy(200))
        await anext(outputs)
        assert engine.stats().num_free_kv_blocks < NUM_BLOCKS
        await outputs.aclose()  # sends the abort; the idle child then sends fresh stats
        await wait_for(lambda: engine.stats().num_free_kv_blocks == NUM_BLOCKS)
        assert engine.stats().num_running_seqs == 0

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_a_refused_request_fails_alone(engine_process):
    engine = engine_process()

    async def main():
        engine.start()
        with pytest.raises(PromptTooLongError):
            await collect(engine, "too-long", list(range(1, 300)), greedy(4))
        with pytest.raises(TooManyChoicesError, match="n is 17"):
            await collect(engine, "too-many", [1, 2], SamplingParams(temperature=0, max_tokens=2, n=17))
        assert engine.is_alive
        assert await collect(engine, "fine", [1, 2], greedy(3)) == expected_continuation([1, 2], 3)

    asyncio.run(main())


def test_shutdown_stops_the_child_with_status_0(engine_process):
    engine = engine_process()
    process = engine._process

    async def main():
        engine.start()
        await collect(engine, "r", [1, 2], greedy(2))

    asyncio.run(main())
    engine.shutdown()
    assert process.exitcode == 0 and not engine.is_alive


def test_a_load_error_comes_back_as_engine_start_error():
    engine = EngineProcess(ToyEngineSpec(load_error="no such model file: /nowhere"))
    engine.launch()
    with pytest.raises(EngineStartError, match="no such model file: /nowhere"):
        engine.wait_ready()
    engine.shutdown()
    assert engine._process.exitcode == 1


def test_a_step_that_fails_for_the_only_request_fails_that_request_and_the_engine_runs_on(engine_process):
    engine = engine_process(step_seconds=0.01, fail_at_call=5)

    async def main():
        engine.start()
        with pytest.raises(RequestFailedError, match="RuntimeError"):
            await asyncio.wait_for(collect(engine, "r", [1, 2, 3], greedy(100)), timeout=30)
        assert engine.is_alive
        assert await collect(engine, "after", [1, 2], greedy(3)) == expected_continuation([1, 2], 3)
        await wait_for(lambda: engine.stats().num_free_kv_blocks == NUM_BLOCKS)

    asyncio.run(main())


def test_an_engine_failure_ends_the_child_and_after_the_last_restart_gives_up(engine_process):
    engine = engine_process(engine_fails=True, restart_policy=RestartPolicy(max_restarts=1))
    gave_up = []
    engine.on_give_up = lambda: gave_up.append(True)

    async def main():
        engine.start()
        with pytest.raises(EngineDeadError, match="internal error"):
            await asyncio.wait_for(collect(engine, "a", [1, 2, 3], greedy(5)), timeout=30)
        await wait_for(lambda: engine.is_alive and engine.num_restarts == 1, timeout=30)
        with pytest.raises(EngineDeadError, match="internal error"):
            await asyncio.wait_for(collect(engine, "b", [1, 2, 3], greedy(5)), timeout=30)
        await wait_for(lambda: gave_up == [True])
        assert not engine.is_alive

    asyncio.run(main())


def test_a_killed_child_fails_open_streams_and_a_new_child_takes_over(engine_process):
    engine = engine_process(step_seconds=0.01)

    async def main():
        engine.start()
        first_pid = engine.pid
        outputs = engine.generate("r", [1, 2, 3], greedy(500))
        await anext(outputs)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError):
            async with asyncio.timeout(30):
                async for _ in outputs:
                    pass
        await wait_for(lambda: engine.is_alive, timeout=30)
        assert engine.pid != first_pid and engine.num_restarts == 1
        assert await collect(engine, "after", [1, 2], greedy(3)) == expected_continuation([1, 2], 3)

    asyncio.run(main())


def test_more_deaths_than_the_policy_allows_give_up(engine_process):
    engine = engine_process(restart_policy=RestartPolicy(max_restarts=2, window_seconds=60))
    gave_up = []
    engine.on_give_up = lambda: gave_up.append(True)

    async def main():
        engine.start()
        for expected_restarts in (1, 2):
            os.kill(engine.pid, signal.SIGKILL)
            await wait_for(lambda: engine.num_restarts == expected_restarts and engine.is_alive, timeout=30)
        assert gave_up == []
        os.kill(engine.pid, signal.SIGKILL)
        await wait_for(lambda: gave_up == [True], timeout=30)
        assert not engine.is_alive
        with pytest.raises(EngineDeadError):
            await collect(engine, "after", [1], greedy(1))

    asyncio.run(main())


@pytest.mark.parametrize("while_loading", [True, False])
def test_the_child_dies_with_its_parent(tmp_path, while_loading):
    """A parent killed outright takes the child with it: the kernel kills a child still loading
    (PR_SET_PDEATHSIG), and a ready one reads the end of its command pipe."""
    script = textwrap.dedent(f"""
        import time
        from rillet.engine.engine_process import EngineProcess
        from tests.engine.test_engine_process import ToyEngineSpec
        if __name__ == "__main__":
            engine = EngineProcess(ToyEngineSpec(build_seconds={600 if while_loading else 0}))
            engine.launch()
            if not {while_loading}:
                engine.wait_ready()
            print(engine.pid, flush=True)
            time.sleep(600)
    """)
    (tmp_path / "parent.py").write_text(script)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True,
                              cwd=root, env={**os.environ, "PYTHONPATH": root})
    child_pid = int(parent.stdout.readline())
    try:
        assert _alive(child_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child_pid):
            assert time.monotonic() < deadline, "the engine process outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

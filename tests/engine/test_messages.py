"""The engine's protocol (rillet/engine/messages.py): each message crosses a pipe unchanged, and
every client of an engine is an EngineClient."""
from __future__ import annotations

import pickle

import pytest

from rillet.engine.async_engine import AsyncEngine
from rillet.engine.engine_client import EngineClient, LoopClient
from rillet.engine.engine_process import EngineProcess
from rillet.engine.errors import RequestFailedError
from rillet.engine.messages import (
    STOP,
    AbortRequest,
    AddRequest,
    EngineDied,
    EngineOutputs,
    EngineReady,
    EngineStartFailed,
    RequestFailed,
    StopEngine,
)
from rillet.engine.outputs import ChoiceDelta, RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats

STATS = EngineStats(1, 2, 64, 60, 10, 5, 12, 4, 0)


@pytest.mark.parametrize("message", [
    AddRequest("r1", [1, 2, 3], SamplingParams(temperature=0.5, max_tokens=7, n=2)),
    AbortRequest("r1"),
    STOP,
    EngineReady(2048, "quantized-int8x2", STATS, 1024),
    EngineStartFailed("no such file"),
    EngineOutputs([RequestOutput("r1", 3, [ChoiceDelta(0, "hi", [5], "stop")], finished=True)], STATS),
    EngineOutputs([], STATS),
    EngineDied("the engine stopped on an internal error"),
], ids=lambda message: type(message).__name__)
def test_each_message_crosses_a_pipe_unchanged(message):
    copy = pickle.loads(pickle.dumps(message))
    assert type(copy) is type(message) and copy == message


def test_a_failed_request_carries_its_error():
    copy = pickle.loads(pickle.dumps(RequestFailed("r1", RequestFailedError("bad token"))))
    assert copy.request_id == "r1" and isinstance(copy.error, RequestFailedError) and str(copy.error) == "bad token"


def test_the_stop_command_is_one_kind():
    assert StopEngine() == STOP


def test_the_local_clients_are_engine_clients():
    from rillet.engine.config import EngineConfig
    from rillet.engine.engine_process import ModelEngineSpec

    spec = ModelEngineSpec("model.gguf", "float32", EngineConfig())
    for client in (AsyncEngine(engine=None, num_threads=1), EngineProcess(spec)):
        assert isinstance(client, LoopClient) and isinstance(client, EngineClient)

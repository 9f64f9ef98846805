"""The engine child's sender: the step's messages reach the pipe whole, in order, and none is lost."""
from __future__ import annotations

import multiprocessing

import pytest

from rillet.engine.engine_child import Sender
from rillet.engine.messages import EngineOutputs, RequestFailed
from rillet.engine.outputs import ChoiceDelta, RequestOutput
from rillet.engine.stats import EngineStats


def _stats(generated: int) -> EngineStats:
    return EngineStats(num_running_seqs=1, num_waiting_seqs=0, num_kv_blocks=8, num_free_kv_blocks=4,
                       num_computed_prompt_tokens=3, num_generated_tokens=generated, prefix_cache_queried_tokens=0,
                       prefix_cache_hit_tokens=0, num_preemptions=0)


def test_messages_arrive_in_order_as_they_were_when_sent():
    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = Sender(writer)
    sent = []
    for step in range(200):
        delta = ChoiceDelta(0, f"token {step}", [step])
        message = EngineOutputs([RequestOutput("r1", 3, [delta])], _stats(step))
        sender.send(message)
        delta.text = "changed after it was sent"  # what was sent is the step's output as it was
        sent.append((f"token {step}", step))
    sender.send(RequestFailed("r2", ValueError("bad request")))
    sender.close()
    received = [reader.recv() for _ in range(201)]
    assert [(m.outputs[0].deltas[0].text, m.stats.num_generated_tokens) for m in received[:200]] == sent
    assert received[200].request_id == "r2" and str(received[200].error) == "bad request"
    assert not reader.poll()


def test_close_writes_everything_queued_before_it_returns():
    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = Sender(writer, backlog=4)
    payload = "x" * 50_000  # a few messages fill the pipe: the sender waits on the reader
    received = []
    for i in range(20):
        sender.send(EngineOutputs([RequestOutput(f"r{i}", 1, [ChoiceDelta(0, payload)])], _stats(i)))
        if i % 5 == 4:
            received += [reader.recv() for _ in range(5)]
    sender.close()
    sender.close()  # a second close returns at once
    assert [m.outputs[0].request_id for m in received] == [f"r{i}" for i in range(20)]


def test_a_send_after_the_reader_is_gone_raises():
    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = Sender(writer)
    reader.close()
    sender.send(EngineOutputs([], _stats(0)))  # written on the sender's thread, where it fails
    sender.close()
    with pytest.raises(BrokenPipeError):
        sender.send(EngineOutputs([], _stats(1)))

"""The engine's outputs cross the pipe from the engine process pickled through their own
__reduce__: every field must survive, including any field added later."""
from __future__ import annotations

import dataclasses
import pickle

from rillet.engine.outputs import ChoiceDelta, RequestOutput, TokenLogprob
from rillet.engine.stats import EngineStats


def test_outputs_survive_pickling_with_every_field_set():
    logprob = TokenLogprob(5, -0.25, [(5, -0.25), (7, -1.5)])
    delta = ChoiceDelta(1, "é text", [5, 6], "length", [logprob])
    output = RequestOutput("chatcmpl-1", 12, [delta], finished=True, error="an error")
    for obj in (logprob, delta, output):
        defaults = type(obj)(*[None] * len(dataclasses.fields(obj)))
        assert all(getattr(obj, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(obj)), \
            "set every field to a value unlike its default, so that a dropped one shows"
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            copy = pickle.loads(pickle.dumps(obj, protocol=protocol))
            assert copy == obj and type(copy) is type(obj)


def test_engine_stats_survive_pickling_with_every_field_set():
    stats = EngineStats(*range(1, len(dataclasses.fields(EngineStats)) + 1))  # each field its own value
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(stats, protocol=protocol))
        assert copy == stats and type(copy) is EngineStats

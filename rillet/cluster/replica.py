"""One engine replica: an EngineProcess (the engine in its own child process, as in a single
`rillet serve`) behind a Ray Serve deployment, streaming each request's outputs to the ingress.

A failure of one request, or the engine child's death, travels to the ingress as data (the
exception object, yielded in place of an output), so that the ingress raises the same exception
types as a single server and the API maps them to the same answers. A dead engine child is
replaced by EngineProcess itself; if it dies too often, the replica's health check fails and Ray
Serve replaces the whole replica. The replica's own death (its process killed) is seen by the
ingress as Ray's ActorDiedError (client.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rillet import launcher
from rillet.config import ServeConfig
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams

log = logging.getLogger("rillet.cluster")


@dataclass(slots=True, frozen=True)
class ReplicaSettings:
    serve: ServeConfig
    model_path: str
    log_format: str = logging.BASIC_FORMAT


class EngineReplica:
    """The engine replica deployment's class (deployment.py gives it Ray Serve's options)."""

    async def __init__(self, settings: ReplicaSettings) -> None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.settings = settings
        self.gave_up = False
        self.engine = launcher.engine_process(settings.serve, settings.model_path, settings.log_format)
        self.engine.on_give_up = self._give_up
        try:
            self.ready = await asyncio.to_thread(self._launch)
        except BaseException:
            self.engine.shutdown(timeout=0)
            raise
        self.engine.start()
        log.info("engine replica ready (pid %s, engine pid %s)", os.getpid(), self.engine.pid)

    def _launch(self):
        self.engine.launch()
        return self.engine.wait_ready()

    def _give_up(self) -> None:
        log.critical("the engine process died too often; this replica reports itself unhealthy")
        self.gave_up = True

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput | Exception]:
        """The request's outputs; an exception raised for it is yielded as the last item. When
        Ray Serve cancels this generator (the ingress stopped reading), the engine aborts it."""
        try:
            async for output in self.engine.generate(request_id, prompt_token_ids, params):
                yield output
        except Exception as error:
            yield error

    def describe(self) -> dict:
        """What the ingress needs to know of the model: its context, its weight format, and the
        blocks its prefix cache can keep (for the router)."""
        return {"max_model_len": self.ready.max_model_len, "weight_format": self.ready.weight_format,
                "cacheable_blocks": self.ready.cacheable_blocks, "pid": os.getpid()}

    def check_health(self) -> None:
        """Ray Serve replaces a replica whose check fails."""
        if self.gave_up:
            raise RuntimeError("the engine process died more often than its restart policy allows")

    def record_routing_stats(self) -> dict:
        """The engine's figures, for the router and /metrics (Ray Serve polls this)."""
        stats = self.engine.stats()
        figures = dataclasses.asdict(stats) if stats is not None else {}
        figures["alive"] = self.engine.is_alive
        return figures

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown(timeout=5)

"""The EngineClient of the ingress: the API's way to the engine replicas, through a Ray Serve
deployment handle, so that the app (rillet.api.app.create_app) is the same as a single server's.

generate() streams a request's outputs from the replica the router chose; closing it early
cancels the request in Ray Serve, which cancels the replica's generator, which aborts the
sequence in its engine. A replica that dies while it runs a request (Ray's ActorDiedError and
kin) ends the request with EngineDeadError, which the API answers as a single server answers a
dead engine process: a 503 engine_unavailable, or an error event in a started stream.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import fields

from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from rillet.cluster.router_registry import ROUTERS
from rillet.engine.engine_client import EngineClient, EngineDeadError
from rillet.engine.outputs import RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats

# Ray's ways of saying that a replica is gone, or that none can take a request.
_REPLICA_LOST = (ray_errors.RayActorError, ray_errors.ActorUnavailableError, ray_errors.WorkerCrashedError,
                 ray_errors.NodeDiedError, ray_errors.ObjectLostError, serve_errors.DeploymentUnavailableError,
                 serve_errors.BackPressureError)
RETRIES_BEFORE_FIRST_OUTPUT = 1
_STAT_FIELDS = [f.name for f in fields(EngineStats)]


class ClusterEngineClient(EngineClient):
    def __init__(self, engine_handle) -> None:
        self._handle = engine_handle
        self._streaming = engine_handle.options(stream=True)

    @property
    def router(self):
        """Ray Serve makes the router at the handle's first call, in this process."""
        return ROUTERS.get(self._handle.deployment_name)

    @property
    def is_alive(self) -> bool:
        """At least one replica is running and its engine is up."""
        return any(view.engine.get("alive", True) for view in self.replicas())

    def replicas(self) -> list:
        router = self.router
        return router.replicas() if router is not None else []

    def stats(self) -> EngineStats:
        """The replicas' figures, summed (as their last report gave them, about a quarter second old)."""
        totals = dict.fromkeys(_STAT_FIELDS, 0)
        for view in self.replicas():
            for name in _STAT_FIELDS:
                totals[name] += view.engine.get(name, 0)
        return EngineStats(**totals)

    async def describe(self) -> dict:
        """Asks one replica what it serves; makes the router, waits for a replica, and tells the
        router how many blocks a replica's prefix cache keeps (in pages of the model's KV layout)."""
        model = await self._handle.describe.remote()
        router = self.router
        if router is not None:
            router.index.set_capacity(model["cacheable_blocks"])
        return model

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """A replica lost before it sent anything is tried once more on another: nothing of the
        request has reached the client, and the router has been told of the loss."""
        for attempt in range(1 + RETRIES_BEFORE_FIRST_OUTPUT):
            started = False
            try:
                async for output in self._generate_once(request_id, prompt_token_ids, params):
                    started = True
                    yield output
                return
            except EngineDeadError:
                if started or attempt == RETRIES_BEFORE_FIRST_OUTPUT:
                    raise

    async def _generate_once(self, request_id: str, prompt_token_ids: list[int],
                             params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if not self.is_alive:
            raise EngineDeadError("no engine replica is running")
        response = self._streaming.generate.remote(request_id, prompt_token_ids, params)
        finished = False
        answer: list[int] | None = [] if params.n == 1 else None
        try:
            async for item in _replica_items(response):
                if isinstance(item, BaseException):
                    finished = True
                    answer = None
                    raise item
                finished = item.finished
                if answer is not None and item.error is None:
                    for delta in item.deltas:
                        answer += delta.token_ids
                yield item
        finally:
            if not finished:
                response.cancel()
            router = self.router
            if router is not None:
                router.request_finished(request_id, prompt_token_ids + answer if finished and answer else None)


async def _replica_items(response) -> AsyncIterator[RequestOutput | BaseException]:
    """The replica's items; its loss raised as EngineDeadError."""
    try:
        async for item in response:
            yield item
    except _REPLICA_LOST as error:
        raise EngineDeadError(f"the engine replica was lost: {type(error).__name__}") from None

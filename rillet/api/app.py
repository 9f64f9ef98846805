"""The FastAPI application: routes, error handlers, and the objects they share."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from rillet.api.access_log import AccessLogMiddleware
from rillet.api.admission import Admission, AdmissionLimits
from rillet.api.auth import AuthMiddleware, KeyStore, api_key_of, check_model_allowed
from rillet.api.body_limit import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_REQUEST_BYTES, BodySizeLimitMiddleware
from rillet.api.chat import router as chat_router
from rillet.api.cors import add_cors
from rillet.api.errors import APIError, ErrorKind, install_error_handlers
from rillet.api.logprobs import LogprobFormatter
from rillet.api.metrics import ApiMetrics, EngineCollector, metrics_router
from rillet.api.openapi import HEALTH_RESPONSES, install_openapi
from rillet.api.playground import playground_router
from rillet.api.prompt import PromptEncoder
from rillet.api.rate_limit import RateLimiter, RateLimitMiddleware
from rillet.api.request_head import HostCheck, RequestHeadMiddleware
from rillet.api.responses import router as responses_router
from rillet.api.served_model import ServedModel


def create_app(engine, served: ServedModel, keys: KeyStore | None = None, rate_limiter: RateLimiter | None = None,
               admission_limits: AdmissionLimits | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               public_paths: frozenset[str] = frozenset(), playground: bool = True,
               cors_origins: tuple[str, ...] = (), collectors: tuple = (), host_check: HostCheck | None = None,
               body_timeout: float = DEFAULT_BODY_TIMEOUT) -> FastAPI:
    """public_paths: of /metrics and /openapi.json, those that stay open on a server with keys;
    playground: serve the chat page at /; cors_origins: the web origins that may call the API
    from a browser (none: no CORS); collectors: more Prometheus collectors for /metrics (a
    cluster's per-replica figures); host_check: the Host names answered (None: any); body_timeout:
    the seconds a request body may take to arrive."""
    logging.getLogger("rillet.api").info("%s: %s", served.name, served.tool_calling.describe())
    app = FastAPI(title="rillet", description="OpenAI-compatible chat completions", docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.served = served
    app.state.rate_limiter = rate_limiter or RateLimiter()
    app.state.admission = admission = Admission(admission_limits)
    app.state.prompt_encoder = PromptEncoder(served.tokenizer)
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine.stats))
    for collector in collectors:
        registry.register(collector)
    app.state.metrics = metrics = ApiMetrics(registry)
    metrics.queued_requests.set_function(lambda: admission.num_waiting_requests)
    metrics.queued_prompt_tokens.set_function(lambda: admission.num_waiting_tokens)
    # The last added runs first: the request's head (its headers' count, its Host), CORS (a preflight
    # carries no key), request id and access log, then the key, then its request count and rate-limit
    # headers, then the bounds on the body: all before the route reads the body.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_bytes, timeout=body_timeout)
    app.add_middleware(RateLimitMiddleware, limiter=app.state.rate_limiter)
    app.add_middleware(AuthMiddleware, store=keys or KeyStore([]), public_paths=public_paths)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    add_cors(app, cors_origins)
    app.add_middleware(RequestHeadMiddleware, host_check=host_check)
    app.state.logprob_formatter = LogprobFormatter(served.tokenizer)
    install_error_handlers(app)
    app.include_router(chat_router)
    app.include_router(responses_router)
    app.include_router(metrics_router(registry))
    if playground:
        app.include_router(playground_router())

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "rillet"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        key = api_key_of(request)
        visible = key is None or key.may_use(served.name)
        return {"object": "list", "data": [model_card()] if visible else []}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict:
        check_model_allowed(api_key_of(request), model_id)
        if model_id != served.name:
            raise APIError(ErrorKind.MODEL_NOT_FOUND, f"the model {model_id!r} does not exist", "model")
        return model_card()

    @app.get("/health", responses=HEALTH_RESPONSES)
    async def health(request: Request) -> JSONResponse:
        if engine.is_alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    install_openapi(app, served, admission.limits)
    return app

"""From a validated request to what the engine takes: SamplingParams."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest
from rillet.engine.sampling_params import SamplingParams

# Documented fields rillet does not implement yet, each with a test of "left at its default".
# A request that sets one to anything else gets a 422 naming it; none is ignored silently.
# Implementing a field means deleting its row here and passing it on in sampling_params().
UNSUPPORTED_PARAMETERS: dict[str, Callable[[Any], bool]] = {
    "service_tier": lambda value: value in (None, "auto", "default"),
    "store": lambda value: value in (None, False),
    "metadata": lambda value: value in (None, {}),
    "modalities": lambda value: value in (None, ["text"]),
    "audio": lambda value: value is None,
    "prediction": lambda value: value is None,
    "reasoning_effort": lambda value: value is None,
    "web_search_options": lambda value: value is None,
}


def check_supported(request: ChatCompletionRequest) -> None:
    for name, is_default in UNSUPPORTED_PARAMETERS.items():
        if not is_default(getattr(request, name)):
            raise APIError(ErrorKind.UNSUPPORTED_PARAMETER, f"{name} is not supported by this server yet", name)
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(ErrorKind.INVALID_REQUEST, "top_logprobs needs logprobs set to true", "top_logprobs")
    if request.stream_options is not None and not request.stream:
        raise APIError(ErrorKind.INVALID_REQUEST, "stream_options is only allowed when stream is true",
                       "stream_options")


def sampling_params(request: ChatCompletionRequest, vocab_size: int, grammar: str | None = None) -> SamplingParams:
    """grammar: what every choice must follow (rillet/api/structured_output.py), or None."""
    stop = request.stop if isinstance(request.stop, list) else [request.stop] if request.stop else []
    max_tokens = request.max_completion_tokens or request.max_tokens
    return SamplingParams(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        n=request.n or 1,
        max_tokens=max_tokens,
        stop=[s for s in stop if s],
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=_logit_bias(request.logit_bias or {}, vocab_size),
        seed=request.seed,
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        grammar=grammar,
    )


def _logit_bias(raw: dict[str, float], vocab_size: int) -> dict[int, float]:
    bias = {}
    for key, value in raw.items():
        try:
            token_id = int(key)
        except ValueError:
            token_id = -1
        if not 0 <= token_id < vocab_size:
            raise APIError(ErrorKind.INVALID_REQUEST,
                           f"logit_bias key {key!r} is not a token id in the vocabulary (0..{vocab_size - 1})",
                           "logit_bias")
        bias[token_id] = value
    return bias

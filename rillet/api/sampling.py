"""From a validated request to what the engine takes: template messages and SamplingParams."""
from __future__ import annotations

from typing import Any

from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest
from rillet.engine.sampling_params import SamplingParams

# Documented fields rillet does not implement yet, with the values that mean "not used".
# A request that sets one to anything else gets a 422 naming it; none is ignored silently.
UNSUPPORTED_PARAMETERS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}


def check_supported(request: ChatCompletionRequest) -> None:
    for name, defaults in UNSUPPORTED_PARAMETERS.items():
        if getattr(request, name) not in defaults:
            raise APIError(ErrorKind.UNSUPPORTED_PARAMETER, f"{name} is not supported by this server yet", name)
    if request.response_format is not None and request.response_format.type != "text":
        raise APIError(ErrorKind.UNSUPPORTED_PARAMETER,
                       f"response_format {request.response_format.type!r} is not supported yet", "response_format")


def template_messages(request: ChatCompletionRequest) -> list[dict]:
    """The conversation as the chat template sees it; content is required where OpenAI requires it."""
    messages = []
    for i, message in enumerate(request.messages):
        text = message.text()
        if text is None and not (message.role == "assistant" and message.function_call is not None):
            raise APIError(ErrorKind.INVALID_REQUEST,
                           f"messages.{i}.content is required for a {message.role} message", f"messages.{i}.content")
        if message.role == "function" and not message.name:
            raise APIError(ErrorKind.INVALID_REQUEST, f"messages.{i}.name is required for a function message",
                           f"messages.{i}.name")
        entry: dict[str, Any] = {"role": message.role, "content": text}
        if message.name is not None:
            entry["name"] = message.name
        if message.function_call is not None:
            entry["function_call"] = message.function_call.model_dump()
        messages.append(entry)
    return messages


def sampling_params(request: ChatCompletionRequest, vocab_size: int) -> SamplingParams:
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

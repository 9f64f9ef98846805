"""Schemathesis hooks of tests/api/test_openapi.py (SCHEMATHESIS_HOOKS names this module): every
completion the fuzzer sends generates a few tokens at most, so that a bounded run covers many
bodies in seconds. What the run checks is each answer's status and shape, not the model's text."""
from __future__ import annotations

import schemathesis

MAX_TOKENS = 4


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    names = ("max_output_tokens",) if "input" in body else ("max_tokens", "max_completion_tokens")
    for name in names:
        value = body.get(name)
        if type(value) is int and value > MAX_TOKENS:
            body[name] = MAX_TOKENS
    if not any(name in body for name in names):
        body[names[0]] = MAX_TOKENS

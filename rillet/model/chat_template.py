"""Renders a conversation with the model's own chat template, in a jinja2 sandbox."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rillet.model.errors import ChatTemplateError


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict` in a template: calling it and `dict.fromkeys` only, as in transformers."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore-prefixed attributes, as transformers' does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Namespace's own signature trick: `self` may be a key
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})")


# The names a message's reasoning comes under; templates read the first (and gpt-oss's `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _template_message(message: dict) -> dict:
    """A message as transformers hands it to the template: keys whose value is None are left out,
    except content, which is "" (OpenAI clients send `content: null` beside tool calls, and many
    templates concatenate it); a reasoning field under any of its names is also reasoning_content
    and thinking."""
    entry = {key: value for key, value in message.items() if value is not None}
    if entry.get("content") is None:
        entry["content"] = ""
    reasoning = next((entry[key] for key in _REASONING_FIELDS if entry.get(key) is not None), None)
    if reasoning is not None:
        entry = {"thinking": reasoning, **entry, "reasoning_content": reasoning}
    return entry


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for inference the block just renders its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


class ChatTemplate:
    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        # The same environment transformers' apply_chat_template uses, so prompts match it exactly.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.globals["dict"] = _TemplateDict()
        env.globals["namespace"] = _TemplateNamespace
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(template)
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"the model's chat template does not parse: {_one_line(error)}") from None
        self.source = template
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """Renders messages as transformers' apply_chat_template does (see _template_message for the
        one difference: content None is ""); `extra` (tools, documents, ...) reaches the template, and
        tools and documents are none when not given."""
        messages = [_template_message(m) for m in messages]
        extra = {"tools": None, "documents": None, **extra}
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **extra)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"the chat template failed: {_one_line(error)}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            raise ChatTemplateError(f"the chat template failed: {type(error).__name__}: {_one_line(error)}") from None

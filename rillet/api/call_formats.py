"""Each model family's own tool-call format, and which one a served model uses.

A turn of calls is written `calls_open`, then each call as `call_open` NAME `name_close` ARGUMENTS
`call_close`, calls apart by `separator`, then `calls_close`. The arguments are a JSON object written
as chat templates write it (json.dumps: ", " between items, ": " after keys), so that a call the
model writes is the call its template renders back in the next turn.

| family | a call, as the model writes it |
| --- | --- |
| Hermes (Qwen 2.5/3, and the generic prompt) | `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>` |
| Llama 3.1/3.2 | `{"name": "f", "parameters": {...}}`, one call a turn |
| Mistral (v3: 7B v0.3, Nemo) | `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]` |
| Mistral (v11+: Small 3.x) | `[TOOL_CALLS]f[ARGS]{...}` for each call |

The format is chosen from the chat template (the markup its tool calls are rendered in), as vLLM's
tool parsers are chosen by model: a template that takes no tools (SmolLM2, Gemma 3) or takes them in
a markup rillet does not know gets the generic prompt: the tools described in the system message,
calls in Hermes markup, results as user turns. Where a marker (`[TOOL_CALLS]`, `[ARGS]`) is one
token of the vocabulary (Qwen's <tool_call>, Mistral's [TOOL_CALLS] and [ARGS]), the grammar holds
the model to that token (rillet/api/structured_output.py) and the engine shows it in the text where
it is a special one (SamplingParams.shown_token_ids).
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass, field

# How templates write JSON (the `tojson` filter, json.dumps' defaults), and so how arguments are written.
ITEM_SEPARATOR = ", "
KEY_SEPARATOR = ": "
_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class CallFormat:
    name: str  # as vLLM's tool parser of the family is called
    family: str  # who writes it, for the log and the README
    calls_open: str
    call_open: str
    name_close: str
    call_close: str
    # Between two calls; None where the format (its template) has one call a turn.
    separator: str | None
    calls_close: str = ""
    # Mistral's templates refuse call ids other than 9 letters and digits.
    nine_character_ids: bool = False

    @property
    def opening(self) -> str:
        """What every turn of calls starts with."""
        return self.calls_open + self.call_open

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(piece for piece in (self.calls_open, self.call_open, self.name_close, self.call_close,
                                         self.separator or "", self.calls_close) if piece)

    def write(self, calls: list[tuple[str, str]]) -> str:
        """A turn of calls (name, arguments text) as the model writes it."""
        written = [f"{self.call_open}{name}{self.name_close}{arguments_text(arguments)}{self.call_close}"
                   for name, arguments in calls]
        return self.calls_open + (self.separator or "").join(written) + self.calls_close

    def new_call_id(self) -> str:
        if self.nine_character_ids:
            return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
        return f"call_{secrets.token_hex(12)}"

    def template_call_id(self, call_id: str) -> str:
        """The id a call (and its result) is rendered with: a client's own id where the template takes
        it, else one made from it (the same id always makes the same one)."""
        if not self.nine_character_ids or re.fullmatch(r"[a-zA-Z0-9]{9}", call_id):
            return call_id
        number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
        return "".join(_ALPHANUMERIC[number // 62 ** i % 62] for i in range(9))


HERMES = CallFormat("hermes", "Hermes (Qwen 2.5 and 3, the generic prompt)", "", '<tool_call>\n{"name": "',
                    '", "arguments": ', "}\n</tool_call>", "\n")
LLAMA3_JSON = CallFormat("llama3_json", "Llama 3.1 and 3.2", "", '{"name": "', '", "parameters": ', "}", None)
MISTRAL = CallFormat("mistral", "Mistral v3 (7B v0.3, Nemo)", "[TOOL_CALLS][", '{"name": "', '", "arguments": ', "}",
                     ", ", "]", nine_character_ids=True)
MISTRAL_V11 = CallFormat("mistral_v11", "Mistral v11+ (Small 3.x)", "", "[TOOL_CALLS]", "[ARGS]", "", "",
                         nine_character_ids=True)
CALL_FORMATS = (HERMES, LLAMA3_JSON, MISTRAL, MISTRAL_V11)


@dataclass(frozen=True, slots=True)
class ToolCalling:
    """How a served model is offered tools and writes its calls."""
    format: CallFormat
    # The chat template renders the tools, the calls and their results itself; else the generic prompt.
    in_template: bool
    # The tokens of the vocabulary that the format's markers hold whole (added tokens), by their text.
    marker_tokens: dict[str, int] = field(default_factory=dict)
    # Why this format, for the log.
    reason: str = ""

    @property
    def shown_token_ids(self) -> frozenset[int]:
        return frozenset(self.marker_tokens.values())

    def describe(self) -> str:
        where = "the chat template's own" if self.in_template else "the generic prompt's"
        return f"tool calls in {self.format.name} format ({where}: {self.reason})"


GENERIC = ToolCalling(HERMES, in_template=False, reason="generic prompt")


def tool_calling_for(template_source: str, architecture: str, added_tokens: dict[str, int]) -> ToolCalling:
    """The format of the chat template's tool calls; the generic prompt where it has none rillet knows.
    added_tokens: the vocabulary's added tokens by their text (Tokenizer.added_tokens)."""
    source = template_source or ""
    if "[TOOL_CALLS]" in source:
        call_format, reason = (MISTRAL_V11, "its calls are [TOOL_CALLS]name[ARGS]{...}") if "[ARGS]" in source \
            else (MISTRAL, "its calls are [TOOL_CALLS][{...}]")
    elif "<tool_call>" in source and "tools" in source:
        call_format, reason = HERMES, "its calls are <tool_call> blocks"
    elif '"parameters": ' in source and "ipython" in source:
        call_format, reason = LLAMA3_JSON, 'its calls are {"name": ..., "parameters": ...} with ipython results'
    elif "tools" in source:
        return ToolCalling(HERMES, False, {}, f"the {architecture} chat template takes tools in a markup rillet "
                                              "does not know; the tools are described in the system message")
    else:
        return ToolCalling(HERMES, False, {}, f"the {architecture} chat template takes no tools; the tools are "
                                              "described in the system message")
    markers = {text: token_id for text, token_id in added_tokens.items()
               if text and any(text in marker for marker in call_format.markers)}
    return ToolCalling(call_format, True, markers, reason)


def arguments_text(arguments: str) -> str:
    """Arguments as templates write them; text that is not JSON stays as it is."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return json.dumps(value, ensure_ascii=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR))

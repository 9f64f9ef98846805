"""The OpenAI Responses API's request, as pydantic models: what rillet serves of it, stateless.

Input items are messages (with or without `"type": "message"`, text parts only), function calls and
their outputs, in the shapes the API itself answers with (so that an earlier response's output items
can be sent back as they came). Tools are functions. Documented fields rillet does not implement are
accepted only at their defaults (RESPONSES_UNSUPPORTED, with a 422 naming the field otherwise); the
stored-response fields are a 400 naming them (rillet/api/responses/route.py).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from rillet.api.schemas import (
    MAX_MESSAGES,
    MAX_TOOLS,
    MAX_USER_CHARS,
    FunctionName,
    JsonObjectFormat,
    JsonSchemaFormat,
    TextFormat,
    default_only,
)

MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text"]
    text: str


class OutputText(BaseModel):
    """Text of an earlier answer, as the API wrote it."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["output_text"]
    text: str
    annotations: Annotated[list[dict[str, Any]], Field(max_length=0)] = []
    logprobs: list[dict[str, Any]] | None = None


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["refusal"]
    refusal: str


TextPart = InputText | OutputText | Refusal


def parts_text(content: str | list) -> str:
    """A message's (or a call output's) text: the string, or its parts' texts joined."""
    if isinstance(content, str):
        return content
    return "".join(part.refusal if isinstance(part, Refusal) else part.text for part in content)


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]
    id: str | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def text(self) -> str:
        return parts_text(self.content)


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1, max_length=128)]
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1, max_length=128)]
    output: str | list[TextPart]
    id: str | None = None
    status: ItemStatus | None = None

    def text(self) -> str:
        return parts_text(self.output)


_ITEM_TAGS = {"message": "MessageItem", "function_call": "FunctionCallItem",
              "function_call_output": "FunctionCallOutputItem"}


def _item_type(item: Any) -> str | None:
    """A message may leave its type out (the API's "easy input message")."""
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    return _ITEM_TAGS.get(kind) if isinstance(kind, str) else None


# Tags as the errors' paths leave them out (the names of types, capitalized: rillet/api/errors.py).
InputItem = Annotated[Annotated[MessageItem, Tag("MessageItem")] | Annotated[FunctionCallItem, Tag("FunctionCallItem")]
                      | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutputItem")], Discriminator(
    _item_type, custom_error_type="input_item_type",
    custom_error_message="an input item is a message, a function_call or a function_call_output")]


class FunctionTool(BaseModel):
    """A chat tool's function, flat. `type` comes first, so that another type of tool is refused by it."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextJsonSchemaFormat(JsonSchemaFormat):
    """Chat's json_schema, flat and with its schema required: {"type": "json_schema", "name", "schema", ...}."""
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | JsonObjectFormat | TextJsonSchemaFormat | None = None
    verbosity: Annotated[str | None, default_only({"type": "string", "enum": ["medium"]})] = None


Metadata = Annotated[dict[Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)],
                          Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)]],
                     Field(max_length=MAX_METADATA_ENTRIES)]


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES - 1)]
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stream: bool | None = False
    metadata: Metadata | None = None
    user: Annotated[str, Field(max_length=MAX_USER_CHARS)] | None = None
    # Stored responses: rillet keeps none; anything but their defaults is a 400 naming them.
    store: bool | None = None
    previous_response_id: str | None = None
    # Documented, validated, and refused with 422 unless left at their defaults (RESPONSES_UNSUPPORTED).
    include: Annotated[list[str] | None, default_only({"type": "array", "maxItems": 0})] = None
    truncation: Annotated[str | None, default_only({"type": "string", "enum": ["disabled"]})] = None
    reasoning: Annotated[dict[str, Any] | None, default_only()] = None
    service_tier: Annotated[str | None, default_only({"type": "string", "enum": ["auto", "default"]})] = None
    background: Annotated[bool | None, default_only({"type": "boolean", "enum": [False]})] = None
    top_logprobs: Annotated[int | None, default_only({"type": "integer", "enum": [0]})] = None
    max_tool_calls: Annotated[int | None, default_only()] = None
    stream_options: Annotated[dict[str, Any] | None, default_only()] = None
    prompt: Annotated[dict[str, Any] | None, default_only()] = None
    conversation: Annotated[str | dict[str, Any] | None, default_only()] = None


RESPONSES_UNSUPPORTED = {
    "include": lambda value: not value,
    "truncation": lambda value: value in (None, "disabled"),
    "reasoning": lambda value: value is None,
    "service_tier": lambda value: value in (None, "auto", "default"),
    "background": lambda value: value in (None, False),
    "top_logprobs": lambda value: value in (None, 0),
    "max_tool_calls": lambda value: value is None,
    "stream_options": lambda value: value is None,
    "prompt": lambda value: value is None,
    "conversation": lambda value: value is None,
}

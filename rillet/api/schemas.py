"""The OpenAI Chat Completions wire format, as pydantic models."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

# Caps on the fields whose size costs the server work on every request or every step (the README
# lists them). Beyond one, the request is a 422 naming the field.
MAX_MESSAGES = 2048
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_STOP_SEQUENCES = 4
MAX_STOP_SEQUENCE_CHARS = 128
MAX_USER_CHARS = 256
MAX_TOOLS = 128

# The schema /openapi.json shows of `stop`: the bounds its validator below enforces, with its wording.
_STOP_SCHEMA = {"anyOf": [
    {"type": "string", "maxLength": MAX_STOP_SEQUENCE_CHARS},
    {"type": "array", "items": {"type": "string", "maxLength": MAX_STOP_SEQUENCE_CHARS},
     "maxItems": MAX_STOP_SEQUENCES},
    {"type": "null"}]}


def default_only(*accepted: dict) -> WithJsonSchema:
    """The schema of a documented parameter that rillet accepts only at its default (sampling.py
    refuses the rest with a 422 naming it): its accepted values, or null."""
    return WithJsonSchema({"anyOf": [*accepted, {"type": "null"}],
                           "description": "Not supported by this server yet: accepted only at its default"})


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    function_call: FunctionCall | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # What the official SDK sends back of an earlier answer; there is nothing in it to render.
    refusal: str | None = None

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaResponseFormat


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str | list[str] | None, WithJsonSchema(_STOP_SCHEMA)] = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]],
                          Field(max_length=MAX_LOGIT_BIAS_ENTRIES)] | None = None
    user: Annotated[str, Field(max_length=MAX_USER_CHARS)] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=MAX_TOOLS)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None
    # Documented by OpenAI, validated here, and refused with 422 unless left at their defaults
    # (see UNSUPPORTED_PARAMETERS in rillet/api/sampling.py).
    service_tier: Annotated[str | None, default_only({"type": "string", "enum": ["auto", "default"]})] = None
    store: Annotated[bool | None, default_only({"type": "boolean", "enum": [False]})] = None
    metadata: Annotated[dict[str, str] | None, default_only({"type": "object", "maxProperties": 0})] = None
    modalities: Annotated[list[str] | None, default_only({"type": "array", "items": {"type": "string", "enum": ["text"]},
                                                   "minItems": 1, "maxItems": 1})] = None
    audio: Annotated[dict[str, Any] | None, default_only()] = None
    prediction: Annotated[dict[str, Any] | None, default_only()] = None
    reasoning_effort: Annotated[str | None, default_only()] = None
    web_search_options: Annotated[dict[str, Any] | None, default_only()] = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, not {len(sequences)}")
        if any(len(s) > MAX_STOP_SEQUENCE_CHARS for s in sequences):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_SEQUENCE_CHARS} characters long")
        return stop

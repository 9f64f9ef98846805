"""The real chat templates of the families rillet serves render exactly as Hugging Face `transformers`
renders them (`apply_chat_template(..., tokenize=False)`), through rillet's sandboxed ChatTemplate.

The templates are verbatim copies kept in tests/model/chat_templates/ (README there says where each
came from). Each is rendered for the same conversations by both: rillet the way the API calls it
(rillet/api/prompt.py: messages, `tools` only when the request offers them, add_generation_prompt,
the tokenizer's bos/eos), transformers with a tiny local tokenizer carrying the same bos/eos. A
conversation a template rejects must be rejected by both. The clock that templates read through
`strftime_now` is pinned for both, so the tests do not depend on the day they run.
"""
from __future__ import annotations

import copy
import datetime as real_datetime
import json
from pathlib import Path

import pytest

from rillet.model import chat_template as chat_template_module
from rillet.model.chat_template import ChatTemplate
from rillet.model.errors import ChatTemplateError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers.utils import chat_template_utils

TEMPLATES_DIR = Path(__file__).parent / "chat_templates"

# Each fixture with the special tokens its tokenizer has (bos_token, eos_token).
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B": ("", "<|im_end|>"),
    "google-gemma-3-it": ("<bos>", "<eos>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "Mistral-Small-3.2-24B-Instruct-2506": ("<s>", "</s>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "HuggingFaceTB-SmolLM2-135M-Instruct": ("<|im_start|>", "<|im_end|>"),
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now.",
                 "parameters": {"type": "object", "properties": {}}},
}


def _call(call_id: str, name: str, arguments: dict) -> dict:
    # Hugging Face's convention (and what rillet/api/prompt.py builds): arguments as an object.
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


SYSTEM_USER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
]
USER_ONLY = [{"role": "user", "content": "What is 2+2?"}]
MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "  How are you?  "},
]
MULTI_TURN_NO_SYSTEM = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one, with <b>markup</b> & unicode: é ü 漢字 🙂"},
]
ENDS_WITH_ASSISTANT = [
    {"role": "user", "content": "Say yes."},
    {"role": "assistant", "content": "Yes."},
]
TOOL_ROUND = [
    {"role": "system", "content": "You can look things up."},
    {"role": "user", "content": "What's the weather in Zürich?"},
    {"role": "assistant", "content": None,
     "tool_calls": [_call("call12345", "get_weather", {"city": "Zürich", "unit": "celsius"})]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21}'},
]
TOOL_ROUND_ANSWERED = [
    *TOOL_ROUND,
    {"role": "assistant", "content": "It is 21 °C in Zürich."},
    {"role": "user", "content": "And the time?"},
]
TOOL_CALL_WITH_TEXT = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Let me check.",
     "tool_calls": [_call("abcdefghi", "get_weather", {"city": "Oslo"})]},
    {"role": "tool", "tool_call_id": "abcdefghi", "content": "cloudy"},
]
PARALLEL_CALLS = [
    {"role": "user", "content": "Weather in Oslo, and the time?"},
    {"role": "assistant", "content": None,
     "tool_calls": [_call("call00001", "get_weather", {"city": "Oslo"}), _call("call00002", "get_time", {})]},
    {"role": "tool", "tool_call_id": "call00001", "content": "cloudy"},
    {"role": "tool", "tool_call_id": "call00002", "content": "12:00"},
]
TWO_SYSTEMS = [
    {"role": "system", "content": "First rule."},
    {"role": "user", "content": "Hi"},
    {"role": "system", "content": "Second rule."},
    {"role": "user", "content": "Hello again"},
]
STARTS_WITH_ASSISTANT = [
    {"role": "assistant", "content": "I speak first."},
    {"role": "user", "content": "Fine."},
]
THINKING_REPLY = [
    {"role": "user", "content": "Think, then answer."},
    {"role": "assistant", "content": "<think>\nIt is 4.\n</think>\n\nFour."},
    {"role": "user", "content": "Again?"},
]
REASONING_FIELD = [
    {"role": "user", "content": "Think, then answer."},
    {"role": "assistant", "content": "Four.", "reasoning_content": "2+2 is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "Six.", "reasoning": "3+3 is 6."},
]

# (name, messages, tools)
CONVERSATIONS = [
    ("system_user", SYSTEM_USER, None),
    ("user_only", USER_ONLY, None),
    ("multi_turn", MULTI_TURN, None),
    ("multi_turn_no_system", MULTI_TURN_NO_SYSTEM, None),
    ("ends_with_assistant", ENDS_WITH_ASSISTANT, None),
    ("two_systems", TWO_SYSTEMS, None),
    ("starts_with_assistant", STARTS_WITH_ASSISTANT, None),
    ("thinking_reply", THINKING_REPLY, None),
    ("reasoning_field", REASONING_FIELD, None),
    ("tools_offered", SYSTEM_USER, [WEATHER_TOOL, TIME_TOOL]),
    ("tools_offered_no_system", USER_ONLY, [WEATHER_TOOL]),
    ("tool_round", TOOL_ROUND, [WEATHER_TOOL]),
    ("tool_round_answered", TOOL_ROUND_ANSWERED, [WEATHER_TOOL, TIME_TOOL]),
    ("tool_call_with_text", TOOL_CALL_WITH_TEXT, [WEATHER_TOOL]),
    ("parallel_calls", PARALLEL_CALLS, [WEATHER_TOOL, TIME_TOOL]),
    ("tool_round_without_tools", TOOL_ROUND, None),
]

PINNED_NOW = real_datetime.datetime(2025, 3, 4, 15, 16, 17)


class _PinnedDatetime(real_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return PINNED_NOW if tz is None else PINNED_NOW.replace(tzinfo=tz)


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    """`strftime_now` reads datetime.now() in both renderers; pin it in both modules."""
    monkeypatch.setattr(chat_template_module, "datetime", _PinnedDatetime)
    monkeypatch.setattr(chat_template_utils, "datetime", _PinnedDatetime)


def _template_source(name: str) -> str:
    return (TEMPLATES_DIR / f"{name}.jinja").read_text(encoding="utf-8")


_TOKENIZERS: dict[tuple[str, str], object] = {}


def _reference_tokenizer(bos: str, eos: str):
    """A tiny word-level tokenizer that only carries the special tokens (no downloads)."""
    key = (bos, eos)
    if key not in _TOKENIZERS:
        specials = [t for t in ("<unk>", bos, eos) if t]
        vocab = {token: i for i, token in enumerate(dict.fromkeys(specials))}
        backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
        kwargs = {"unk_token": "<unk>", "eos_token": eos}
        if bos:
            kwargs["bos_token"] = bos
        _TOKENIZERS[key] = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    return _TOKENIZERS[key]


def _render_transformers(name: str, messages, tools, add_generation_prompt: bool) -> str:
    bos, eos = TEMPLATES[name]
    tokenizer = _reference_tokenizer(bos, eos)
    return tokenizer.apply_chat_template(copy.deepcopy(messages), tools=copy.deepcopy(tools),
                                         chat_template=_template_source(name), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _render_rillet(name: str, messages, tools, add_generation_prompt: bool) -> str:
    """As rillet/api/prompt.py calls it: `tools` only when the request offers them."""
    bos, eos = TEMPLATES[name]
    template = ChatTemplate(_template_source(name), bos, eos)
    extra = {"tools": copy.deepcopy(tools)} if tools else {}
    return template.render(copy.deepcopy(messages), add_generation_prompt=add_generation_prompt, **extra)


def _outcome(render, *args):
    try:
        return "ok", render(*args)
    except Exception as error:  # noqa: BLE001 - the reference raises its own kinds
        return "error", error


def _content_filled(messages):
    """rillet renders a message whose content is None with content "" (OpenAI clients send
    `content: null` beside tool_calls); transformers drops the key, and some templates then fail."""
    return [{**m, "content": ""} if m.get("content", "") is None else m for m in messages]


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_renders_as_transformers(name, conversation, add_generation_prompt):
    _, messages, tools = conversation
    expected_kind, expected = _outcome(_render_transformers, name, messages, tools, add_generation_prompt)
    if expected_kind == "error" and _content_filled(messages) != messages:
        # The one deliberate difference: content None is "" (see _content_filled); then rillet
        # must render what transformers renders for the conversation with content "".
        expected_kind, expected = _outcome(_render_transformers, name, _content_filled(messages), tools,
                                           add_generation_prompt)
    kind, rendered = _outcome(_render_rillet, name, messages, tools, add_generation_prompt)
    if expected_kind == "error":
        assert kind == "error", f"transformers rejects this conversation ({expected}), rillet rendered:\n{rendered}"
        assert isinstance(rendered, ChatTemplateError), f"{type(rendered).__name__}: {rendered}"
        return
    assert kind == "ok", f"rillet failed where transformers rendered: {rendered!r}"
    assert rendered == expected


def test_every_fixture_is_covered():
    on_disk = {p.stem for p in TEMPLATES_DIR.glob("*.jinja")}
    assert on_disk == set(TEMPLATES)


def test_the_conversations_exercise_each_template():
    """Guards against a vacuous suite: every template renders most conversations, and the tool
    templates put the offered tools and the calls into the prompt."""
    for name in TEMPLATES:
        rendered = [_outcome(_render_transformers, name, m, t, True) for _, m, t in CONVERSATIONS]
        assert sum(kind == "ok" for kind, _ in rendered) >= 6, name
    for name in ("Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct",
                 "Mistral-Small-3.2-24B-Instruct-2506", "mistralai-Mistral-Nemo-Instruct-2407"):
        text = _render_rillet(name, TOOL_ROUND, [WEATHER_TOOL], True)
        assert "get_weather" in text and "Zürich" in text, name


def test_the_pinned_clock_reaches_the_templates():
    rendered = _render_rillet("meta-llama-Llama-3.2-3B-Instruct", USER_ONLY, None, True)
    assert "Today Date: 04 Mar 2025" in rendered
    assert rendered == _render_transformers("meta-llama-Llama-3.2-3B-Instruct", USER_ONLY, None, True)


# -- through the API's own prompt building ---------------------------------------------------------


def _served(name: str):
    from rillet.api.served_model import ServedModel

    bos, eos = TEMPLATES[name]
    return ServedModel(name=name, tokenizer=None, chat_template=ChatTemplate(_template_source(name), bos, eos),
                       max_context_len=4096, max_num_seqs=1, fingerprint="test", created=0)


API_TOOL_ROUND = {
    "messages": [
        {"role": "system", "content": "You can look things up."},
        {"role": "user", "content": [{"type": "text", "text": "What's the weather "}, {"type": "text", "text": "in Zürich?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Zürich", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": '{"temperature": 21}'},
    ],
    "tools": [WEATHER_TOOL],
}
# What Hugging Face's documentation says the same conversation is, as apply_chat_template takes it.
HF_TOOL_ROUND = [
    {"role": "system", "content": "You can look things up."},
    {"role": "user", "content": "What's the weather in Zürich?"},
    {"role": "assistant", "tool_calls": [_call("call12345", "get_weather", {"city": "Zürich", "unit": "celsius"})]},
    {"role": "tool", "tool_call_id": "call12345", "content": '{"temperature": 21}'},
]
API_PLAIN = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye."}]}
HF_PLAIN = API_PLAIN["messages"]


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct",
                                  "meta-llama-Llama-3.2-3B-Instruct", "Mistral-Small-3.2-24B-Instruct-2506",
                                  "mistralai-Mistral-Nemo-Instruct-2407"])
@pytest.mark.parametrize("case", ["plain", "tool_round"])
def test_the_api_prompt_matches_transformers(name, case):
    from rillet.api.prompt import render_prompt
    from rillet.api.schemas import ChatCompletionRequest
    from rillet.api.tools import tool_plan

    body, hf_messages = (API_PLAIN, HF_PLAIN) if case == "plain" else (API_TOOL_ROUND, HF_TOOL_ROUND)
    request = ChatCompletionRequest(model=name, **copy.deepcopy(body))
    rendered = render_prompt(request, tool_plan(request), _served(name))
    kind, expected = _outcome(_render_transformers, name, hf_messages, body.get("tools"), True)
    if kind == "error":  # Qwen3's template needs a content: the API's "" (see _content_filled)
        expected = _render_transformers(name, [{"content": "", **m} for m in hf_messages], body.get("tools"), True)
    assert rendered == expected


# -- what transformers' renderer does besides the template -------------------------------------------
# Small templates that isolate one thing apply_chat_template does around the template itself.

ENVIRONMENT_CASES = {
    # tools and documents are none, not undefined, when the caller gives none.
    "tools_none": (("{{ tools is none }} {{ tools is defined }} {{ documents is none }}"
                    "{% if tools is not none %} tools offered{% endif %}"), USER_ONLY, None),
    "tools_given": ("{% for t in tools %}{{ t.function.name }}{% endfor %} {{ documents is none }}",
                    USER_ONLY, [WEATHER_TOOL]),
    # Keys whose value is None are dropped (name, tool_calls, ...); content None is rillet's "".
    "none_keys_dropped": (("{% for m in messages %}{{ m.name is defined }} {{ m.tool_calls is defined }}"
                           " {{ m.role }}:{{ m.content }}|{% endfor %}"),
                          [{"role": "user", "content": "hi", "name": None, "tool_calls": None}], None),
    # A reasoning field under any of its names reaches the template as reasoning_content and thinking.
    "reasoning_aliases": (("{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }}/"
                           "{{ m.reasoning is defined }}|{% endfor %}"),
                          [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a", "reasoning": "because"},
                           {"role": "assistant", "content": "b", "thinking": "hmm"},
                           {"role": "assistant", "content": "c", "reasoning_content": "so", "thinking": "not this"}],
                          None),
    # namespace() works as usual, but refuses underscore-prefixed attributes.
    "namespace_ok": (("{% set ns = namespace(count=0) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}"
                      "{% endfor %}{{ ns.count }}"), MULTI_TURN, None),
    "namespace_underscore_kwarg": ("{% set ns = namespace(_hidden=1) %}{{ ns._hidden }}", USER_ONLY, None),
    "namespace_underscore_set": ("{% set ns = namespace() %}{% set ns._hidden = 1 %}x", USER_ONLY, None),
    "dict_global": ("{% set d = dict(a=1, b=messages[0].role) %}{{ d | tojson }} {{ dict.fromkeys(['x'], 0) | tojson }}",
                    USER_ONLY, None),
    "tojson_defaults": (("{{ messages | tojson }}|{{ messages | tojson(indent=2) }}|"
                         "{{ {'b': '<é>', 'a': 1} | tojson(sort_keys=True, separators=(',', ':')) }}"),
                        MULTI_TURN_NO_SYSTEM, None),
    "raise_exception": ("{{ raise_exception('no ' + messages[0].role) }}", USER_ONLY, None),
    "generation_block": ("{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}",
                         MULTI_TURN, None),
    "loop_controls": (("{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}"
                       "{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }};{% endfor %}"),
                      MULTI_TURN, None),
    "strftime_now": ("{{ strftime_now('%Y-%m-%d %H:%M') }}", USER_ONLY, None),
    # trim_blocks and lstrip_blocks: a block tag's own line leaves no whitespace behind.
    "whitespace_control": (("{% for m in messages %}\n    {% if m.role == 'user' %}\n  U:{{ m.content }}\n"
                            "    {% else %}\n  O:{{ m.content }}\n    {% endif %}\n{% endfor %}"), MULTI_TURN, None),
    "bos_eos": ("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", USER_ONLY, None),
}


def _transformers_on_source(source: str, messages, tools):
    tokenizer = _reference_tokenizer("<s>", "</s>")
    return tokenizer.apply_chat_template(copy.deepcopy(messages), tools=copy.deepcopy(tools), chat_template=source,
                                         tokenize=False, add_generation_prompt=True)


def _rillet_on_source(source: str, messages, tools):
    extra = {"tools": copy.deepcopy(tools)} if tools else {}
    return ChatTemplate(source, "<s>", "</s>").render(copy.deepcopy(messages), add_generation_prompt=True, **extra)


@pytest.mark.parametrize("case", list(ENVIRONMENT_CASES))
def test_the_environment_matches_transformers(case):
    source, messages, tools = ENVIRONMENT_CASES[case]
    expected_kind, expected = _outcome(_transformers_on_source, source, messages, tools)
    kind, rendered = _outcome(_rillet_on_source, source, messages, tools)
    if expected_kind == "error":
        assert isinstance(rendered, ChatTemplateError), f"transformers: {expected!r}; rillet: {rendered!r}"
        return
    assert kind == "ok", rendered
    assert rendered == expected

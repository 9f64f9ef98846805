"""The call formats without a model: each real template gets its family's format; the grammar, the
writer and the reader agree on every format (what the writer writes, tokenized as the family's
vocabulary has it, the grammar accepts token by token, and the reader reads back, whole or a
character at a time); call ids are those the family's template accepts."""
from __future__ import annotations

import json
import re

import pytest

from rillet.api.call_formats import CALL_FORMATS, HERMES, LLAMA3_JSON, MISTRAL, MISTRAL_V11, tool_calling_for
from rillet.api.call_reader import ArgumentsPiece, CallReader, CallStarted
from rillet.api.schemas import ChatCompletionRequest
from rillet.api.structured_output import answer_grammar
from rillet.api.tools import tool_plan
from rillet.engine.constraints import GrammarCompiler
from rillet.model.loader import load_tokenizer_and_template
from tests.api.family_models import FAMILIES, template_source, write_family_model

CALLS = [("get_forecast", '{"unit": "celsius", "days": 3}'), ("find_city", '{"city": "Paris \\"16e\\" {x}"}')]
TOOLS = [{"type": "function", "function": {"name": "get_forecast", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "find_city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]


def read(call_format, pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """Content, and calls (name, arguments), read from the pieces."""
    reader = CallReader(call_format)
    content, calls = "", []
    for event in [e for piece in pieces for e in reader.feed(piece)] + reader.finish():
        if isinstance(event, str):
            content += event
        elif isinstance(event, CallStarted):
            assert event.index == len(calls)
            calls.append([event.name, ""])
        else:
            assert isinstance(event, ArgumentsPiece) and event.index == len(calls) - 1
            calls[-1][1] += event.text
    return content, [tuple(call) for call in calls]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_real_template_gets_its_familys_format(name):
    family = FAMILIES[name]
    calling = tool_calling_for(template_source(family), family.architecture, {})
    assert (calling.format.name, calling.in_template) == (family.call_format, family.in_template)


@pytest.mark.parametrize("call_format", CALL_FORMATS, ids=lambda f: f.name)
def test_the_reader_reads_what_the_writer_writes_whole_or_a_character_at_a_time(call_format):
    calls = CALLS[:1] if call_format.separator is None else CALLS
    text = call_format.write(calls)
    assert read(call_format, [text]) == ("", calls)
    assert read(call_format, list(text)) == ("", calls)
    # Text that does not open as calls is content, all of it, however it is cut.
    prose = "Sunny [1] <b>{x}</b>"
    assert read(call_format, list(prose)) == (prose, [])
    # A JSON answer beside tools (response_format), written compactly, is not a Llama call.
    answer = '{"name":"x","parameters":{}}'
    assert read(call_format, list(answer)) == (answer, [])


def test_the_formats_are_written_as_their_templates_write_calls():
    assert HERMES.write(CALLS[:1]) == '<tool_call>\n{"name": "get_forecast", "arguments": {"unit": "celsius", ' \
                                      '"days": 3}}\n</tool_call>'
    assert LLAMA3_JSON.write(CALLS[:1]) == '{"name": "get_forecast", "parameters": {"unit": "celsius", "days": 3}}'
    assert MISTRAL.write(CALLS) == '[TOOL_CALLS][{"name": "get_forecast", "arguments": {"unit": "celsius", ' \
                                   '"days": 3}}, {"name": "find_city", "arguments": {"city": "Paris \\"16e\\" {x}"}}]'
    assert MISTRAL_V11.write(CALLS) == '[TOOL_CALLS]get_forecast[ARGS]{"unit": "celsius", "days": 3}' \
                                       '[TOOL_CALLS]find_city[ARGS]{"city": "Paris \\"16e\\" {x}"}'


def test_mistral_call_ids_are_nine_letters_and_digits_and_others_are_kept_or_mapped():
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", MISTRAL.new_call_id())
    assert re.fullmatch(r"call_[0-9a-f]{24}", HERMES.new_call_id())
    mapped = MISTRAL.template_call_id("call_abc")
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", mapped) and mapped == MISTRAL.template_call_id("call_abc")
    assert MISTRAL.template_call_id("call_abd") != mapped and MISTRAL.template_call_id("abcDEF123") == "abcDEF123"
    assert HERMES.template_call_id("call_abc") == "call_abc"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocabularies")
    return {name: load_tokenizer_and_template(str(write_family_model(folder / f"{name}.gguf", name)))
            for name in ("smollm2", "qwen2.5", "llama3.1", "mistral-nemo", "mistral-small-3.2")}


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5", "llama3.1", "mistral-nemo", "mistral-small-3.2"])
@pytest.mark.parametrize("choice", ["required", "auto", "named"])
def test_the_grammar_accepts_what_the_writer_writes_token_by_token(tokenizers, name, choice):
    front = tokenizers[name]
    calling = tool_calling_for(front.chat_template.source, front.config.architecture, front.tokenizer.added_tokens)
    call_format = calling.format
    tool_choice = {"type": "function", "function": {"name": "find_city"}} if choice == "named" else choice
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                    tool_choice=tool_choice)
    plan = tool_plan(request, calling)
    grammar = answer_grammar(request, plan)
    calls = CALLS[1:] if plan.single_call else CALLS
    text = call_format.write(calls)
    tokens = front.tokenizer.encode(text)
    for marker, token_id in calling.marker_tokens.items():  # the markers are their tokens, never spelled out
        assert text.count(marker) == tokens.count(token_id) > 0
    compiler = GrammarCompiler(front.tokenizer)
    constraint = compiler.constraint(grammar)
    for token in tokens:
        constraint.advance(token)
    assert constraint._matcher.is_accepting()
    if not plan.single_call:  # one call is a whole answer too
        one = compiler.constraint(grammar)
        for token in front.tokenizer.encode(call_format.write(CALLS[:1])):
            one.advance(token)
        assert one._matcher.is_accepting()
    if choice == "auto":  # free text, but not text that opens as the calls do
        free = compiler.constraint(grammar)
        for token in front.tokenizer.encode("Sunny, 24 C."):
            free.advance(token)
        assert free._matcher.is_accepting()
        opened = compiler.constraint(grammar)
        with pytest.raises(RuntimeError):
            for token in front.tokenizer.encode(call_format.opening[0] + "b> bold"):
                opened.advance(token)
    else:
        with pytest.raises(RuntimeError):
            compiler.constraint(grammar).advance(front.tokenizer.encode("Sunny")[0])
    assert json.loads(calls[0][1])  # the arguments are JSON


def served_with(name: str):
    from rillet.api.served_model import ServedModel
    from rillet.model.chat_template import ChatTemplate

    family = FAMILIES[name]
    return ServedModel(name, None, ChatTemplate(template_source(family), family.bos, family.eos), 4096, 4, "fp", 0,
                       architecture=family.architecture)


def two_calls_and_their_results(first_id: str, second_id: str) -> ChatCompletionRequest:
    calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
             for call_id, (name, arguments) in zip((first_id, second_id), CALLS)]
    return ChatCompletionRequest(model="m", tools=TOOLS, messages=[
        {"role": "user", "content": "Forecast and city?"}, {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": first_id, "content": "Sunny"},
        {"role": "tool", "tool_call_id": second_id, "content": "Paris"}])


def test_the_generic_prompt_gives_results_in_a_row_one_user_turn():
    """Gemma 3's template wants user and model turns to alternate: two results were two user turns."""
    from rillet.api.prompt import render_prompt

    request = two_calls_and_their_results("call_1", "call_2")
    rendered = render_prompt(request, tool_plan(request), served_with("gemma3"))
    assert "<start_of_turn>model\n" + HERMES.write(CALLS) in rendered
    assert "<start_of_turn>user\n<tool_response>\nSunny\n</tool_response>\n<tool_response>\nParis\n" \
           "</tool_response><end_of_turn>" in rendered


@pytest.mark.parametrize("name", ["mistral-nemo", "mistral-small-3.2"])
def test_mistral_templates_get_call_ids_they_accept_for_any_client_id(name):
    from rillet.api.prompt import render_prompt

    request = two_calls_and_their_results("call_0123456789abcdef", "toolu_01")
    rendered = render_prompt(request, tool_plan(request), served_with(name))
    first, second = (MISTRAL.template_call_id(i) for i in ("call_0123456789abcdef", "toolu_01"))
    assert rendered.count(first) == 2 and rendered.count(second) == 2  # each call and its result

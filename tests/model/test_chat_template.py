from __future__ import annotations

import pytest

from rillet.model.chat_template import ChatTemplate
from rillet.model.errors import ChatTemplateError

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "How are you?"},
]


def test_render_matches_transformers(ours, reference_tokenizer):
    expected = reference_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert ours.chat_template.render(CONVERSATION) == expected
    assert ours.chat_template.render(CONVERSATION).endswith("<|im_start|>assistant\n")


def test_default_system_prompt_of_the_template(ours):
    rendered = ours.chat_template.render([{"role": "user", "content": "Hi"}])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_template_runs_sandboxed():
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])


def test_raise_exception_in_template_is_a_template_error():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="alternate"):
        template.render([{"role": "user", "content": "x"}])


def test_function_call_with_no_content_renders_as_empty(ours):
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": "{}"}},
                {"role": "function", "name": "weather", "content": "sunny"}]
    assert "<|im_start|>assistant\n<|im_end|>" in ours.chat_template.render(messages)


def test_without_generation_prompt(ours, reference_tokenizer):
    expected = reference_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    assert ours.chat_template.render(CONVERSATION, add_generation_prompt=False) == expected
    assert not expected.endswith("<|im_start|>assistant\n")


def test_transformers_template_extensions():
    template = ChatTemplate("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                            "{% generation %}{{ m | tojson(indent=None, sort_keys=True) }}{% endgeneration %}"
                            "{% endfor %}{{ strftime_now('%Y')[:2] }}")
    assert template.render([{"role": "user", "content": "é"}, {"role": "user", "content": "x"}]) == \
        '{"content": "é", "role": "user"}20'


def test_a_template_that_does_not_parse_is_a_one_line_error():
    with pytest.raises(ChatTemplateError) as caught:
        ChatTemplate("{% for m in messages %}\n{{ m }")
    assert "\n" not in str(caught.value)


def test_a_gemma_file_without_a_template_gets_gemmas_turns():
    """Gemma 3's instruction-tuned turns: a system message opens the first user turn."""
    from rillet.model.architecture import ARCHITECTURES

    template = ChatTemplate(ARCHITECTURES["gemma3"].default_template, "<bos>", "<eos>")
    rendered = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
                                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a color."}])
    assert rendered == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
                        "<start_of_turn>user\nName a color.<end_of_turn>\n<start_of_turn>model\n")

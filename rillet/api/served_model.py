"""What the API knows of the model it serves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rillet.api.call_formats import ToolCalling, tool_calling_for


@dataclass(slots=True)
class ServedModel:
    name: str
    tokenizer: Any  # encode(text) -> list[int], vocab_size
    chat_template: Any  # render(messages, add_generation_prompt=True) -> str
    max_context_len: int
    # The most sequences the engine runs at once: a request's n can be no more.
    max_num_seqs: int
    # Identifies the model file and the engine configuration; stable across requests.
    fingerprint: str
    created: int
    # The longest prompt text that could fit the context: max_context_len times the most characters
    # one token stands for (the tokenizer's max_chars_per_token); None where the tokenizer gives no
    # such bound. Left out, it is found from the tokenizer.
    max_prompt_chars: int | None = None
    # The model's architecture (ModelConfig.architecture), which names it where its template says little.
    architecture: str = ""
    # How it is offered tools and writes its calls; left out, it is found from the chat template.
    tool_calling: ToolCalling | None = None

    def __post_init__(self) -> None:
        per_token = getattr(self.tokenizer, "max_chars_per_token", None)
        if self.max_prompt_chars is None and per_token:
            self.max_prompt_chars = self.max_context_len * per_token
        if self.tool_calling is None:
            self.tool_calling = tool_calling_for(getattr(self.chat_template, "source", ""), self.architecture or "model",
                                                 getattr(self.tokenizer, "added_tokens", {}))

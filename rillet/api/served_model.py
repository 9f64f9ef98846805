"""What the API knows of the model it serves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

"""How one request wants its tokens chosen and when it wants generation to stop."""
from __future__ import annotations

from dataclasses import dataclass, field

# Below this temperature sampling is greedy, as in vLLM: dividing the logits by 1e-300 overflows
# them to infinities, whose softmax is NaN, and the draw then lands anywhere in the vocabulary.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    # None: generate until a stop condition or the model's context is full.
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    # None: no log probabilities; k: the chosen token's, plus the k most likely alternatives.
    logprobs: int | None = None
    # A grammar every choice must follow (llguidance's Lark dialect; rillet/engine/constraints.py).
    grammar: str | None = None
    # Special tokens whose text the output shows (they are left out of it otherwise): the markers of a
    # tool-call format that are one token of the vocabulary, such as Mistral's [TOOL_CALLS].
    shown_token_ids: frozenset[int] = frozenset()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

"""Chooses the next token of every sampling sequence in the batch at once.

Order of transforms, as OpenAI documents them: logit_bias, then presence and frequency
penalties over the tokens generated so far, then temperature (below GREEDY_BELOW_TEMPERATURE, 0 among
them, it is greedy), then top_p. A grammar's
token mask (constrained decoding) comes after the penalties: what it forbids stays forbidden,
whatever the bias.
"""
from __future__ import annotations

import torch

from rillet.engine.constraints import TokenMasks
from rillet.engine.outputs import TokenLogprob
from rillet.engine.sampling_params import SamplingParams


NUCLEUS_CANDIDATES = 1024  # tokens searched for top_p's nucleus before the whole vocabulary is sorted


def argmax(logits: torch.Tensor) -> list[int]:
    """Each row's index of its largest value, the first where several tie (as torch.argmax). On the
    CPU through NumPy, whose vectorized argmax over a vocabulary of 49,152 takes 4 us where PyTorch's
    took 42, a step's whole sampling at one stream."""
    if logits.device.type == "cpu":
        return logits.numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()


class Sampler:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, params: list[SamplingParams], output_token_ids: list[list[int]],
               generators: list[torch.Generator | None], masks: TokenMasks | None = None) -> list[int]:
        """logits: [N, vocab] float32, one row per sequence; returns one token id per row. The
        caller's logits are left as they are: a copy takes the bias, penalties and masks."""
        changes = masks is not None or any(p.logit_bias or p.presence_penalty or p.frequency_penalty for p in params)
        logits = logits.float().clone() if changes else logits.float()
        self._apply_logit_bias(logits, params)
        self._apply_penalties(logits, params, output_token_ids)
        if masks is not None:
            masks.apply(logits)
        if all(p.greedy for p in params):
            return argmax(logits)
        temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=logits.device)
        probs = torch.softmax(logits / temperature.unsqueeze(1), dim=-1)
        probs = self._apply_top_p(probs, params)
        chosen = self._draw(probs, generators).tolist()
        if any(p.greedy for p in params):
            best = argmax(logits)
            chosen = [best[row] if p.greedy else token for row, (p, token) in enumerate(zip(params, chosen))]
        return chosen

    @torch.inference_mode()
    def logprobs(self, model_logits: torch.Tensor, tokens: list[int], num_top: list[int]) -> list[TokenLogprob]:
        """Log probabilities under the model's own distribution (before bias, penalties and
        temperature) of each row's chosen token and of its num_top most likely tokens."""
        logprobs = torch.log_softmax(model_logits.float(), dim=-1)
        chosen = torch.tensor(tokens, dtype=torch.long, device=logprobs.device).unsqueeze(1)
        chosen_values = logprobs.gather(1, chosen).squeeze(1).tolist()
        k = max(num_top, default=0)
        top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], chosen[:, :0])
        top_values, top_ids = top_values.tolist(), top_ids.tolist()
        return [TokenLogprob(token, value, list(zip(top_ids[row][:num_top[row]], top_values[row][:num_top[row]])))
                for row, (token, value) in enumerate(zip(tokens, chosen_values))]

    def _apply_logit_bias(self, logits: torch.Tensor, params: list[SamplingParams]) -> None:
        for row, p in enumerate(params):
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias.keys()), dtype=torch.long, device=logits.device)
                bias = torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype, device=logits.device)
                logits[row].index_add_(0, ids, bias)

    def _apply_penalties(self, logits: torch.Tensor, params: list[SamplingParams],
                         output_token_ids: list[list[int]]) -> None:
        rows = [i for i, p in enumerate(params)
                if (p.presence_penalty or p.frequency_penalty) and output_token_ids[i]]
        if not rows:
            return
        counts = torch.zeros((len(rows), logits.shape[1]), dtype=logits.dtype, device=logits.device)
        for k, row in enumerate(rows):
            ids = torch.tensor(output_token_ids[row], dtype=torch.long, device=logits.device)
            counts[k].index_add_(0, ids, torch.ones_like(ids, dtype=logits.dtype))
        frequency = torch.tensor([params[r].frequency_penalty for r in rows], device=logits.device)
        presence = torch.tensor([params[r].presence_penalty for r in rows], device=logits.device)
        # OpenAI: logit - count * frequency_penalty - (count > 0) * presence_penalty
        penalty = counts * frequency.unsqueeze(1) + (counts > 0).to(logits.dtype) * presence.unsqueeze(1)
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)
        logits.index_copy_(0, index, logits.index_select(0, index) - penalty)

    def _apply_top_p(self, probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        top_p = torch.tensor([p.top_p for p in params], dtype=probs.dtype, device=probs.device)
        if bool((top_p >= 1.0).all()):
            return probs
        # The nucleus is a prefix of the tokens sorted by probability. Sorting the whole vocabulary
        # of 64 rows took about 100 ms; the most likely NUCLEUS_CANDIDATES tokens are found ten times
        # faster, and hold every row's nucleus whenever their mass reaches its top_p.
        k = min(NUCLEUS_CANDIDATES, probs.shape[1])
        sorted_probs, order = probs.topk(k, dim=-1)
        if k < probs.shape[1] and not bool((sorted_probs.sum(dim=-1) >= top_p).all()):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop = mass_before >= top_p.unsqueeze(1)
        drop[:, 0] = False  # top_p 0 still keeps the most likely token
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        return torch.zeros_like(probs).scatter_(1, order, sorted_probs)

    def _draw(self, probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
        # Inverse transform: one uniform draw per row, placed on the row's cumulative distribution
        # (float64, so that rounding over a vocabulary of 10^5 tokens stays far below any token's
        # share). One number per row rather than one per token: an exponential race over the whole
        # vocabulary cost about 50 ms a step at batch 64. A token of probability 0 (cut by top_p)
        # never holds the first cumulative value above the draw, so it is never chosen. Each seeded
        # row uses its own generator, so its draws do not depend on which requests share the batch.
        cumulative = probs.to(torch.float64).cumsum_(dim=-1)
        uniform = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device)
        for row, generator in enumerate(generators):
            if generator is not None:
                uniform[row] = torch.rand(1, dtype=torch.float64, generator=generator, device=generator.device)
        targets = uniform * cumulative[:, -1:]
        chosen = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
        return chosen.clamp_(max=probs.shape[1] - 1)

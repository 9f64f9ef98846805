from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rillet.engine.constraints import TokenMasks
from rillet.engine.sampler import Sampler, argmax
from rillet.engine.sampling_params import SamplingParams

sampler = Sampler(torch.device("cpu"))


def sample(logits: list[list[float]], params: list[SamplingParams], outputs=None, generators=None) -> list[int]:
    outputs = outputs or [[] for _ in params]
    generators = generators or [None for _ in params]
    return sampler.sample(torch.tensor(logits), params, outputs, generators)


def frequencies(logits: list[float], params: SamplingParams, draws: int = 4000) -> list[float]:
    rows = [logits] * draws
    chosen = sample(rows, [params] * draws)
    return [chosen.count(i) / draws for i in range(len(logits))]


def test_temperature_zero_is_argmax():
    assert sample([[0.1, 3.0, 2.9], [5.0, 1.0, 0.0]], [SamplingParams(temperature=0)] * 2) == [1, 0]


def test_argmax_is_torchs_ties_to_the_first_included():
    rows = torch.randn(8, 49152, generator=torch.Generator().manual_seed(0))
    rows[3, 100] = rows[3, 7000] = rows[3].max() + 1  # a tie: the first index wins, as in torch.argmax
    assert argmax(rows) == rows.argmax(dim=-1).tolist() and argmax(rows)[3] == 100
    assert argmax(rows[::2, ::3]) == rows[::2, ::3].argmax(dim=-1).tolist()  # strided rows too


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6])
def test_a_temperature_below_the_greedy_bound_is_argmax_alone_and_beside_a_sampled_row(temperature):
    """1e-300 once overflowed the logits: a softmax of infinities, and a draw anywhere."""
    logits = [[0.1, 3.0, 2.9, -1.0]] * 64
    tiny = SamplingParams(temperature=temperature)
    assert sample(logits, [tiny] * 64) == [1] * 64
    chosen = sample([*logits, *logits], [tiny] * 64 + [SamplingParams(temperature=1.0)] * 64)
    assert chosen[:64] == [1] * 64 and len(set(chosen[64:])) > 1


def test_temperature_one_follows_softmax():
    logits = [math.log(0.5), math.log(0.3), math.log(0.2)]
    freq = frequencies(logits, SamplingParams(temperature=1.0))
    assert freq == pytest.approx([0.5, 0.3, 0.2], abs=0.04)


def test_low_temperature_sharpens():
    logits = [math.log(0.5), math.log(0.3), math.log(0.2)]
    freq = frequencies(logits, SamplingParams(temperature=0.2))
    # p_i ∝ p_i^(1/0.2): 0.5^5 : 0.3^5 : 0.2^5 gives the first token about 92%.
    assert freq[0] == pytest.approx(0.5**5 / (0.5**5 + 0.3**5 + 0.2**5), abs=0.03)


def test_top_p_keeps_the_smallest_nucleus():
    logits = [math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]
    freq = frequencies(logits, SamplingParams(top_p=0.7))
    assert freq[2] == 0 and freq[3] == 0
    assert freq[0] == pytest.approx(0.5 / 0.8, abs=0.04)
    assert set(sample([logits] * 50, [SamplingParams(top_p=0.0)] * 50)) == {0}


def test_logit_bias_bans_and_forces():
    params = SamplingParams(temperature=0, logit_bias={1: -100.0})
    assert sample([[0.0, 5.0, 4.0]], [params]) == [2]
    params = SamplingParams(temperature=1.0, logit_bias={0: 100.0})
    assert set(sample([[0.0, 5.0, 4.0]] * 100, [params] * 100)) == {0}


def test_presence_and_frequency_penalties_follow_openai_formula():
    # Token 0 appeared 3 times: 3.0 - 3*0.5 - 1*1.0 = 0.5 < token 1's 0.9.
    params = SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=1.0)
    assert sample([[3.0, 0.9, 0.0]], [params], outputs=[[0, 0, 0]]) == [1]
    # 3.0 - 3*0.5 - 1*0.4 = 1.1 > 0.9
    params = SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.4)
    assert sample([[3.0, 0.9, 0.0]], [params], outputs=[[0, 0, 0]]) == [0]
    # Negative penalties encourage repetition.
    params = SamplingParams(temperature=0, presence_penalty=-2.0)
    assert sample([[1.0, 2.0, 0.0]], [params], outputs=[[0]]) == [0]


def test_seeded_rows_do_not_depend_on_batch_neighbours():
    logits = [[0.0] * 50]
    params = SamplingParams(temperature=1.0, seed=1234)

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(1234)

    alone = [sample(logits, [params], generators=[g])[0] for g in [seeded()] for _ in range(5)]
    generator = seeded()
    with_others = []
    for _ in range(5):
        rows = sample(logits * 3, [SamplingParams(), params, SamplingParams()], generators=[None, generator, None])
        with_others.append(rows[1])
    assert alone == with_others


def test_logprobs_are_the_models_distribution_with_top_alternatives():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    [entry] = sampler.logprobs(logits, [1], [2])
    assert entry.token_id == 1 and entry.logprob == pytest.approx(math.log(0.3))
    assert [token for token, _ in entry.top] == [0, 1]
    assert [value for _, value in entry.top] == pytest.approx([math.log(0.5), math.log(0.3)])
    [bare] = sampler.logprobs(logits, [2], [0])
    assert bare.top == [] and bare.logprob == pytest.approx(math.log(0.2))


def test_a_token_mask_forbids_what_its_bits_do_not_allow():
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0] + [9.0] * 36, [4.0, 0.0, 2.0, 1.0] + [0.0] * 36])
    bitmask = np.zeros((2, 1), dtype=np.int32)
    bitmask[0, 0] = 0b1101  # tokens 0, 2 and 3 of 32: the best allowed is 3
    bitmask[1, 0] = 0b0110  # tokens 1 and 2
    greedy = [SamplingParams(temperature=0)] * 2
    # The bias lifts token 1 of row 0, which the mask forbids all the same; columns past the
    # mask's 32 tokens are forbidden too.
    biased = [SamplingParams(temperature=0, logit_bias={1: 100.0}), SamplingParams(temperature=0)]
    assert sampler.sample(logits.clone(), biased, [[], []], [None, None], TokenMasks([0, 1], bitmask)) == [3, 2]
    # Masking one row of three leaves the others alone.
    three = torch.cat([logits[:1], logits[:1], logits[1:]])
    assert sampler.sample(three, greedy + greedy[:1], [[], [], []], [None] * 3, TokenMasks([1], bitmask[:1])) == [4, 3, 0]


def test_top_p_beyond_the_first_candidates_sorts_the_whole_vocabulary(monkeypatch):
    # A flat distribution: the nucleus of top_p 0.9 holds 90% of the tokens, more than the candidates
    # searched first, and sampling must still reach all of them.
    from rillet.engine import sampler as sampler_module

    monkeypatch.setattr(sampler_module, "NUCLEUS_CANDIDATES", 4)
    weights = [1 + 0.01 * i for i in range(20)]  # nearly flat, no ties: token 19 the most likely
    probs = [w / sum(weights) for w in weights]
    nucleus, mass = set(), 0.0
    for token in sorted(range(20), key=lambda t: -probs[t]):
        if mass >= 0.9:
            break
        nucleus.add(token)
        mass += probs[token]
    assert len(nucleus) > 4
    chosen = set(sample([[math.log(p) for p in probs]] * 600, [SamplingParams(top_p=0.9)] * 600))
    assert chosen == nucleus
    # and where the candidates hold the nucleus, only it is drawn
    peaked = [math.log(0.6), math.log(0.3)] + [math.log(0.1 / 18)] * 18
    assert set(sample([peaked] * 200, [SamplingParams(top_p=0.85)] * 200)) == {0, 1}


def test_the_callers_logits_are_left_as_they_were():
    """The engine hands the sampler its logits without a copy; a batch that fails is sampled again
    request by request from the same logits, so bias, penalties and masks must change a copy."""
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0] + [0.0] * 28, [4.0, 0.0, 2.0, 1.0] + [0.0] * 28])
    before = logits.clone()
    bitmask = np.full((2, 1), 0b0110, dtype=np.int32)
    params = [SamplingParams(temperature=0, logit_bias={1: -100.0}, frequency_penalty=1.0),
              SamplingParams(temperature=0.7, presence_penalty=2.0)]
    sampler.sample(logits, params, [[2, 2], [1]], [None, None], TokenMasks([0, 1], bitmask))
    assert torch.equal(logits, before)

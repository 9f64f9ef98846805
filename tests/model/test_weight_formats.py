"""The faster weight formats and a float16 KV cache, against exact float32.

Measured on the default model: float16 weights move logits by at most 0.025 .. 0.038 (on
logits of magnitude ~30-38) with the same argmax at every position of the test prompts.
The quantized format (the server's default) multiplies by the file's own values, so it differs
from float32 only in the order of summation: at most ~1e-4.
The quantized-int8 format also rounds activations to int8, as llama.cpp does: logits move by up
to 1.48 and the argmax of 33 of the 36 prompt positions is float32's (llama.cpp itself,
through llama-cpp-python 0.3.36, moved them by up to 1.64 and kept 30 of 36). That is enough to
change greedy text where the first choices are near-tied ("What is the capital of France?"
starts with 'L' 24.76, 'La' 24.43, 'The' 24.37), so it is not the default.
"""
from __future__ import annotations

import pytest
import torch

from rillet.model.linear import Linear
from tests.model.test_forward_parity import BLOCK_SIZE, PROMPTS, PagedSequences, max_diff, run_step

FLOAT16_LOGITS_ATOL = 0.1
QUANTIZED_LOGITS_ATOL = 2e-3
INT8_LOGITS_ATOL = 2.5
INT8_SAME_ARGMAX = 0.8  # of the prompt positions
QUESTIONS = ("What is the capital of France?", "Write a poem about the sea.", "Tell me about the moon.")


def greedy(model, prompts: list[list[int]], steps: int, kv_dtype: torch.dtype) -> list[list[int]]:
    cache = model.model.allocate_kv_cache(64, BLOCK_SIZE, kv_dtype)
    paged = PagedSequences(len(prompts))
    generated: list[list[int]] = [[] for _ in prompts]
    logits = run_step(model, cache, paged, prompts)
    for _ in range(steps):
        for ids, seq_logits in zip(generated, logits):
            ids.append(int(seq_logits[-1].argmax()))
        logits = run_step(model, cache, paged, [[ids[-1]] for ids in generated])
    return generated


def prompt_logits(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Logits at every position of the prompts, computed together with a float32 KV cache."""
    return run_step(model, model.model.allocate_kv_cache(64, BLOCK_SIZE, torch.float32), PagedSequences(4), prompts)


@torch.inference_mode()
def test_float16_logits_stay_close_and_pick_the_same_tokens(ours, ours_float16):
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    for got, expected in zip(prompt_logits(ours_float16, prompts), prompt_logits(ours, prompts)):
        assert 0 < max_diff(got, expected) < FLOAT16_LOGITS_ATOL
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


@torch.inference_mode()
def test_quantized_weights_compute_the_float32_logits(ours, ours_quantized):
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    for got, expected in zip(prompt_logits(ours_quantized, prompts), prompt_logits(ours, prompts)):
        assert max_diff(got, expected) < QUANTIZED_LOGITS_ATOL
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


@torch.inference_mode()
def test_int8_activations_move_logits_about_as_much_as_llama_cpp(ours, ours_int8):
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    same = total = 0
    for got, expected in zip(prompt_logits(ours_int8, prompts), prompt_logits(ours, prompts)):
        assert 0.01 < max_diff(got, expected) < INT8_LOGITS_ATOL
        same += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += len(expected)
    assert same >= INT8_SAME_ARGMAX * total


def chat_prompts(model) -> list[list[int]]:
    return [model.tokenizer.encode(model.chat_template.render([{"role": "user", "content": question}]))
            for question in QUESTIONS]


@torch.inference_mode()
def test_float16_weights_and_kv_cache_generate_the_float32_greedy_text(ours, ours_float16):
    prompts = chat_prompts(ours)
    assert greedy(ours_float16, prompts, 48, torch.float16) == greedy(ours, prompts, 48, torch.float32)


@torch.inference_mode()
def test_quantized_weights_and_float16_kv_cache_generate_the_float32_greedy_text(ours, ours_quantized):
    prompts = chat_prompts(ours)
    assert greedy(ours_quantized, prompts, 48, torch.float16) == greedy(ours, prompts, 48, torch.float32)


@torch.inference_mode()
def test_a_tokens_logits_do_not_depend_on_how_its_prompt_was_split_into_steps(ours_int8):
    # With int8 activations, whose rounding would magnify any difference.
    """What makes temperature 0 repeatable under prefix caching and chunked prefill: every row of
    every step, attention included, is computed the same way whatever else the step holds."""
    prompt = ours_int8.tokenizer.encode(PROMPTS[0] + " it was chased by a very hungry wolf")
    other = ours_int8.tokenizer.encode(PROMPTS[1])

    def last_logits(splits: list[int], neighbour: bool) -> torch.Tensor:
        cache = ours_int8.model.allocate_kv_cache(32, BLOCK_SIZE, torch.float16)
        paged = PagedSequences(2 if neighbour else 1)
        for step, (start, stop) in enumerate(zip([0, *splits], [*splits, len(prompt)])):
            # The neighbour: a 3-token prefill, then one token a step.
            extra = [other[:3] if step == 0 else [other[step % len(other)]]] if neighbour else []
            logits = run_step(ours_int8, cache, paged, [prompt[start:stop], *extra])
        return logits[0][-1]

    whole = last_logits([], neighbour=False)
    assert torch.equal(last_logits([len(prompt) - 1], neighbour=False), whole)  # a prefix-cache hit
    assert torch.equal(last_logits([5, 6, 17], neighbour=True), whole)  # chunks, batched with another
    assert torch.equal(last_logits(list(range(1, len(prompt))), neighbour=True), whole)  # token by token


def test_linear_formats_compute_the_same_product():
    torch.manual_seed(0)
    weight, x = torch.randn(40, 24), torch.randn(5, 24)
    assert torch.allclose(Linear(weight, "float32")(x), x @ weight.T, atol=1e-5)
    assert torch.allclose(Linear(weight, "float16")(x), x @ weight.half().float().T, atol=1e-4)
    with pytest.raises(ValueError, match="weight format"):
        Linear(weight, "int3")


@pytest.mark.parametrize("weight_format", ["quantized", "quantized-int8"])
def test_without_a_c_compiler_the_model_says_it_holds_float16(weight_format, tmp_path):
    """No compiler and no built kernels: the block formats fall back to float16, and the model's
    weight format (the system_fingerprint's input) and the log say so, not the format asked for."""
    import os
    import subprocess
    import sys

    script = ("import logging; logging.basicConfig(level='INFO')\n"
              "from rillet.model import default_model_path, load_model\n"
              f"print('held:', load_model(default_model_path(), weight_format={weight_format!r}).model.weight_format)\n")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "RILLET_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "held: float16" in run.stdout
    assert "cannot build matmul" in run.stderr
    assert "by float16 (no native kernel)" in run.stderr

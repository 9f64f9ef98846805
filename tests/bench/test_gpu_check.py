"""bench/gpu_check.py, the GPU run's figures, checked on the CPU: the default model's shape it times
is the default model's, and a dry run (--device cpu --tiny) goes through every stage and prints
figures of the right form, graphs (DecodeGraphs' eager stand-in) and eager alike."""
from __future__ import annotations

import json

import pytest

from tests.bench.helpers import bench_module

gpu_check = bench_module("gpu_check")


def test_the_default_model_shape_is_the_default_model_files():
    from rillet.model import default_model_path
    from rillet.model.gguf_config import read_config
    from rillet.model.gguf_file import open_gguf

    try:
        path = default_model_path()
    except Exception as error:
        pytest.skip(f"no default model: {error}")
    shape = gpu_check.shape_config("smollm2-135m")
    config = read_config(open_gguf(path))
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "tie_word_embeddings", "max_context_len", "rope_theta"):
        assert getattr(shape, field) == getattr(config, field), field


def test_a_dry_run_on_the_cpu_prints_every_figure(tmp_path, capsys):
    output = tmp_path / "figures.jsonl"
    summary = gpu_check.main(["--device", "cpu", "--tiny", "--batch", "1", "3", "--output", str(output)])
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["measure"] for line in lines] == ["bandwidth", "shape", "summary"]
    assert lines[-1] == summary and lines[0]["gb_per_s"] > 0
    shape = lines[1]
    assert shape["graph_sizes"] == [1, 2, 4]
    assert [(d["batch"], d["graphs"]) for d in shape["decode"]] == [(1, True), (1, False), (3, True), (3, False)]
    weights = gpu_check._engine_step().weight_bytes(gpu_check.random_model(gpu_check.shape_config("tiny"), "cpu"))
    for decode in shape["decode"]:
        # Batch b's steps see contexts of 9 to 12 tokens (8 of prompt): 2 layers x 2 KV heads x 16 x 2 x 2 bytes each.
        contexts = 10.5 * decode["batch"]
        assert decode["kv_bytes_per_step"] == pytest.approx(contexts * 2 * 2 * 16 * 2 * 2, rel=0.1)
        assert decode["bytes_per_step"] == weights["per_step"] + weights["embedding_row"] * decode["batch"] \
            + decode["kv_bytes_per_step"]
        assert decode["steps"] == 4 and decode["tokens_per_s"] > 0
        # The bytes a step reads over its time, over the bandwidth measured first.
        share = decode["bytes_per_step"] / (decode["step_ms_median"] / 1000) / 1e9 / lines[0]["gb_per_s"]
        assert decode["bandwidth_share"] == pytest.approx(share, rel=0.02, abs=1e-4)
    figures = summary["shapes"]["tiny"]
    assert set(figures) == {"tokens_per_s_batch_1", "tokens_per_s_batch_3", "eager_tokens_per_s_batch_1",
                            "eager_tokens_per_s_batch_3", "bandwidth_share_batch_1", "batch_3_over_batch_1"}
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[-1] == summary and sum(line["measure"] == "decode" for line in printed) == 4


def test_a_measurement_that_fails_is_reported_and_the_run_goes_on(monkeypatch, capsys):
    measured = gpu_check.time_decode

    def eager_breaks(engine, batch, prompt_tokens, decode_tokens, graphs):
        if not graphs:
            raise RuntimeError("eager broke")
        return measured(engine, batch, prompt_tokens, decode_tokens, graphs)

    monkeypatch.setattr(gpu_check, "time_decode", eager_breaks)
    summary = gpu_check.main(["--device", "cpu", "--tiny", "--batch", "1", "2"])
    figures = summary["shapes"]["tiny"]
    assert figures["tokens_per_s_batch_1"] > 0 and figures["tokens_per_s_batch_2"] > 0
    assert figures["errors"] == ["batch 1 graphs False: RuntimeError('eager broke')",
                                 "batch 2 graphs False: RuntimeError('eager broke')"]
    errors = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"error"' in line]
    assert len(errors) == 2 and "eager broke" in errors[0]["error"]

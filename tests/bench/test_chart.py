"""bench/chart.py draws a PNG from side_by_side.sh's JSON lines (fabricated here); only where
matplotlib (the bench extra) is installed."""
from __future__ import annotations

import json

import pytest

from tests.bench.helpers import bench_module

chart = bench_module("chart")

LINES = [
    {"measure": "setup", "date": "2026-12-01T10:00:00", "model": "tiny.gguf", "rillet_args": "--weights quantized-int8",
     "rounds": "1", "max_tokens": "128", "cpu": "Test CPU", "cpus": 2, "avx512": False, "avx2": True},
    {"server": "rillet", "rss_mb_loaded": 900},
    {"server": "rillet", "concurrency": 1, "output_tokens_per_s": 80.0, "ttft_ms_p50": 40.0},
    {"server": "rillet", "concurrency": 4, "output_tokens_per_s": 150.0, "ttft_ms_p50": 90.0},
    {"server": "rillet", "concurrency": 4, "output_tokens_per_s": 140.0, "ttft_ms_p50": 95.0},  # a second run
    {"server": "rillet", "measure": "long_prompt_ttft", "prompt_tokens": 1002, "ttft_s": [2.7], "ttft_s_median": 2.7},
    {"server": "rillet", "rss_mb_after_load": 950},
    {"server": "llama-cpp-python", "concurrency": 1, "output_tokens_per_s": 60.0, "ttft_ms_p50": 60.0},
]


def test_the_chart_is_drawn_from_json_lines(tmp_path):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.jsonl"
    results.write_text("not json, skipped\n" + "".join(json.dumps(line) + "\n" for line in LINES))
    data = chart.collect(chart.read_lines([str(results)]))
    assert list(data["levels"]) == ["rillet", "llama-cpp-python"]
    assert len(data["levels"]["rillet"][4]) == 2
    title = chart.title_of(data, list(data["levels"]))
    assert "tiny.gguf" in title and "--weights quantized-int8" in title and "Test CPU" in title
    assert "no AVX-512" in title
    output = tmp_path / "chart.png"
    chart.draw(data, str(output))
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000


def test_the_setup_line_names_the_cpu_without_matplotlib():
    line = chart.setup_line(["model=tiny.gguf", "rillet_args=--weights quantized"])
    assert line["measure"] == "setup" and line["model"] == "tiny.gguf" and line["rillet_args"] == "--weights quantized"
    assert isinstance(line["avx512"], bool) and line["cpu"]

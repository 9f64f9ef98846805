"""bench/kernel_ab.py builds another checkout's kernels from its own sources and times them beside this one's."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "kernel_ab.py"


def base_checkout(tmp_path: Path, source: str) -> Path:
    """This checkout's kernels with a line added to one source, so that its build is a library of its own."""
    native = tmp_path / "rillet" / "model" / "native"
    shutil.copytree(ROOT / "rillet" / "model" / "native", native, ignore=shutil.ignore_patterns("__pycache__"))
    with open(native / source, "a") as file:
        file.write("\n/* the base of tests/bench/test_kernel_ab.py */\n")
    return tmp_path


def test_a_base_checkout_is_built_apart_and_timed_call_by_call(tmp_path):
    base_checkout(tmp_path, "matmul.c")
    out = subprocess.run([sys.executable, str(SCRIPT), "--base", str(tmp_path), "--types", "Q4_1", "Q6_K",
                          "--rows", "1", "3", "--shape", "64", "512", "--calls", "4"],
                         capture_output=True, text=True, check=True, timeout=300)
    assert "same matmul.c" not in out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(line["type"], line["rows"]) for line in lines] == [("Q4_1", 1), ("Q4_1", 3), ("Q6_K", 1), ("Q6_K", 3)]
    for line in lines:
        assert line["max_difference"] == 0  # the same code, built twice
        assert 0 < line["base_fastest_ms"] <= line["base_ms"] and 0 < line["this_fastest_ms"] <= line["this_ms"]
        assert line["base_over_this"] > 0


def test_the_attention_kernels_are_timed_the_same_way(tmp_path):
    base_checkout(tmp_path, "decode_attention.c")
    out = subprocess.run([sys.executable, str(SCRIPT), "--base", str(tmp_path), "--attention", "--calls", "2"],
                         capture_output=True, text=True, check=True, timeout=300)
    assert "same decode_attention.c" not in out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5 and len({line["attention"] for line in lines}) == 5
    for line in lines:
        assert line["max_difference"] == 0  # the same code, built twice
        assert 0 < line["base_fastest_ms"] <= line["base_ms"] and 0 < line["this_fastest_ms"] <= line["this_ms"]


def test_cold_attention_calls_are_timed_with_the_caches_overwritten(tmp_path):
    base_checkout(tmp_path, "decode_attention.c")
    out = subprocess.run([sys.executable, str(SCRIPT), "--base", str(tmp_path), "--attention", "--cold", "--calls", "2"],
                         capture_output=True, text=True, check=True, timeout=300)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5 and all(line["cold"] for line in lines)
    for line in lines:
        assert line["max_difference"] == 0
        assert 0 < line["base_fastest_ms"] <= line["base_ms"] and 0 < line["this_fastest_ms"] <= line["this_ms"]


def test_a_decode_steps_matrices_are_timed_sweep_by_sweep(tmp_path):
    base_checkout(tmp_path, "matmul.c")
    out = subprocess.run([sys.executable, str(SCRIPT), "--base", str(tmp_path), "--step", "--rows", "1", "2",
                          "--calls", "2"], capture_output=True, text=True, check=True, timeout=300)
    assert "same matmul.c" not in out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["rows"] for line in lines] == [1, 2]
    for line in lines:
        # SmolLM2-135M: 30 layers of 4 matrices and the head, about 96 MB of packed blocks
        assert line["matrices"] == 121 and 50 < line["weight_mb"] < 200
        assert line["max_difference"] == 0  # the same code, built twice
        assert 0 < line["this_fastest_ms"] <= line["this_ms"] and line["this_gb_per_s"] > 0

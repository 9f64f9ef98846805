"""bench/vnni_peak.py compiles its loops and reports a rate for every core, on the ISAs it knows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vnni_peak.py"


@pytest.mark.parametrize("isa", ["", "avx2"])
def test_the_peak_is_measured_on_every_core(isa, monkeypatch):
    monkeypatch.setenv("RILLET_ISA", isa)
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, timeout=120)
    figures = json.loads(out.stdout)
    if "skipped" in figures:
        pytest.skip(figures["skipped"])
    assert figures["isa"] == (isa or figures["isa"])
    assert len(figures["g_per_s_each_core_all_busy"]) == figures["cores"]
    assert all(rate > 0.05 for rate in [figures["g_per_s_one_core"], *figures["g_per_s_each_core_all_busy"]])
    assert figures["unit"] in figures["ns_per_loop_one_core"]

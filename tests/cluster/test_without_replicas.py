"""A single `rillet serve` does not import Ray (in the default suite; Ray need not be installed)."""
from __future__ import annotations

import subprocess
import sys


def test_the_single_server_path_imports_no_ray():
    code = ("import sys; from rillet.cli import build_parser; args = build_parser().parse_args(['serve']); "
            "assert args.replicas is None; import rillet.api.app, rillet.engine.engine_process; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

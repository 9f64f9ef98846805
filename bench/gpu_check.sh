#!/usr/bin/env bash
# Issue 29's GPU check, prepared to run once on a lent GPU machine: the CUDA path's tests on the GPU,
# then bench/gpu_check.py's figures (decode tokens/s at batch 1 and 64, with and without CUDA graphs,
# on the default model's shape and SmolLM2-1.7B's, and batch 1's share of the memory bandwidth).
# About 2-4 minutes on the machine, under its own limits of 240 s (tests) and 300 s (figures).
#
#   1. Here, once (the device machine reaches no registry; its image has torch, triton, numpy,
#      tokenizers, jinja2, pytest, but not gguf or llguidance, which rillet imports):
#          bash bench/gpu_check.sh --fetch-wheels        # into .whl/ (git ignores it), about 8 MB
#   2. Through the device tool, from the repository's root:
#          run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#      What it writes under $OUT comes back: tests.log, gpu_check.jsonl (its last line, "summary",
#      holds the figures for bench/RESULTS.md).
#   3. A dry run here, on the CPU: the same stages over tiny shapes (no wheels needed):
#          bash bench/gpu_check.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
MODE=${1:-device}

if [ "$MODE" = "--fetch-wheels" ]; then
    mkdir -p .whl
    exec "${PYTHON:-.venv/bin/python}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "gguf==0.19.0" "llguidance==1.9.1"
fi

OUT=${OUT:-$(mktemp -d)}
if [ "$MODE" = "--dry-run" ]; then
    PY=${PYTHON:-.venv/bin/python}
    DEVICE=cpu
    BENCH_ARGS=(--device cpu --tiny)
elif [ "$MODE" = "device" ]; then
    DEVICE=cuda
    BENCH_ARGS=(--device cuda)
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    fi
else
    echo "usage: bash bench/gpu_check.sh [--fetch-wheels | --dry-run]" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# What the run saw, as one JSON line.
"$PY" - "$DEVICE" <<'EOF'
import json, sys
import torch
info = {"measure": "environment", "device": sys.argv[1], "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    properties = torch.cuda.get_device_properties(0)
    info |= {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
             "multiprocessors": properties.multi_processor_count}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
print(json.dumps(info), flush=True)
EOF

# The tests of the CUDA path; with RILLET_TEST_DEVICE=cuda the model and graph tests run on the GPU
# (test_gpu_attention.py compiles its kernel there by itself). --noconftest: tests/conftest.py
# imports the openai client for the API tests, which the GPU image lacks; these tests need none of it.
RILLET_TEST_DEVICE=$DEVICE timeout 240 "$PY" -m pytest -q -p no:cacheprovider --noconftest \
    tests/model/test_gpu_attention.py tests/model/test_gpu_path.py tests/engine/test_decode_graphs.py \
    tests/bench/test_gpu_check.py 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

timeout 300 "$PY" bench/gpu_check.py "${BENCH_ARGS[@]}" --output "$OUT/gpu_check.jsonl"
bench_rc=$?

echo "{\"measure\": \"gpu_check\", \"tests_rc\": $tests_rc, \"bench_rc\": $bench_rc, \"out\": \"$OUT\"}"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]

"""The NEON code paths of the block kernels, checked on any machine with an aarch64 cross compiler and
qemu-aarch64: matmul.c built for aarch64 three ways (rillet/model/native's ISAS: neon_dotprod, neon,
scalar), linked into tests/model/neon_harness.c and run under qemu, gives for every (block type, weight
format) entry of its table at every batch size exactly the result of its aarch64 scalar build, and that
is exactly the x86 scalar build's result too (the portable C is IEEE-exact)."""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rillet.model import native
from rillet.model.quantized import kernels
from tests.model.test_quantized_weights import quantized

CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
HARNESS = Path(__file__).with_name("neon_harness.c")
ISAS = list(native.ISAS["aarch64"])  # neon_dotprod, neon, scalar
ROWS = (1, 2, 5, 7, 9, 13, 64)  # as test_kernel_isas.py: the single-row path, whole and partial tiles
OUTPUTS, INPUTS = 83, 512  # not a multiple of the 8 or 16 rows packed together; two K-type blocks
pytestmark = pytest.mark.skipif(
    shutil.which(CC) is None or shutil.which(QEMU) is None,
    reason=f"no {CC} or {QEMU} here (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)")


def build_for_aarch64(isa: str) -> Path:
    """neon_harness.c with matmul.c built as native.library builds it for isa, linked statically. Cached
    under native.cache_dir(), keyed by the sources and the flags."""
    flags = native.FLAGS + native.ISAS["aarch64"][isa][0]
    source = native.SOURCE_DIR / "matmul.c"
    text = b"".join(path.read_bytes() for path in [HARNESS, source, *sorted(native.SOURCE_DIR.glob("*.h"))])
    key = hashlib.sha256(text + repr((CC, flags, native.EXTRA_FLAGS)).encode()).hexdigest()[:16]
    target = native.cache_dir() / f"neon-harness-{isa}-{key}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    obj = partial.with_suffix(".matmul.o")
    try:
        _run([CC, *flags, *native.EXTRA_FLAGS["matmul"], "-c", "-o", str(obj), str(source)])
        _run([CC, "-O2", "-static", "-fopenmp", f"-I{native.SOURCE_DIR}", "-o", str(partial), str(HARNESS), str(obj), "-lm"])
        os.replace(partial, target)
    finally:
        for path in [partial, obj]:
            path.unlink(missing_ok=True)
    return target


def _run(command: list[str]) -> None:
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-3000:]}"


def run_harness(program: Path, jobs: list[tuple[str, torch.Tensor, torch.Tensor, int]], directory: Path,
                cpu: str = "max") -> tuple[dict[str, str], list[tuple[int, torch.Tensor]] | None, int]:
    """Runs jobs (kernel, x, packed, N) under qemu-aarch64 -cpu cpu: the harness's report (matmul -> code
    path, and asimddp), each job's (status, y) (None when it failed), and its exit status."""
    source, results = directory / "jobs.bin", directory / f"results-{program.name}-{cpu}.bin"
    with open(source, "wb") as f:
        for kernel, x, packed, n in jobs:
            f.write(kernel.encode().ljust(32, b"\0"))
            f.write(struct.pack("<4q", x.shape[0], x.shape[1], n, packed.numel()))
            f.write(packed.numpy().tobytes())
            f.write(x.numpy().astype("<f4").tobytes())
    result = subprocess.run([QEMU, "-cpu", cpu, str(program), str(source), str(results)], check=False,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = dict(line.split() for line in result.stdout.splitlines() if len(line.split()) == 2)
    if result.returncode != 0:
        return report, None, result.returncode
    data, offset, outputs = results.read_bytes(), 0, []
    for _, x, _, n in jobs:
        (status,) = struct.unpack_from("<q", data, offset)
        y = np.frombuffer(data, "<f4", x.shape[0] * n, offset + 8)
        outputs.append((status, torch.from_numpy(y.copy()).reshape(x.shape[0], n)))
        offset += 8 + 4 * x.shape[0] * n
    assert offset == len(data)
    return report, outputs, 0


def jobs_for(ggml_type: str, weight_format: str) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """test_kernel_isas.py's calls: each batch size, and the last row of the largest alone."""
    kernel = kernels("scalar")[(ggml_type, weight_format)]  # the same entry, name and layout on every build
    packed = quantized(ggml_type, OUTPUTS, INPUTS).pack(kernel).contiguous()
    generator = torch.Generator().manual_seed(7)
    jobs = []
    for rows in ROWS:
        x = torch.randn(rows, INPUTS, generator=generator)
        x[0, :32] = 0  # a block of zeros: its int8 scale is 0
        jobs.append((kernel.name, x, packed, OUTPUTS))
    jobs.append((kernel.name, jobs[-1][1][-1:].clone(), packed, OUTPUTS))
    return jobs


ENTRIES = sorted(kernels())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every entry's jobs, run by each build under -cpu max (and the neon build on a Cortex-A53, which
    has no sdot): {(isa, cpu): (report, outputs)}, with the jobs per entry."""
    directory = tmp_path_factory.mktemp("neon")
    jobs = {entry: jobs_for(*entry) for entry in ENTRIES}
    flat = [job for entry in ENTRIES for job in jobs[entry]]
    results = {}
    for isa, cpu in [(isa, "max") for isa in ISAS] + [("neon", "cortex-a53")]:
        report, outputs, status = run_harness(build_for_aarch64(isa), flat, directory, cpu)
        assert status == 0, f"{isa} build under -cpu {cpu} exited with {status}"
        per_entry, start = {}, 0
        for entry in ENTRIES:
            per_entry[entry] = outputs[start:start + len(jobs[entry])]
            start += len(jobs[entry])
        results[(isa, cpu)] = report, per_entry
    return jobs, results


@pytest.mark.parametrize("ggml_type,weight_format", ENTRIES)
def test_each_neon_build_gives_the_scalar_builds_result_bit_for_bit(runs, ggml_type, weight_format):
    jobs, results = runs
    entry = (ggml_type, weight_format)
    reference = results[("scalar", "max")][1][entry]
    for (isa, cpu), (_, per_entry) in results.items():
        outputs = per_entry[entry]
        for (_, x, _, _), (status, y), (_, expected) in zip(jobs[entry], outputs, reference):
            assert status == 0, (isa, cpu, x.shape[0])
            assert torch.equal(y.view(torch.int32), expected.view(torch.int32)), \
                (isa, cpu, x.shape[0], (y - expected).abs().max().item())
        # each row's result is that row's alone
        assert torch.equal(outputs[-1][1], outputs[-2][1][-1:]), (isa, cpu)
    if native.library("matmul", "scalar") is None:
        pytest.skip("no C compiler for this machine's own scalar build")
    # the portable C is IEEE-exact: the same bits on x86 (or whatever this machine is)
    for (_, x, packed, n), (_, expected) in zip(jobs[entry], reference):
        here = native.block_matmul(x, packed, kernels("scalar")[entry], n)
        assert torch.equal(here.view(torch.int32), expected.view(torch.int32)), (x.shape[0], (here - expected).abs().max().item())


def test_each_aarch64_build_says_which_code_path_it_took(runs):
    _, results = runs
    for (isa, cpu), (report, _) in results.items():
        assert report["matmul"] == isa, (isa, cpu)
    # -cpu max has sdot (so the neon_dotprod build ran it); a Cortex-A53 has not
    assert results[("neon_dotprod", "max")][0]["asimddp"] == "1"
    assert results[("neon", "cortex-a53")][0]["asimddp"] == "0"


def test_the_dotprod_build_needs_sdot(tmp_path):
    """On a CPU without sdot the neon_dotprod build stops at its first int8 dot product (so it runs
    sdot), where the neon build runs."""
    x, packed, n = jobs_for("Q8_0", "quantized-int8")[0][1:]
    job = [("int8_q8", x, packed, n)]
    _, outputs, status = run_harness(build_for_aarch64("neon_dotprod"), job, tmp_path, "cortex-a53")
    assert status != 0 and outputs is None
    assert run_harness(build_for_aarch64("neon"), job, tmp_path, "cortex-a53")[2] == 0


@pytest.mark.parametrize("cpuinfo,expected", [
    (("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
      "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"), ["neon_dotprod", "neon", "scalar"]),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n", ["neon", "scalar"]),  # a Cortex-A53
    ("processor\t: 0\nFeatures\t: fp asimd asimddp\n", ["neon", "scalar"]),  # sdot without float16 arithmetic
])
def test_an_arm_cpus_features_choose_its_instruction_sets(monkeypatch, tmp_path, cpuinfo, expected):
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    real_open = open
    monkeypatch.setattr(native, "open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k),
                        raising=False)
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    assert native.machine_isas() == expected

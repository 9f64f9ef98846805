"""The integer dot-product ceiling of this CPU's cores, for reading the block kernels' figures against.

    python bench/vnni_peak.py

Compiles a few loops of register-only instructions with the machine's C compiler and times them on
one core, then on every core at once. AVX-512 VNNI: vpdpbusd on zmm (64 byte products each), alone
and mixed 8:4 with vpmulld or vfmadd231ps, which int8x2's kernels issue to fold each sub-block; a
mix that takes longer than the vpdpbusd alone says they share its pipes. AVX2 without VNNI: the
vpmaddubsw + vpmaddwd + vpaddd that stand for one 32-product vpdpbusd there. Prints one JSON object:
billions of instructions a second a core, and the nanoseconds of each mix.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rillet.model import native  # noqa: E402

LOOPS = 20_000_000
CLOBBER = ", ".join(f'"xmm{i}"' for i in range(12))
SOURCE = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define TIME(NAME, BODY) { double t = now(); for (long i = 0; i < LOOPS; i++) __asm__ volatile(BODY ::: CLOBBER); \
    printf("\"%s\": %.4f,\n", NAME, (now() - t) / LOOPS * 1e9); }
int main(void) {
    printf("{\n");
BODIES
    printf("\"loops\": %d}\n", LOOPS);
    return 0;
}
"""
AVX512 = {
    "flags": ["-mavx512f", "-mavx512bw", "-mavx512vnni"],
    "unit": ("vpdpbusd_zmm", 8),
    "bodies": {
        "vpdpbusd_zmm": "".join(f"vpdpbusd %%zmm30, %%zmm31, %%zmm{i}\\n" for i in range(8)),
        "vpdpbusd_zmm+vpmulld": "".join(f"vpdpbusd %%zmm30, %%zmm31, %%zmm{i}\\n" for i in range(8))
                                + "".join(f"vpmulld %%zmm29, %%zmm28, %%zmm{i}\\n" for i in range(8, 12)),
        "vpdpbusd_zmm+vfmadd231ps": "".join(f"vpdpbusd %%zmm30, %%zmm31, %%zmm{i}\\n" for i in range(8))
                                    + "".join(f"vfmadd231ps %%zmm29, %%zmm28, %%zmm{i}\\n" for i in range(8, 12)),
    },
}
AVX2 = {
    "flags": ["-mavx2"],
    "unit": ("maddubs_madd_add_ymm", 4),
    "bodies": {
        "maddubs_madd_add_ymm": "".join(f"vpmaddubsw %%ymm15, %%ymm14, %%ymm{i + 4}\\n"
                                        f"vpmaddwd %%ymm13, %%ymm{i + 4}, %%ymm{i + 4}\\n"
                                        f"vpaddd %%ymm{i + 4}, %%ymm{i}, %%ymm{i}\\n" for i in range(4)),
    },
}


def measure(spec: dict, cores: int) -> list[dict]:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    bodies = "\n".join(f'    TIME("{name}", "{body}")' for name, body in spec["bodies"].items())
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "peak.c", Path(tmp) / "peak"
        source.write_text(SOURCE.replace("BODIES", bodies).replace("LOOPS", str(LOOPS)).replace("CLOBBER", CLOBBER))
        subprocess.run([compiler, "-O2", *spec["flags"], "-o", str(binary), str(source)], check=True)
        runs = [subprocess.Popen(["taskset", "-c", str(core), str(binary)], stdout=subprocess.PIPE, text=True)
                for core in range(cores)]
        return [json.loads(run.communicate()[0]) for run in runs]


def main() -> None:
    isa = native.machine_isa()
    spec = {"avx512": AVX512, "avx2": AVX2}.get(isa or "")
    if platform.machine() != "x86_64" or spec is None or shutil.which("taskset") is None:
        print(json.dumps({"measure": "vnni_peak", "isa": isa, "skipped": "x86 AVX-512 or AVX2 with taskset only"}))
        return
    unit, per_loop = spec["unit"]
    alone = measure(spec, 1)[0]
    together = measure(spec, os.cpu_count() or 1)
    print(json.dumps({
        "measure": "vnni_peak", "isa": isa, "cores": os.cpu_count(),
        "unit": unit, "per_loop": per_loop,
        "g_per_s_one_core": round(per_loop / alone[unit], 3),
        "g_per_s_each_core_all_busy": [round(per_loop / run[unit], 3) for run in together],
        "ns_per_loop_one_core": {name: round(ns, 3) for name, ns in alone.items() if name != "loops"},
    }))


if __name__ == "__main__":
    main()

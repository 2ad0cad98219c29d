"""Which OpenBLAS kernels MinkowskiEngine runs once cmcr_lite loads it.

Debian's OpenBLAS 0.3.21 falls back to its generic "Prescott" kernels on CPUs newer than itself;
``cmcr_lite.models.minkunet`` then names the kernels the CPU can run before it imports
MinkowskiEngine (``runtime.prepare_openblas``), and ``import cmcr_lite`` alone starts nothing. Each
check runs in a child process, because OpenBLAS fixes its kernels when it loads, once per process.
The reference for "still correct" is test_minkunet's dense torch conv3d (torch's own kernels, not
OpenBLAS), run in the child on the chosen kernels."""
import json
import os
import subprocess
import sys
from pathlib import Path

from cmcr_lite.runtime import cpu_flags, detected_openblas_kernels, kernels_for_cpu
from conftest import tests_on_pythonpath

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}

# In the child: MinkowskiEngine through test_minkunet (cmcr_lite.models.minkunet chooses the kernels first), whose check of a 3x3x3 sparse convolution against a dense conv3d then runs on them.
CHILD = r"""
import json, sys
import cmcr_lite  # noqa: F401
import test_minkunet
test_minkunet.test_sparse_conv_equals_dense_conv3d_at_occupied_sites()
from cmcr_lite.runtime import openblas_kernels
print(json.dumps({"kernels": openblas_kernels()}))
"""


def run_child(**env_changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(env_changes)
    env["PYTHONPATH"] = tests_on_pythonpath()
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # the sparse convolution equals the dense conv3d
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_for_cpu_replaces_only_the_generic_fallback():
    assert kernels_for_cpu(AVX512 | {"avx2", "fma"}, "Prescott") == "SkylakeX"
    assert kernels_for_cpu({"avx2", "fma", "avx512f"}, "Prescott") == "Haswell"  # AVX-512 F alone is not enough
    assert kernels_for_cpu({"avx2", "fma"}, "Prescott") == "Haswell"
    assert kernels_for_cpu({"sse3", "ssse3"}, "Prescott") is None  # no better kernels to run
    for recognised in ("Haswell", "SkylakeX", "Zen", "Cooperlake"):
        assert kernels_for_cpu(AVX512 | {"avx2", "fma"}, recognised) is None  # OpenBLAS's own choice stands
    assert kernels_for_cpu(AVX512, None) is None  # no OpenBLAS


def test_loading_minkunet_leaves_no_avx2_cpu_on_the_generic_kernels_and_convolutions_stay_exact():
    detected = detected_openblas_kernels()
    assert detected, "no OpenBLAS found: MinkowskiEngine's CPU backend links libopenblas.so.0"
    child = run_child()
    if {"avx2", "fma"} <= cpu_flags():
        assert child["kernels"] != "Prescott"
    assert child["kernels"] == (kernels_for_cpu(cpu_flags(), detected) or detected)


def test_a_users_openblas_coretype_is_kept():
    child = run_child(OPENBLAS_CORETYPE="Prescott")
    assert child["kernels"] == "Prescott"


def test_the_kernel_benchmark_runs_at_toy_size():
    """`python benchmarks/openblas_kernels.py` (the README's command) at one round of one step."""
    from cmcr_lite.paths import REPO_ROOT

    out = subprocess.run([sys.executable, "-W", "ignore", str(REPO_ROOT / "benchmarks" / "openblas_kernels.py"),
                          "--rounds", "1", "--steps", "1", "--voxels", "2000"], capture_output=True, text=True)
    chosen = kernels_for_cpu(cpu_flags(), "Prescott")
    if chosen is None:
        assert out.returncode != 0 and "neither AVX2 nor AVX-512" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| Prescott |", f"| {chosen} |"))]
    assert len(rows) == 2 and rows[0].endswith("| 1.00 |"), out.stdout
    assert float(rows[1].split("|")[2]) > 0


def test_importing_the_package_starts_no_process_and_loads_nothing_heavy():
    """``import cmcr_lite``: no child process (subprocess and os.fork are made to fail first), and
    neither torch nor MinkowskiEngine nor OpenBLAS loaded."""
    code = """
import os, subprocess, sys
def refuse(*a, **k):
    raise AssertionError("import cmcr_lite started a process")
subprocess.Popen.__init__ = refuse
os.fork = os.posix_spawn = refuse
import cmcr_lite
loaded = [m for m in ("torch", "MinkowskiEngine", "numpy") if m in sys.modules]
assert not loaded, loaded
assert "OPENBLAS_CORETYPE" not in os.environ
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

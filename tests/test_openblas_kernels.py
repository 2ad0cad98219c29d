"""Which OpenBLAS kernels MinkowskiEngine runs once cmcr_lite.models.minkunet is imported.

Debian's OpenBLAS 0.3.21 falls back to its generic "Prescott" kernels on CPUs newer than itself;
importing the trunk then names the kernels the CPU can run (cmcr_lite/models/minkunet.py). Each
check runs in a child process, because OpenBLAS fixes its kernels when it loads, once per process.
The reference for "still correct" is a dense torch conv3d (torch's own kernels, not OpenBLAS)."""
import json
import os
import subprocess
import sys

from cmcr_lite.openblas import cpu_flags, detected_openblas_kernels, kernels_for_cpu

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}

# In the child: import the trunk, then one 3x3x3 sparse convolution against a dense conv3d of the
# same weights on the same grid, at the occupied sites.
CHILD = r"""
import json, torch, torch.nn.functional as F
import cmcr_lite  # noqa: F401  (chooses the kernels before MinkowskiEngine loads)
import MinkowskiEngine as ME
from cmcr_lite.openblas import openblas_kernels
g = torch.Generator().manual_seed(0)
cells = torch.randperm(8 * 8 * 8, generator=g)[:200]
xyz = torch.stack([cells // 64, (cells // 8) % 8, cells % 8], 1).int()
feats = torch.randn(len(xyz), 4, generator=g)
conv = ME.MinkowskiConvolution(4, 5, kernel_size=3, dimension=3, bias=False)
out = conv(ME.SparseTensor(feats, coordinates=torch.cat([torch.zeros(len(xyz), 1).int(), xyz], 1)))
dense = torch.zeros(1, 4, 8, 8, 8)
dense[0, :, xyz[:, 0].long(), xyz[:, 1].long(), xyz[:, 2].long()] = feats.T
# ME's kernel index k = ix + 3 iy + 9 iz (x fastest), weight (27, in, out) -> conv3d (out, in, z, y, x)
w = conv.kernel.detach().reshape(3, 3, 3, 4, 5).permute(4, 3, 2, 1, 0)
ref = F.conv3d(dense, w, padding=1)[0]
c = out.C[:, 1:].long()
err = (out.F - ref[:, c[:, 0], c[:, 1], c[:, 2]].T).abs().max().item()
print(json.dumps({"kernels": openblas_kernels(), "max_error": err}))
"""


def run_child(**env_changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_for_cpu_replaces_only_the_generic_fallback():
    assert kernels_for_cpu(AVX512 | {"avx2", "fma"}, "Prescott") == "SkylakeX"
    assert kernels_for_cpu({"avx2", "fma", "avx512f"}, "Prescott") == "Haswell"  # AVX-512 F alone is not enough
    assert kernels_for_cpu({"avx2", "fma"}, "Prescott") == "Haswell"
    assert kernels_for_cpu({"sse3", "ssse3"}, "Prescott") is None  # no better kernels to run
    for recognised in ("Haswell", "SkylakeX", "Zen", "Cooperlake"):
        assert kernels_for_cpu(AVX512 | {"avx2", "fma"}, recognised) is None  # OpenBLAS's own choice stands
    assert kernels_for_cpu(AVX512, None) is None  # no OpenBLAS


def test_importing_cmcr_lite_leaves_no_avx2_cpu_on_the_generic_kernels_and_convolutions_stay_exact():
    detected = detected_openblas_kernels()
    assert detected, "no OpenBLAS found: MinkowskiEngine's CPU backend links libopenblas.so.0"
    child = run_child()
    if {"avx2", "fma"} <= cpu_flags():
        assert child["kernels"] != "Prescott"
    assert child["kernels"] == (kernels_for_cpu(cpu_flags(), detected) or detected)
    assert child["max_error"] < 1e-5


def test_a_users_openblas_coretype_is_kept():
    child = run_child(OPENBLAS_CORETYPE="Prescott")
    assert child["kernels"] == "Prescott"
    assert child["max_error"] < 1e-5


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

"""The lite MinkUNet's forward + backward under OpenBLAS's generic "Prescott" kernels and under the
kernels cmcr_lite names for this CPU when OpenBLAS falls back to them, side by side in one run.

    python benchmarks/openblas_kernels.py [--rounds 3] [--steps 5] [--voxels 20000]

Why: MinkowskiEngine's CPU convolutions are OpenBLAS calls, and Debian's OpenBLAS 0.3.21 runs its
SSE3 "Prescott" kernels on CPUs newer than itself (see ``cmcr_lite.runtime.prepare_openblas``).
Each timing is one child process of ``benchmarks/minkunet_step.py --configs lite --threads 1`` with
``OPENBLAS_CORETYPE`` set; the rounds alternate the two so that a change in the machine's load
falls on both. Prints each round's median ms/step and the ratio of the medians over the rounds.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from cmcr_lite.runtime import cpu_flags, detected_openblas_kernels, kernels_for_cpu, machine  # noqa: E402

STEP_SCRIPT = Path(__file__).with_name("minkunet_step.py")


def lite_step_ms(coretype: str, steps: int, voxels: int) -> float:
    """Median ms of a lite forward + backward + AdamW step, in a child process on ``coretype``."""
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
    out = subprocess.run([sys.executable, str(STEP_SCRIPT), "--configs", "lite", "--threads", "1",
                          "--steps", str(steps), "--voxels", str(voxels)],
                         env=env, capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+) ms/step median", out)
    if not found:
        raise RuntimeError(f"{STEP_SCRIPT.name} printed no 'ms/step median':\n{out}")
    return float(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--voxels", type=int, default=20000)
    args = ap.parse_args()
    chosen = kernels_for_cpu(cpu_flags(), "Prescott")
    m = machine()
    print(f"Machine: {m['cpu']}, {m['cpu_capability']} kernels in torch; OpenBLAS detects "
          f"{detected_openblas_kernels()!r} by itself here; on that fallback cmcr_lite names {chosen!r}.")
    if chosen is None:
        sys.exit("This CPU has neither AVX2 nor AVX-512: there are no better kernels to compare.")
    times = {"Prescott": [], chosen: []}
    for r in range(args.rounds):
        for coretype in times:
            times[coretype].append(lite_step_ms(coretype, args.steps, args.voxels))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()))
    slow, fast = (statistics.median(times[k]) for k in times)
    print(f"\n| OpenBLAS kernels | lite step, ms (median of {args.rounds} rounds) | vs Prescott |\n|---|---|---|")
    print(f"| Prescott | {slow:.0f} | 1.00 |\n| {chosen} | {fast:.0f} | {fast / slow:.2f} |")


if __name__ == "__main__":
    main()

"""Does this machine round like the one that made a bench job? The first epoch of a supervised-ceiling
job, recomputed here on one thread, against that job's own step losses.

    python -m experiments.ceiling_first_steps [--job experiments/results/bench_runs_ceiling_60ep/supervised_ceiling_seed0.json]
                                             [--dataroot data/nuscenes-bench]

Why: a whole 60-epoch ceiling job takes 12-16 minutes; whether this machine's kernels (torch's, MKL's inside
torch, OpenBLAS's inside MinkowskiEngine) give the committed bits shows within its first epoch of
14 steps, in about 20 seconds on the bench set. The job's ``sizes`` and ``seed`` rebuild its
config; one epoch of it trains on the same learning rate and the same batches as the job's first
epoch (the cosine schedule is 1 at epoch 0 whatever the number of epochs, and each epoch's order is
seeded by (seed, epoch)).
``OPENBLAS_CORETYPE`` set by hand compares OpenBLAS's kernels. Prints each step's loss difference
and the first step that differs.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # as in the bench's workers (experiments.jobs.pool_map)

from cmcr_lite.paths import BENCH_DATAROOT  # noqa: E402
from experiments.plan import BenchPlan, downstream_config  # noqa: E402

# the committed jobs' machine made this one (the bench's ceiling under its earlier recipe); the
# cross-machine runs were compared with it
COMMITTED_JOB = Path(__file__).parent / "results" / "bench_runs_ceiling_60ep" / "supervised_ceiling_seed0.json"


def first_epoch_losses(job: dict, dataroot, version: str) -> list:
    """The step losses of the first epoch of ``job``'s supervised ceiling, recomputed on one thread."""
    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import train_segmentation

    if job.get("row") != "supervised ceiling":
        raise ValueError(f"ceiling_first_steps: the job is a {job.get('row')!r} job, not a 'supervised ceiling' one")
    sizes = job["sizes"]
    cfg = downstream_config("finetune", sizes["pretrain"], job["seed"], epochs=1, **sizes["ceiling"])
    torch.set_num_threads(1)
    _, history = train_segmentation(cfg, NuScenesKeyframes(str(dataroot), version, split="train"), progress=False)
    return history["step_loss"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", type=Path, default=COMMITTED_JOB, help="a supervised-ceiling job's result JSON")
    ap.add_argument("--dataroot", type=Path, default=BENCH_DATAROOT, help="the set the job ran on")
    ap.add_argument("--version", default=BenchPlan().version)
    args = ap.parse_args(argv)
    if not args.job.is_file():
        sys.exit(f"ceiling_first_steps: no job result at {args.job}")
    if not args.dataroot.is_dir():
        sys.exit(f"ceiling_first_steps: no dataset at {args.dataroot} (python -m experiments bench makes "
                 "the bench set, or cmcr_lite.paths.ensure_bench_dataset())")
    from cmcr_lite.runtime import machine, openblas_kernels

    job = json.loads(args.job.read_text())
    here = first_epoch_losses(job, args.dataroot, args.version)
    there = job["history"]["step_loss"][:len(here)]
    m, made = machine(), job.get("machine")
    print(f"Here: {m['cpu']}, {m['cpu_capability']} kernels in torch, OpenBLAS on {openblas_kernels()}.")
    print(f"Job {args.job.name}: made on {made or 'a machine it did not record'}.\n")
    print("| step | loss here | loss in the job | here - job |\n|---|---|---|---|")
    for k, (a, b) in enumerate(zip(here, there)):
        print(f"| {k} | {a:.9g} | {b:.9g} | {a - b:+.2e} |")
    differ = [k for k, (a, b) in enumerate(zip(here, there)) if a != b]
    print(f"\nAll {len(here)} steps equal, bit for bit." if not differ else
          f"\nThe first {differ[0]} of {len(here)} steps are equal; step {differ[0]} and "
          f"{len(differ) - 1} later ones differ.")
    return {"here": here, "job": there, "first_difference": differ[0] if differ else None}


if __name__ == "__main__":
    main()

"""The bench's converged pretrainings that the notebooks show: PPKT, CMCR and occupancy only, seed 0.

    python -m experiments trunks     # write results/trunks/ from the bench's checkpoints (pretrains the missing)

The notebooks' own pretrainings are a few epochs on a 5-scene set: they show the mechanics. What a
method *learns* is the bench's 20-epoch trunks, so notebooks 02, 06 and 07 load these when they are
there (``trunk_file``). Each ``results/trunks/<row>_seed0.pt`` holds the pretraining model's weights
(the 3D trunk and every head, no optimizer state) under ``"model"``, its ``PretrainConfig`` as a dict
under ``"config"``, and its loss history. The export checks that this history equals the committed
bench job's (``results/bench_runs/``) to the last bit: the file is the trunk the bench read out, or
the command stops (another kind of CPU makes other bits; ``docs/results.md``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from cmcr_lite.runtime import atomic_path
from experiments import RESULTS_DIR
from experiments.jobs import prepare_data, run_job
from experiments.plan import BenchPlan, job_result, pretrain_checkpoint, row_slug
from experiments.wording import load

TRUNKS_DIR = RESULTS_DIR / "trunks"
ROWS = ("PPKT", "CMCR", "occupancy only")
SEED = 0


def trunk_file(row: str, seed: int = SEED) -> Path:
    """Where the committed converged pretraining of ``row`` lies (it may be absent in a trimmed copy)."""
    return TRUNKS_DIR / f"{row_slug(row)}_seed{seed}.pt"


def export(row: str, plan: BenchPlan | None = None, seed: int = SEED, out: Path = TRUNKS_DIR) -> Path:
    """Write ``row``'s converged pretraining from the bench's checkpoint, pretraining it first (one
    thread, minutes) when the checkpoint is missing; stop if its losses are not the committed job's."""
    plan = plan or BenchPlan()
    committed = load(job_result(RESULTS_DIR / "bench_runs", row, seed))
    ckpt = pretrain_checkpoint(plan, row, seed)
    if not ckpt.is_file():
        with tempfile.TemporaryDirectory() as runs:  # never rewrite the committed job's result
            run_job(plan.to_dict(), prepare_data(plan), row, seed, runs, need_checkpoint=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if state["history"] != committed["history"]:
        raise SystemExit(f"trunks: {ckpt}'s losses differ from the committed job's "
                         f"(results/bench_runs/{row_slug(row)}_seed{seed}.json); this machine makes other bits "
                         f"(committed on {committed.get('machine') or 'a machine not recorded'})")
    path = out / trunk_file(row, seed).name
    with atomic_path(path) as tmp:
        torch.save({"model": state["model"], "config": state["config"], "history": state["history"],
                    "job": f"{row_slug(row)}_seed{seed}"}, tmp)
    return path


def sizes_note() -> str:
    """experiments/README.md: which trunks are committed, and how big."""
    files = [trunk_file(row) for row in ROWS]
    return (", ".join(f"`{f.name}` {f.stat().st_size / 1e6:.1f} MB" for f in files)
            + f"; {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in all.")


def main(argv=None) -> list:
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments trunks", description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    a = p.parse_args(argv)
    paths = [export(row) for row in a.rows]
    for path in paths:
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return paths

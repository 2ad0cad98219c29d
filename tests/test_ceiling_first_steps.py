"""experiments/ceiling_first_steps.py: the first epoch of a supervised-ceiling job, recomputed, equals
the job's own step losses on the machine that ran it (and the comparison sees a changed seed).
The job and the check each run in a child process on one OpenMP thread, as the bench's workers do."""
import json
import os
import subprocess
import sys

from cmcr_lite.paths import REPO_ROOT
from conftest import VERSION

SCRIPT = ["-m", "experiments.ceiling_first_steps"]
TINY = {"backbone": {"layers": [1] * 8, "planes": [8] * 8, "init_dim": 8}}

# a two-epoch supervised ceiling at toy size, as the bench runs it (experiments.jobs.run_job)
JOB = r"""
import sys
from experiments.jobs import run_job
from experiments.plan import BenchPlan
plan = BenchPlan.smoke(seeds=(0,), aa_seeds=(100,), ceiling_epochs=2, workers=1, dataroot=sys.argv[1],
                       output_root=sys.argv[2], pretrain=%r)
run_job(plan.to_dict(), sys.argv[1], "supervised ceiling", 0, sys.argv[2])
""" % (TINY,)


def run(args: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-W", "ignore", *map(str, args)], env=env, capture_output=True, text=True,
                          cwd=REPO_ROOT)


def test_first_epoch_of_a_ceiling_job_is_recomputed_bit_for_bit(tmp_path, synthetic_root):
    made = run(["-c", JOB, synthetic_root, tmp_path])
    assert made.returncode == 0, made.stderr
    job_path = tmp_path / "supervised_ceiling_seed0.json"
    job = json.loads(job_path.read_text())
    per_epoch = len(job["history"]["step_loss"]) // 2
    out = run([*SCRIPT, "--job", job_path, "--dataroot", synthetic_root, "--version", VERSION])
    assert out.returncode == 0, out.stderr
    assert f"All {per_epoch} steps equal, bit for bit." in out.stdout, out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 0 |")]
    assert rows and rows[0].endswith("| +0.00e+00 |"), out.stdout

    job["seed"] = 1  # another seed: other initial weights, so the first step already differs
    other = tmp_path / "seed1.json"
    other.write_text(json.dumps(job))
    out = run([*SCRIPT, "--job", other, "--dataroot", synthetic_root, "--version", VERSION])
    assert out.returncode == 0, out.stderr
    assert f"The first 0 of {per_epoch} steps are equal; step 0" in out.stdout, out.stdout


def test_it_names_a_missing_job_or_dataset(tmp_path):
    out = run([*SCRIPT, "--job", tmp_path / "none.json"])
    assert out.returncode != 0 and "no job result at" in out.stderr and "none.json" in out.stderr
    job = tmp_path / "job.json"
    job.write_text("{}")
    out = run([*SCRIPT, "--job", job, "--dataroot", tmp_path / "nowhere"])
    assert out.returncode != 0 and "no dataset at" in out.stderr and "nowhere" in out.stderr

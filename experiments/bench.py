"""The benchmark that can decide the paper's claim on the embedded world, with its ceilings and controls.

    python -m experiments bench            # every row x 5 seeds (PPKT x 8, A/A x 8) on the bench set
    python -m experiments bench --smoke    # the same pipeline at toy size, minutes

Question: does contrastive distillation (PPKT) miss what only the LiDAR sees, and do CMCR's
reconstruction tasks bring it back? The bench set (``synthetic.PRESETS["bench"]``) has twins of
classes that only the LiDAR (geometry twins) or only the cameras (appearance twins) tell apart. The
rows, all on the same seeds so that differences are paired:

* ``random init``: linear probe of an untrained trunk (what the architecture alone gives);
* ``supervised ceiling``: the same trunk trained from scratch on every label; it shows the twins
  *can* be learned from the LiDAR, so a pretraining that does not separate them has missed them;
* ``image-only reference``: the frozen 2D teacher's features at each point's pixel, probed
  linearly; it shows what the teacher can hand down (appearance twins yes, geometry twins no);
* ``PPKT`` and ``PPKT (A/A)``: the same method on two disjoint seed sets of 8 (PPKT's first five are
  every other row's seeds), the noise floor;
* ``occupancy only``: LiDAR-only self-supervision (CMCR with every other term off, ALSO-style), the
  positive control for "a reconstruction target teaches geometry";
* ``CMCR``: the full method.

Every trunk is read out the same way (:func:`linear_readout`): a linear softmax probe of the frozen
trunk's standardised features (16 classes), fitted on the train split to the optimum of its convex
objective, scored per point on val; plus two-class probes per twin pair on the trunk's features,
linear (ridge) and a small MLP. The bench does not use the paper's SGD probe (CE + Lovász, a fixed
number of epochs): on the embedded set its result moves by several mIoU points with the probe's own
seed, which would swamp the differences between trunks that the bench exists to measure. The
downstream CLI keeps the paper's probe. Jobs run one per core on one thread
each (bit-identical when repeated) and each writes its result atomically to ``experiments/results/bench_runs/``, so a rerun skips what
is done. Output: ``experiments/results/bench.{json,md,png}``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from experiments import RESULTS_DIR
from experiments.jobs import bench_dataroot, job_seconds, pool_map, prepare_data, run_job, write_results
from experiments.plan import BenchPlan, bench_jobs, job_result
from experiments.report import bench_figure, load_report, markdown_report, summarize


def same_plan(saved: dict, plan: BenchPlan) -> bool:
    """Whether a report's plan is ``plan``, where its results were written aside (another output
    root or data root changes where the jobs ran, not what they computed)."""
    here = json.loads(json.dumps(plan.to_dict()))
    saved = {**BenchPlan().to_dict(), **saved}  # fields added since take their defaults
    return {k: v for k, v in saved.items() if k not in ("output_root", "dataroot")} == {
        k: v for k, v in here.items() if k not in ("output_root", "dataroot")}


def bench(plan: BenchPlan | None = None, progress: bool = True, results_dir: Path | None = None) -> dict:
    """Run (or resume) every job of ``plan`` and write ``<results_dir>/<results_name>.{json,md,png}``."""
    from cmcr_lite.runtime import machine

    plan = plan or BenchPlan()
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    jobs = bench_jobs(plan)
    runs_dir = str(results_dir / f"{plan.results_name}_runs")
    # a call that finds no job result runs the whole bench, so its wall time is the budget's measure
    from_scratch = not any(job_result(runs_dir, row, seed).is_file() for row, seed in jobs)
    data_made = not bench_dataroot(plan).exists()
    previous = load_report(plan.results_name, results_dir)
    root = prepare_data(plan, progress)
    results = pool_map(run_job, [(plan.to_dict(), root, row, seed, runs_dir) for row, seed in jobs], plan.workers,
                        "bench jobs", progress)
    minutes_this_call = (time.time() - t0) / 60
    minutes = sum(job_seconds(r) for r in results) / 60  # every job's compute, whenever it ran
    if from_scratch:
        wall = {"minutes": minutes_this_call, "workers": plan.workers, "data_made": data_made, "machine": machine()}
    else:  # a resumed call keeps the from-scratch measure of the same plan, if there is one
        wall = previous.get("wall_from_scratch") if previous and same_plan(previous["plan"], plan) else None
    summary = summarize(results, plan)
    report = {"plan": plan.to_dict(), "minutes_this_call": minutes_this_call, "job_minutes": minutes,
              "wall_from_scratch": wall, "summary": summary, "runs": results}
    write_results(results_dir, plan.results_name, report, markdown_report(summary, plan, minutes, wall))
    bench_figure(results, summary, results_dir / f"{plan.results_name}.png")
    return report

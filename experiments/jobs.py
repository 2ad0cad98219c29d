"""One bench job: pretrain (or resume) a row's trunk on one seed, read it out, write its result
atomically; and the pool that runs jobs one per core on one thread each (bit-identical when
repeated), so a rerun skips what is done."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cmcr_lite.analysis.readout import frozen_trunk, image_reference, linear_readout
from experiments.plan import (
    ROWS,
    BenchPlan,
    downstream_config,
    is_pretrained,
    job_result,
    pretrain_checkpoint,
    pretrain_config,
    row_slug,
)

PROBE = "softmax, L-BFGS to convergence"  # the linear probe's name in each result's sizes: a change re-reads


def _pretrained_steps(checkpoint: Path) -> int:
    """Optimizer steps already in a pretraining checkpoint (0 when there is none)."""
    import torch

    if not checkpoint.is_file():
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return sum(h["steps"] for h in state.get("history", []))


def _resumable(cfg, checkpoint: Path, row: str, seed: int) -> bool:
    """Whether the pretraining can continue from ``checkpoint``. One made with other settings (say,
    another epoch count under the cosine schedule) cannot: the job then pretrains from scratch,
    overwriting it, and says so."""
    import torch

    from cmcr_lite.pretrain import PretrainConfig, resume_ignores
    from cmcr_lite.runtime import check_resumable

    if not checkpoint.is_file():
        return False
    saved = PretrainConfig.from_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["config"])
    try:
        check_resumable(saved, cfg, resume_ignores(cfg), checkpoint)
    except ValueError as why:
        print(f"bench: {row}, seed {seed}: {why}; pretraining from scratch", flush=True)
        return False
    return True


def _measured_step_time(previous: dict):
    """The pretraining seconds per step a previous result measured, or None. Some early results hold
    the time of a call that trained no step (below 0.05 s; a lite step on one CPU thread takes 0.3 s
    or more), which is no measurement."""
    value = previous.get("pretrain_seconds_per_step")
    return value if value is not None and value >= 0.05 else None


def run_job(plan_dict: dict, root: str, row: str, seed: int, runs_dir: str, need_checkpoint: bool = False) -> dict:
    """Run one (row, seed) job on one thread; reuse its result when it is there. The result goes to
    ``<runs_dir>/<row>_seed<k>.json`` (small, committed with the summary, so a later session resumes
    from it); checkpoints stay under ``plan.output_root`` (not committed). ``need_checkpoint``: a
    pretrained row's result is reused only when its checkpoint is there too (label efficiency
    fine-tunes it; on a fresh clone the committed results have none, so it is pretrained again)."""
    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import train_segmentation
    from cmcr_lite.runtime import atomic_path, machine

    plan = BenchPlan.from_dict(plan_dict)
    run_dir = Path(plan.output_root) / f"{row_slug(row)}_seed{seed}"
    done = job_result(runs_dir, row, seed)
    # a result is reused when it was made with this plan's sizes and probe; with more epochs the
    # pretraining resumes from its checkpoint and continues (the loop's resume ignores ``epochs``)
    sizes = {"pretrain": plan.pretrain}  # the trunk's architecture, read by every row
    if is_pretrained(row):
        sizes.update(pretrain_epochs=plan.pretrain_epochs, pretrain_schedule=plan.pretrain_schedule)
    elif row == "supervised ceiling":
        sizes.update(ceiling_epochs=plan.ceiling_epochs, ceiling=plan.ceiling)
    if row != "supervised ceiling":
        sizes["probe"] = PROBE if plan.batchnorm == "running" else f"{PROBE}, BatchNorm {plan.batchnorm}"
    previous = json.loads(done.read_text()) if done.is_file() else {}
    ckpt = pretrain_checkpoint(plan, row, seed)
    missing = need_checkpoint and is_pretrained(row) and not ckpt.is_file()
    if previous.get("sizes") == sizes and not missing:  # results without sizes (the first jobs) are read out again
        return previous
    torch.set_num_threads(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = NuScenesKeyframes(root, plan.version, split="train")
    val = NuScenesKeyframes(root, plan.version, split="val", nusc=train.nusc)
    t0 = time.time()
    # the CPU it ran on: its step times, and the last bits of its floats, depend on it (runtime.machine)
    result = {"row": row, "seed": seed, "sizes": sizes, "machine": machine()}
    from cmcr_lite.pretrain import pretrain

    lite = lambda mode, **kw: downstream_config(mode, plan.pretrain, seed, **kw)  # noqa: E731
    recalibrate = train if plan.batchnorm == "recalibrated" else None
    if is_pretrained(row):
        cfg = pretrain_config(plan, row, seed, root)
        resume = _resumable(cfg, ckpt, row, seed)
        steps_before = _pretrained_steps(ckpt) if resume else 0
        out = pretrain(cfg, resume=resume, progress=False, keyframes=train)
        new_steps = sum(h["steps"] for h in out["history"]) - steps_before
        result["history"] = out["history"]
        # seconds per step of the steps run in this call; a re-read of a finished pretraining keeps
        # the time measured when it ran (None when that was never measured)
        result["pretrain_seconds_per_step"] = ((time.time() - t0) / new_steps if new_steps > 0
                                               else _measured_step_time(previous))
        t_readout = time.time()
        probe_cfg = lite("linear_probe")
        result.update(linear_readout(frozen_trunk(probe_cfg, out["checkpoint"], seed, recalibrate), train, val,
                                     probe_cfg, seed))
        result["readout_seconds"] = time.time() - t_readout
    elif row == "random init":
        probe_cfg = lite("linear_probe")
        result.update(linear_readout(frozen_trunk(probe_cfg, None, seed, recalibrate), train, val, probe_cfg, seed))
    elif row == "supervised ceiling":
        cfg = lite("finetune", epochs=plan.ceiling_epochs, **plan.ceiling)
        model, history = train_segmentation(cfg, train, pretrained=None, progress=False)
        result["history"] = history
        result.update(linear_readout(model, train, val, cfg, seed, own_head=True))
    elif row == "image-only reference":
        result.update(image_reference(root, plan.version, train, val, seed))
    else:
        raise ValueError(f"bench: unknown row {row!r}; rows are {ROWS}")
    result["seconds"] = time.time() - t0
    # the confusion matrix stays in the result (17 x 17 counts), so summaries can be recomputed
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def job_seconds(result: dict) -> float:
    """A job's compute in seconds, whatever part of it an earlier call ran: a pretrained row's every
    step at its measured seconds per step, plus its read-out (``readout_seconds``). Results made
    before the read-out was timed: their own time, plus the pretraining's when a later call only
    read the finished pretraining out again (``seconds`` then shorter than the pretraining itself)."""
    seconds = result.get("seconds", 0.0)
    per_step = result.get("pretrain_seconds_per_step")
    if per_step is not None and "history" in result and isinstance(result["history"], list):
        pretraining = per_step * sum(h["steps"] for h in result["history"])
        if "readout_seconds" in result:  # a pretraining resumed mid-run has ``seconds`` of its last part only
            return pretraining + result["readout_seconds"]
        if seconds < pretraining:
            seconds += pretraining
    return seconds


def bench_dataroot(plan: BenchPlan) -> Path:
    """Where the plan's dataset lives (or will be generated): ``plan.dataroot``, else the default
    root of ``plan.dataset``."""
    from cmcr_lite.paths import BENCH_DATAROOT, EMBEDDED_DATAROOT

    if plan.dataset not in ("bench", "notebook"):
        raise ValueError(f"BenchPlan: dataset must be 'bench' or 'notebook', got {plan.dataset!r}")
    return Path(plan.dataroot) if plan.dataroot else BENCH_DATAROOT if plan.dataset == "bench" else EMBEDDED_DATAROOT


def prepare_data(plan: BenchPlan, progress: bool = True) -> str:
    """The root of the plan's dataset (generated if missing) with its small teacher trained once, in
    this process, before worker processes share it."""
    from cmcr_lite.paths import ensure_bench_dataset, ensure_embedded_dataset
    from cmcr_lite.teacher import load_or_train_teacher

    where = bench_dataroot(plan)
    root = str(ensure_bench_dataset(where, workers=plan.workers) if plan.dataset == "bench"
               else ensure_embedded_dataset(where))
    load_or_train_teacher(root, plan.version, progress=progress)
    return root


def bench_trunks(plan: BenchPlan, pretrainings, seeds, results_dir: Path, progress: bool = True) -> str:
    """The root of the bench plan's dataset, with the trunks of ``pretrainings`` (but random init) on
    ``seeds`` pretrained by the bench's own jobs (results in ``<results_dir>/<bench name>_runs``; done
    jobs and kept checkpoints are reused), for the experiments that fine-tune the bench's trunks."""
    root = prepare_data(plan, progress)
    bench_runs = str(Path(results_dir) / f"{plan.results_name}_runs")
    pre = [(plan.to_dict(), root, row, s, bench_runs, True) for row in pretrainings if row != "random init"
           for s in seeds]
    pool_map(run_job, pre, plan.workers, "pretrainings (bench jobs)", progress)  # the trunks, probed as in the bench
    return root


def write_results(results_dir: Path, name: str, report: dict, markdown: str) -> None:
    """``<results_dir>/<name>.json`` (the report) and ``<name>.md``, each written atomically."""
    from cmcr_lite.runtime import atomic_path

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(results_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(results_dir / f"{name}.md") as tmp:
        tmp.write_text(markdown)


def pool_map(fn, jobs: list, workers: int, desc: str, progress: bool) -> list:
    """``[fn(*job) for job in jobs]`` in ``workers`` spawned processes on one OpenMP thread each."""
    from tqdm.auto import tqdm

    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    out = []
    try:
        with tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress) as bar:
            if workers > 1 and len(jobs) > 1:
                import multiprocessing

                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for p in [pool.apply_async(fn, job) for job in jobs]:
                        out.append(p.get())
                        bar.update(1)
            else:
                for job in jobs:
                    out.append(fn(*job))
                    bar.update(1)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return out

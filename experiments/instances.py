"""Panoptic segmentation and 3D detection on the bench's trunks: random init vs PPKT vs CMCR, fine-tuned
at a small and a full label fraction, over seeds, scored by the devkit's evaluators.

    python -m experiments instances            # 3 pretrainings x 2 fractions x 3 seeds
    python -m experiments instances --smoke    # toy size, minutes

Each job fine-tunes :class:`cmcr_lite.downstream.instances.InstanceModel` (trunk + semantic, offset and
BEV heads, one joint objective) for the same number of optimizer steps at every fraction, writes the
devkit's result files for the val split and keeps their scores (``<results_name>_runs/*.json``: a
finished job is never redone). The table reports the devkit's metrics over the classes present in
the synthetic set (PQ over 12 classes, mAP and NDS over 7; the devkit's own means over all 16 / 10
classes are in the JSON).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from experiments import RESULTS_DIR
from experiments.jobs import bench_trunks, pool_map, write_results
from experiments.plan import BenchPlan, downstream_config, pretrain_checkpoint, row_slug
from experiments.stats import sample_std
from experiments.wording import fraction_label

METRICS = (("PQ", "panoptic", "PQ_present"), ("mAP", "detection", "mean_ap_present"),
           ("NDS", "detection", "nd_score_present"), ("mIoU", "panoptic", "mIoU_present"))


@dataclass
class InstancesPlan:
    """Fine-tune each pretraining for panoptic segmentation + detection at each label fraction, over
    seeds. The trunks are the bench's (a bench run's checkpoints are reused; missing ones are pretrained
    by the bench's own jobs first)."""
    seeds: tuple = (0, 1, 2)
    fractions: tuple = (1 / 18, 1.0)   # 1 of the bench's 18 training scenes (SLidR's rule), and all
    pretrainings: tuple = ("random init", "PPKT", "CMCR")
    finetune_steps: int = 300          # optimizer steps at every fraction (epochs = steps / steps per epoch)
    bench: BenchPlan = field(default_factory=BenchPlan)
    results_name: str = "instances"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def job_file(runs_dir, pretraining: str, fraction: float, seed: int) -> Path:
    """Where the job of ``pretraining`` at ``fraction`` on ``seed`` keeps its result."""
    return Path(runs_dir) / f"{row_slug(pretraining)}_f{fraction:.4f}_seed{seed}.json"


def _instances_job(plan_dict: dict, root: str, pretraining: str, fraction: float, seed: int, runs_dir: str) -> dict:
    import math

    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import keyframe_indices_for_fraction
    from cmcr_lite.downstream.instances import InstanceConfig, evaluate_instances, train_instances
    from cmcr_lite.runtime import atomic_path, machine

    done = job_file(runs_dir, pretraining, fraction, seed)
    if done.is_file():
        return json.loads(done.read_text())
    torch.set_num_threads(1)
    bench_plan = BenchPlan.from_dict(plan_dict["bench"])
    train = NuScenesKeyframes(root, bench_plan.version, split="train")
    val = NuScenesKeyframes(root, bench_plan.version, split="val", nusc=train.nusc)
    checkpoint = None
    if pretraining != "random init":
        checkpoint = pretrain_checkpoint(bench_plan, pretraining, seed)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"instances: no {pretraining} checkpoint at {checkpoint} (its bench job "
                                    "pretrains it: run instances(), which runs those jobs first)")
    indices = keyframe_indices_for_fraction(train, fraction)
    epochs = max(1, math.ceil(plan_dict["finetune_steps"] / max(1, len(indices) // 2)))  # batch 2
    seg = downstream_config("finetune", bench_plan.pretrain, seed, label_fraction=fraction, epochs=epochs)
    cfg = InstanceConfig(downstream=seg)
    t0 = time.time()
    model, history = train_instances(cfg, train, None if checkpoint is None else str(checkpoint), progress=False,
                                     indices=indices)
    with _scratch(runs_dir) as out:
        scores = evaluate_instances(model, val, cfg, out, progress=False)
    result = {"pretraining": pretraining, "fraction": fraction, "seed": seed, "train_scans": len(indices),
              "epochs": epochs, "config": cfg.to_dict(), "history": {k: history[k] for k in ("loss", "terms")},
              "eval_set": scores["eval_set"], "panoptic": _jsonable(scores["panoptic"]),
              "detection": _jsonable(scores["detection"]), "seconds": time.time() - t0, "machine": machine()}
    result["panoptic"]["all"]["mIoU_present"] = float(np.mean([result["panoptic"][c]["IoU"]
                                                              for c in result["panoptic"]["present"]]))
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def _scratch(runs_dir: str):
    import tempfile

    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=runs_dir, prefix=".eval-")


def _jsonable(d):
    return json.loads(json.dumps(d, default=float))


def metric(run: dict, name: str) -> float:
    """One of :data:`METRICS` (PQ, mAP, NDS, mIoU over the classes present) of a job's result."""
    _, task, key = next(m for m in METRICS if m[0] == name)
    return float(run[task]["all"][key] if task == "panoptic" else run[task][key])


def instances_summary(runs: list) -> dict:
    """{pretraining: {"%.4f" fraction: {metric: {"mean", "std", "values", "seeds"}}}}."""
    table = {}
    for r in runs:
        cell = table.setdefault(r["pretraining"], {}).setdefault(f"{r['fraction']:.4f}", {})
        for name, _, _ in METRICS:
            m = cell.setdefault(name, {"values": [], "seeds": []})
            m["values"].append(metric(r, name)), m["seeds"].append(r["seed"])
    for cells in table.values():
        for cell in cells.values():
            for m in cell.values():
                m["mean"], m["std"] = float(np.mean(m["values"])), sample_std(m["values"])
    return table


def instances_table(plan: InstancesPlan, runs: list) -> list:
    """The results table (markdown lines): one row per pretraining, PQ / mAP / NDS per fraction."""
    table = instances_summary(runs)
    scans = {f"{r['fraction']:.4f}": r["train_scans"] for r in runs}
    head = " | ".join(f"{m} {fraction_label(f)} ({scans[f'{f:.4f}']} scans)"
                      for f in plan.fractions for m in ("PQ", "mAP", "NDS"))
    lines = [f"| pretraining | {head} |", "|---|" + "---|" * (3 * len(plan.fractions))]
    for p in plan.pretrainings:
        cells = [table[p][f"{f:.4f}"][m] for f in plan.fractions for m in ("PQ", "mAP", "NDS")]
        lines.append(f"| {p} | " + " | ".join(f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" for c in cells) + " |")
    return lines


def instances(plan: InstancesPlan | None = None, progress: bool = True, results_dir: Path | None = None) -> dict:
    """Pretrain (or reuse the bench's trunks), then fine-tune and score every pretraining x fraction x
    seed; write ``<results_dir>/<results_name>.{json,md}``. Resumable: every job's result is kept."""
    plan = plan or InstancesPlan()
    b = plan.bench
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    root = bench_trunks(b, plan.pretrainings, plan.seeds, results_dir, progress)
    runs_dir = str(results_dir / f"{plan.results_name}_runs")
    jobs = [(plan.to_dict(), root, p, f, s, runs_dir) for p in plan.pretrainings for f in plan.fractions
            for s in plan.seeds]
    reused = sum(job_file(runs_dir, p, f, s).is_file() for _, _, p, f, s, _ in jobs)
    results = pool_map(_instances_job, jobs, b.workers, "panoptic + detection jobs", progress)
    lines = [f"# Panoptic segmentation and detection: mean ± sample std over seeds {list(plan.seeds)} (%)", "",
             f"Joint fine-tuning ({plan.finetune_steps} optimizer steps at every fraction) of the trunk with a "
             "semantic, an offset and a BEV detection head; scored on val by the nuScenes devkit's panoptic and "
             "detection evaluators, means over the classes present in the synthetic set (PQ: 12 classes; "
             "mAP and NDS: 7).", ""] + instances_table(plan, results)
    minutes = (time.time() - t0) / 60
    previous = results_dir / f"{plan.results_name}.json"
    # the wall time of the whole command, kept from the call that ran every job (a resumed call is shorter)
    wall = minutes if reused == 0 else (json.loads(previous.read_text()).get("wall_minutes") if previous.is_file() else None)
    report = {"plan": plan.to_dict(), "minutes_this_call": minutes, "wall_minutes": wall,
              "job_minutes": sum(r["seconds"] for r in results) / 60, "summary": instances_summary(results),
              "runs": results}
    write_results(results_dir, plan.results_name, report, "\n".join(lines) + "\n")
    return report


def paired_differences(runs: list, a: str, b: str, fraction: float, name: str) -> dict:
    """``a`` − ``b`` on metric ``name`` at ``fraction``, paired by seed (the same seed fine-tunes both
    and, for pretrained rows, pretrained both): {"mean", "low", "high", "n"} (fractions; a 95 % t interval)."""
    from experiments.stats import t_interval

    def by_seed(p):
        return {r["seed"]: metric(r, name) for r in runs if r["pretraining"] == p and abs(r["fraction"] - fraction) < 1e-9}

    va, vb = by_seed(a), by_seed(b)
    seeds = sorted(set(va) & set(vb))
    mean, low, high = t_interval([va[s] - vb[s] for s in seeds])
    return {"mean": mean, "low": low, "high": high, "n": len(seeds)}


def paired_differences_note(report: dict) -> str:
    """docs/results.md's reading of the experiment: CMCR − PPKT and PPKT − random init per metric and
    fraction, paired by seed, in points with 95 % intervals (numbers only: what they show is for the reader)."""
    from experiments.wording import interval

    runs, fractions = report["runs"], report["plan"]["fractions"]
    lines = ["| difference (points, 95 % interval over paired seeds) | fraction | PQ | mAP | NDS |", "|---|---|---|---|---|"]
    for a, b in (("CMCR", "PPKT"), ("PPKT", "random init"), ("CMCR", "random init")):
        for f in fractions:
            cells = [interval(paired_differences(runs, a, b, f, m)) for m in ("PQ", "mAP", "NDS")]
            lines.append(f"| {a} − {b} | {fraction_label(f)} | " + " | ".join(cells) + " |")
    minutes = report.get("wall_minutes")
    tail = (f"\n\n{report['job_minutes']:.0f} job-minutes for the {len(runs)} runs"
            + (f" ({minutes:.0f} min of wall time on {report['plan']['bench']['workers']} workers)." if minutes else "."))
    return "\n".join(lines) + tail


THINGS = ("car", "truck", "bus", "construction_vehicle", "pedestrian", "traffic_cone", "barrier")


def per_class_note(report: dict) -> str:
    """docs/results.md: what the means hide: the devkit's AP per detection class (mean over its four
    distance thresholds) and PQ over things and over stuff, per pretraining and fraction (means over seeds)."""
    from experiments.wording import premise

    runs, rows = report["runs"], []
    lines = ["| pretraining | fraction | PQ things | PQ stuff | " + " | ".join(f"AP {c}" for c in THINGS) + " |",
             "|---|---|---|---|" + "---|" * len(THINGS)]
    for p in report["plan"]["pretrainings"]:
        for f in report["plan"]["fractions"]:
            cell = [r for r in runs if r["pretraining"] == p and abs(r["fraction"] - f) < 1e-9]
            present = cell[0]["panoptic"]["present"]
            things = [c for c in present if c in THINGS]
            stuff = [c for c in present if c not in THINGS]
            pq = [np.mean([[r["panoptic"][c]["PQ"] for c in group] for r in cell]) for group in (things, stuff)]
            ap = [np.mean([np.mean(list(r["detection"]["label_aps"][c].values())) for r in cell]) for c in THINGS]
            lines.append(f"| {p} | {fraction_label(f)} | "
                         + " | ".join(f"{100 * v:.0f}" for v in [*pq, *ap]) + " |")
            rows.append((pq, dict(zip(THINGS, ap))))
    vehicles = ("car", "truck", "bus", "construction_vehicle")
    first = float(np.mean([r["history"]["terms"][0]["offset"] for r in runs]))
    last = float(np.mean([r["history"]["terms"][-1]["offset"] for r in runs]))
    premise(all(max(ap[c] for c in vehicles) < 0.05 for _, ap in rows) and all(pq[0] < pq[1] for pq, _ in rows),
            "the four vehicle classes stay below 5 AP for every trunk, and things below stuff in PQ",
            "experiments/instances.py (per_class_note)")
    return "\n".join(lines) + (
        "\n\nCones, barriers and pedestrians carry the mAP; the four vehicle classes stay below 5 AP for every "
        "trunk at this step budget, and things score below stuff in PQ (over "
        f"{report['plan']['finetune_steps']} steps the offset loss, L1 in metres, falls only from {first:.1f} to "
        f"{last:.1f} on average over the runs). Few vehicles per scene (two of each class), their centres in "
        "empty BEV cells (the LiDAR sees one face) and the twin classes (a right box with its twin's class misses "
        "twice) are the likely causes, not yet tested; a class-agnostic vehicle AP and longer fine-tunes would tell.")

"""Label efficiency: fine-tune and linear-probe each pretraining (the bench's trunks) at several label
fractions, over seeds.

    python -m experiments label-efficiency            # random init, PPKT, CMCR x 4 fractions x 3 seeds
    python -m experiments label-efficiency --smoke    # toy size, minutes
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cmcr_lite.analysis.readout import frozen_trunk, linear_readout
from cmcr_lite.metrics import summarize_confusion
from experiments import RESULTS_DIR
from experiments.jobs import PROBE, bench_trunks, pool_map, write_results
from experiments.plan import BenchPlan, downstream_config, pretrain_checkpoint, row_slug
from experiments.stats import sample_std

# On the bench set's 18 training scenes SLidR's rule keeps 1, 3, 9 and 18 scenes at these fractions
# (the smallest fraction that keeps a scene is 1/18; nuScenes' 1 % would keep none).
BENCH_FRACTIONS = (1 / 18, 1 / 6, 1 / 2, 1.0)
PAPER_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


@dataclass
class LabelEfficiencyPlan:
    """Fine-tune and linear-probe each pretraining at each label fraction, over seeds. The pretrained
    trunks are the bench's (same configs and folders: a bench run's checkpoints are reused)."""
    seeds: tuple = (0, 1, 2)
    fractions: tuple = BENCH_FRACTIONS
    pretrainings: tuple = ("random init", "PPKT", "CMCR")
    modes: tuple = ("finetune", "linear_probe")
    finetune_steps: int = 150        # fine-tuning epochs = ceil(steps / steps per epoch): the same
    #                                  number of optimizer steps at every fraction (few labels, more epochs);
    #                                  150 lite steps (300 scans seen) keep the 72 jobs near 45 min on 2 cores
    bench: BenchPlan = field(default_factory=BenchPlan)
    results_name: str = "label_efficiency"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def _le_job(plan_dict: dict, root: str, pretraining: str, fraction: float, mode: str, seed: int, runs_dir: str):
    import math

    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import evaluate, keyframe_indices_for_fraction, train_segmentation
    from cmcr_lite.runtime import atomic_path, machine

    bench_plan = BenchPlan.from_dict(plan_dict["bench"])
    done = Path(runs_dir) / f"{row_slug(pretraining)}_{mode}_f{fraction:.4f}_seed{seed}.json"
    probe = PROBE if mode == "linear_probe" else None
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("probe") == probe:  # a linear probe's result made by another probe is redone
            return previous
    torch.set_num_threads(1)
    train = NuScenesKeyframes(root, bench_plan.version, split="train")
    val = NuScenesKeyframes(root, bench_plan.version, split="val", nusc=train.nusc)
    checkpoint = None
    if pretraining != "random init":
        checkpoint = pretrain_checkpoint(bench_plan, pretraining, seed)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"label efficiency: no {pretraining} checkpoint at {checkpoint} (its bench job "
                                    "pretrains it: run label_efficiency(), which runs those jobs first)")
    extra = {}
    if mode == "finetune":
        scans = len(keyframe_indices_for_fraction(train, fraction))
        steps_per_epoch = max(1, scans // 2)  # the lite batch of 2, last partial batch dropped
        extra["epochs"] = max(1, math.ceil(plan_dict["finetune_steps"] / steps_per_epoch))
    cfg = downstream_config(mode, bench_plan.pretrain, seed, label_fraction=fraction, **extra)
    t0 = time.time()
    indices = keyframe_indices_for_fraction(train, fraction)
    result = {"pretraining": pretraining, "fraction": fraction, "mode": mode, "seed": seed,
              "train_scans": len(indices), "epochs": cfg.epochs if mode == "finetune" else None, "probe": probe,
              "machine": machine()}
    if mode == "finetune":
        model, history = train_segmentation(cfg, train, pretrained=None if checkpoint is None else str(checkpoint),
                                            progress=False)
        assert sorted(history["train_indices"]) == sorted(indices)
        result.update(summarize_confusion(evaluate(model, val, cfg, progress=False)))
    else:  # the bench's converged linear probe, on the labelled scans only
        model = frozen_trunk(cfg, checkpoint, seed)
        result.update(linear_readout(model, train, val, cfg, seed, train_indices=indices, twin_probes=False))
    result["seconds"] = time.time() - t0
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def label_efficiency_summary(runs: list) -> dict:
    """{pretraining: {mode: {"%.4f" fraction: {"fraction", "mean", "std", "values", "seeds", "per_class"}}}}
    of label-efficiency results (mIoU recomputed from each confusion matrix, by ``metrics``' rule;
    ``per_class``: the mean IoU of each class over seeds)."""
    table = {}
    for r in runs:
        s = summarize_confusion(np.asarray(r["confusion"])) if "confusion" in r else r
        cell = table.setdefault(r["pretraining"], {}).setdefault(r["mode"], {}).setdefault(
            f"{r['fraction']:.4f}", {"fraction": r["fraction"], "values": [], "seeds": [], "classes": []})
        cell["values"].append(s["miou"]), cell["seeds"].append(r["seed"]), cell["classes"].append(s["per_class"])
    for modes in table.values():
        for cells in modes.values():
            for cell in cells.values():
                classes = cell.pop("classes")
                cell["mean"], cell["std"] = float(np.mean(cell["values"])), sample_std(cell["values"])
                cell["per_class"] = {c: float(np.mean([k.get(c, np.nan) for k in classes])) for c in classes[0]}
    return table


def label_efficiency(plan: LabelEfficiencyPlan | None = None, progress: bool = True,
                     results_dir: Path | None = None) -> dict:
    """Pretrain (or reuse the bench's trunks), then fine-tune and linear-probe at every fraction and
    seed; write ``<results_dir>/<results_name>.{json,md}``. Resumable: every job's result is kept."""
    from experiments.wording import fraction_label

    plan = plan or LabelEfficiencyPlan()
    b = plan.bench
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    root = bench_trunks(b, plan.pretrainings, plan.seeds, results_dir, progress)
    runs_dir = str(results_dir / f"{plan.results_name}_runs")
    jobs = [(plan.to_dict(), root, p, f, m, s, runs_dir) for p in plan.pretrainings for m in plan.modes
            for f in plan.fractions for s in plan.seeds]
    results = pool_map(_le_job, jobs, b.workers, "label-efficiency jobs", progress)
    table = label_efficiency_summary(results)
    scans = {f"{r['fraction']:.4f}": r["train_scans"] for r in results}
    lines = [f"# Label efficiency: mIoU (%) on val, mean ± sample std over seeds {list(plan.seeds)}", "",
             "Fractions of the training scenes by SLidR's rule (scans used in parentheses). Fine-tuning runs "
             f"{plan.finetune_steps} optimizer steps at every fraction; the linear probe is the bench's (a softmax "
             "probe of the frozen trunk fitted to its optimum on the labelled scans).", "",
             "| pretraining | mode | " + " | ".join(f"{fraction_label(f)} of the scenes "
                                                  f"({scans[f'{f:.4f}']} scans)" for f in plan.fractions)
             + " |", "|---|---|" + "---|" * len(plan.fractions)]
    for p in plan.pretrainings:
        for m in plan.modes:
            cells = [f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" for c in
                     (table[p][m][f"{f:.4f}"] for f in plan.fractions)]
            lines.append(f"| {p} | {m} | " + " | ".join(cells) + " |")
    report = {"plan": plan.to_dict(), "minutes_this_call": (time.time() - t0) / 60,
              "job_minutes": sum(r["seconds"] for r in results) / 60, "runs": results}
    write_results(results_dir, plan.results_name, report, "\n".join(lines) + "\n")
    return report

"""Multi-seed experiments whose results the notebooks display, one command each.

    python -m cmcr_lite.experiments baseline --seeds 0 1 2     # PPKT / SLidR vs random init, linear probe

Each run pretrains (or resumes) into ``outputs/experiments/<name>/<method>_seed<k>/``, linear-probes
the trunk on the embedded ``train`` split, evaluates per point on ``val``, and the summary (mean ± std
over seeds of mIoU and of the mean IoU of the geometry-only / appearance-only twin classes) is written
to ``benchmarks/results/<name>_lite.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cmcr_lite.classes import APPEARANCE_ONLY, BOTH_DIFFER, CLASS_NAMES_16, GEOMETRY_ONLY
from cmcr_lite.metrics import iou_per_class

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
GROUPS = {"geometry-only": GEOMETRY_ONLY, "appearance-only": APPEARANCE_ONLY, "both": BOTH_DIFFER}


def summarize_confusion(conf: np.ndarray) -> dict:
    """mIoU over classes present in the evaluation (target or prediction), per-class IoU, and the mean
    IoU of each twin group; NaN classes (absent everywhere) are left out of every mean."""
    iou = iou_per_class(conf)
    per_class = {CLASS_NAMES_16[k]: float(iou[k]) for k in range(1, len(iou)) if not np.isnan(iou[k])}
    out = {"miou": float(np.mean(list(per_class.values()))), "per_class": per_class}
    for group, names in GROUPS.items():
        vals = [per_class[n] for n in names if n in per_class]
        out[group] = float(np.mean(vals)) if vals else float("nan")
    return out


def linear_probe_run(checkpoint, seed: int, dataroot=None, progress: bool = False, **overrides) -> dict:
    """Linear probe (lite preset) of a pretrained trunk (``checkpoint`` path, or None = random init)
    on the embedded train split; returns :func:`summarize_confusion` of the val split."""
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import DownstreamConfig, evaluate, train_segmentation
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    root = ensure_embedded_dataset(dataroot)
    train = NuScenesKeyframes(root, EMBEDDED_VERSION, split="train")
    val = NuScenesKeyframes(root, EMBEDDED_VERSION, split="val")
    cfg = DownstreamConfig.lite("linear_probe", seed=seed, **overrides)
    model, _ = train_segmentation(cfg, train, pretrained=checkpoint, progress=progress)
    return summarize_confusion(evaluate(model, val, cfg, progress=progress))


def aggregate(runs: dict) -> dict:
    """{method: [summary per seed]} -> {method: {metric: (mean, std)}} over seeds."""
    out = {}
    for method, summaries in runs.items():
        out[method] = {}
        for metric in ("miou",) + tuple(GROUPS):
            vals = np.array([s[metric] for s in summaries], dtype=float)
            out[method][metric] = (float(np.nanmean(vals)), float(np.nanstd(vals)))
    return out


def markdown_table(agg: dict, seeds) -> str:
    lines = [f"Linear-probe IoU (%) on the embedded val split, mean ± std over seeds {list(seeds)}.", "",
             "| pretraining | mIoU | geometry-only | appearance-only | both |", "|---|---|---|---|---|"]
    for method, m in agg.items():
        cells = [f"{100 * m[k][0]:.1f} ± {100 * m[k][1]:.1f}" for k in ("miou", "geometry-only", "appearance-only", "both")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def baseline(seeds=(0, 1, 2), methods=("ppkt", "slidr"), output_root="outputs/experiments/baseline",
             results_name="baseline_lite", progress: bool = True, **pretrain_overrides) -> dict:
    """Random init vs PPKT vs SLidR pretraining, each linear-probed, over ``seeds``."""
    from cmcr_lite.pretrain import PretrainConfig, pretrain

    runs = {"random init": []}
    runs.update({m: [] for m in methods})
    t0 = time.time()
    for seed in seeds:
        runs["random init"].append(linear_probe_run(None, seed))
        for method in methods:
            cfg = PretrainConfig.lite(method=method, seed=seed, output_dir=f"{output_root}/{method}_seed{seed}",
                                      **pretrain_overrides)
            result = pretrain(cfg, resume=True, progress=progress)
            runs[method].append(linear_probe_run(str(result["checkpoint"]), seed))
            if progress:
                print(f"seed {seed} {method}: mIoU {100 * runs[method][-1]['miou']:.1f} "
                      f"(random init {100 * runs['random init'][-1]['miou']:.1f})")
    agg = aggregate(runs)
    report = {"seeds": list(seeds), "runs": runs, "summary": agg, "minutes": (time.time() - t0) / 60,
              "pretrain_overrides": pretrain_overrides}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{results_name}.json").write_text(json.dumps(report, indent=1))
    (RESULTS_DIR / f"{results_name}.md").write_text(markdown_table(agg, seeds))
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=["baseline"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20, help="pretraining epochs per run (lite preset: 4 steps each)")
    args = p.parse_args(argv)
    report = baseline(seeds=args.seeds, epochs=args.epochs)
    print(markdown_table(report["summary"], args.seeds))


if __name__ == "__main__":
    main()

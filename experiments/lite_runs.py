"""The notebook-size multi-seed runs whose tables notebooks 02 and 07 once showed: PPKT / SLidR
against random init (``baseline``), and CMCR one component at a time (``ablation``).

    python -m experiments baseline --seeds 0 1 2     # PPKT / SLidR vs random init (60 epochs)
    python -m experiments ablation --seeds 0 1 2     # CMCR, one component at a time (30 epochs)

Each run pretrains (or resumes) into ``outputs/experiments/<name>/<method>_seed<k>/``, linear-probes
the trunk (the downstream CLI's SGD probe) on the embedded ``train`` split, evaluates per point on
``val``; the summary (mean ± sample std over seeds of mIoU and of the twin columns) goes to
``experiments/results/<name>_lite.{json,md}``. The bench (``experiments.bench``) superseded these
for every conclusion: larger set, five paired seeds, a converged probe.
"""
from __future__ import annotations

import json
import time

import numpy as np

from cmcr_lite.analysis.probes import FEATURE_METRICS, feature_twin_probes
from cmcr_lite.metrics import GROUPS, TWIN_METRICS, summarize_confusion
from experiments import RESULTS_DIR
from experiments.stats import sample_std

METRICS = ("miou",) + tuple(GROUPS) + tuple(TWIN_METRICS) + tuple(FEATURE_METRICS)


# Lite pretraining epochs (4 steps each) per experiment. The baseline needs about 200 steps before the
# student picks up the faint intensity cue the teacher points at; the ablation's 24 runs (21 of them
# CMCR, 1-2 s a step) get half that, to stay near an hour on 2 cores.
DEFAULT_EPOCHS = {"baseline": 60, "ablation": 30}


def linear_probe_run(checkpoint, seed: int, dataroot=None, progress: bool = False, **overrides) -> dict:
    """Linear probe (lite preset) of a pretrained trunk (``checkpoint`` path, or None = random init)
    on the embedded train split; returns :func:`summarize_confusion` of the val split, plus
    :func:`feature_twin_probes` of the frozen trunk."""
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import DownstreamConfig, evaluate, train_segmentation
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    root = ensure_embedded_dataset(dataroot)
    train = NuScenesKeyframes(root, EMBEDDED_VERSION, split="train")
    val = NuScenesKeyframes(root, EMBEDDED_VERSION, split="val")
    cfg = DownstreamConfig.lite("linear_probe", seed=seed, **overrides)
    model, _ = train_segmentation(cfg, train, pretrained=checkpoint, progress=progress)
    summary = summarize_confusion(evaluate(model, val, cfg, progress=progress))
    summary.update(feature_twin_probes(model, train, val, cfg))
    return summary


def aggregate(runs: dict) -> dict:
    """{method: [summary per seed]} -> {method: {metric: (mean, sample std)}} over seeds (NaN std below 2 seeds)."""
    out = {}
    for method, summaries in runs.items():
        out[method] = {}
        for metric in METRICS:
            vals = np.array([s.get(metric, np.nan) for s in summaries], dtype=float)
            out[method][metric] = (float(np.nanmean(vals)), sample_std(vals))
    return out


def markdown_table(agg: dict, seeds) -> str:
    lines = [f"Linear probe on the embedded val split, mean ± sample std over seeds {list(seeds)}. IoU columns: mean "
             "IoU (%) of the classes of each group. 'Told apart' columns: balanced accuracy (%) of telling each "
             "twin from its twin (50 = chance), averaged over the group's twin pairs, read from the 16-class "
             "probe's confusion matrix. 'In features' columns: the same balanced accuracy for a two-class "
             "ridge probe per twin pair on the frozen trunk's point features (what the features carry).", "",
             "| pretraining | mIoU | geometry-only IoU | appearance-only IoU | both IoU | geometry twins told apart "
             "| appearance twins told apart | geometry twins in features | appearance twins in features |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, m in agg.items():
        cells = [f"{100 * m[k][0]:.1f} ± {100 * m[k][1]:.1f}" if k in m else "–" for k in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rescore(report: dict) -> dict:
    """``report`` (a ``run_variants`` result) with every run's confusion-matrix metrics recomputed by
    today's ``metrics`` rules (mIoU over the classes present in the ground truth) and the summary
    re-aggregated; the feature-probe columns are kept. Runs without a confusion matrix stay as they are."""
    runs = {method: [{**r, **summarize_confusion(np.asarray(r["confusion"]))} if "confusion" in r else r
                     for r in summaries] for method, summaries in report["runs"].items()}
    return {**report, "runs": runs, "summary": aggregate(runs)}


def rescore_results(results_name: str) -> dict:
    """Rewrite ``experiments/results/<results_name>.{json,md}`` with :func:`rescore` (no training)."""
    path = RESULTS_DIR / f"{results_name}.json"
    report = rescore(json.loads(path.read_text()))
    path.write_text(json.dumps(report, indent=1))
    (RESULTS_DIR / f"{results_name}.md").write_text(markdown_table(report["summary"], report["seeds"]))
    return report


def run_variants(variants: dict, seeds, output_root: str, results_name: str, progress: bool = True,
                 include_random: bool = True, **pretrain_overrides) -> dict:
    """Pretrain every variant ({name: PretrainConfig overrides}) for every seed, linear-probe it, and
    write the summary to ``experiments/results/<results_name>.{json,md}``. Runs resume from their
    checkpoints, so an interrupted experiment continues where it stopped."""
    from cmcr_lite.pretrain import PretrainConfig, pretrain

    runs = {"random init": []} if include_random else {}
    runs.update({name: [] for name in variants})
    t0 = time.time()
    for seed in seeds:
        if include_random:
            runs["random init"].append(linear_probe_run(None, seed))
        for name, overrides in variants.items():
            slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
            cfg = PretrainConfig.lite(**{**pretrain_overrides, **overrides, "seed": seed,
                                         "output_dir": f"{output_root}/{slug}_seed{seed}"})
            result = pretrain(cfg, resume=True, progress=progress)
            runs[name].append(linear_probe_run(str(result["checkpoint"]), seed))
            if progress:
                print(f"seed {seed} {name}: mIoU {100 * runs[name][-1]['miou']:.1f}")
    agg = aggregate(runs)
    report = {"seeds": list(seeds), "runs": runs, "summary": agg, "minutes": (time.time() - t0) / 60,
              "pretrain_overrides": pretrain_overrides, "variants": {k: str(v) for k, v in variants.items()}}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{results_name}.json").write_text(json.dumps(report, indent=1))
    (RESULTS_DIR / f"{results_name}.md").write_text(markdown_table(agg, seeds))
    return report


def baseline(seeds=(0, 1, 2), methods=("ppkt", "slidr"), output_root="outputs/experiments/baseline",
             results_name="baseline_lite", progress: bool = True, **pretrain_overrides) -> dict:
    """Random init vs PPKT vs SLidR pretraining, each linear-probed, over ``seeds``."""
    return run_variants({m: {"method": m} for m in methods}, seeds, output_root, results_name, progress,
                        **pretrain_overrides)


def ablation_variants(only=None) -> dict:
    """{variant name: PretrainConfig overrides}: PPKT, then ``cmcr.ABLATION_STEPS`` as 'CMCR <step>';
    ``only`` keeps the named ones (ValueError naming any unknown name)."""
    from cmcr_lite.cmcr import ABLATION_STEPS

    variants = {"PPKT": {"method": "ppkt"}}
    variants.update({f"CMCR {name}": {"method": "cmcr", "cmcr": opts} for name, opts in ABLATION_STEPS.items()})
    if only:
        unknown = [name for name in only if name not in variants]
        if unknown:
            raise ValueError(f"ablation: unknown variant(s) {unknown}; choose from {list(variants)}")
        variants = {name: v for name, v in variants.items() if name in only}
    return variants


def ablation(seeds=(0, 1, 2), output_root="outputs/experiments/ablation", results_name="ablation_lite",
             progress: bool = True, only=None, **pretrain_overrides) -> dict:
    """PPKT, then CMCR with one more component at a time (``cmcr.ABLATION_STEPS``), over ``seeds``;
    ``only`` keeps the named variants (e.g. ``["PPKT", "CMCR full"]``)."""
    return run_variants(ablation_variants(only), seeds, output_root, results_name, progress, **pretrain_overrides)

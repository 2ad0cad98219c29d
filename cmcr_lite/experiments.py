"""Multi-seed experiments whose results the notebooks display, one command each.

    python -m cmcr_lite.experiments baseline --seeds 0 1 2     # PPKT / SLidR vs random init (60 epochs, ~25 min)
    python -m cmcr_lite.experiments ablation --seeds 0 1 2     # CMCR, one component at a time (30 epochs, ~1 h)
    python -m cmcr_lite.experiments bench                      # the decisive benchmark (cmcr_lite.bench, ~2 h)
    python -m cmcr_lite.experiments bench --smoke              # the same at toy size (minutes)
    python -m cmcr_lite.experiments label-efficiency           # fine-tune / probe at few labels (bench trunks)
    python -m cmcr_lite.experiments ladder                     # the paper's ablation on the bench (cmcr_lite.ladder)
    python -m cmcr_lite.experiments mechanism                  # which loss terms move the trunk (cmcr_lite.mechanism)
    python -m cmcr_lite.experiments readme                     # rewrite the README's generated result blocks

Each run pretrains (or resumes) into ``outputs/experiments/<name>/<method>_seed<k>/``, linear-probes
the trunk on the embedded ``train`` split, evaluates per point on ``val``, and the summary (mean ± std
over seeds of mIoU and of the mean IoU of the geometry-only / appearance-only twin classes) is written
to ``benchmarks/results/<name>_lite.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cmcr_lite.analysis.probes import FEATURE_METRICS, feature_twin_probes
from cmcr_lite.metrics import GROUPS, TWIN_METRICS, summarize_confusion

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
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
    """{method: [summary per seed]} -> {method: {metric: (mean, std)}} over seeds."""
    out = {}
    for method, summaries in runs.items():
        out[method] = {}
        for metric in METRICS:
            vals = np.array([s.get(metric, np.nan) for s in summaries], dtype=float)
            out[method][metric] = (float(np.nanmean(vals)), float(np.nanstd(vals)))
    return out


def markdown_table(agg: dict, seeds) -> str:
    lines = [f"Linear probe on the embedded val split, mean ± std over seeds {list(seeds)}. IoU columns: mean "
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
    """Rewrite ``benchmarks/results/<results_name>.{json,md}`` with :func:`rescore` (no training)."""
    path = RESULTS_DIR / f"{results_name}.json"
    report = rescore(json.loads(path.read_text()))
    path.write_text(json.dumps(report, indent=1))
    (RESULTS_DIR / f"{results_name}.md").write_text(markdown_table(report["summary"], report["seeds"]))
    return report


def run_variants(variants: dict, seeds, output_root: str, results_name: str, progress: bool = True,
                 include_random: bool = True, **pretrain_overrides) -> dict:
    """Pretrain every variant ({name: PretrainConfig overrides}) for every seed, linear-probe it, and
    write the summary to ``benchmarks/results/<results_name>.{json,md}``. Runs resume from their
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


def bench_main(argv) -> dict:
    """``python -m cmcr_lite.experiments bench [--smoke] [--seeds ...] ...``: see ``cmcr_lite.bench``."""
    from cmcr_lite.bench import BenchPlan, bench
    from cmcr_lite.pretrain import parse_fields  # --set values: JSON, else the text

    p = argparse.ArgumentParser(prog="python -m cmcr_lite.experiments bench",
                                description="The benchmark that can decide the paper's claim (cmcr_lite.bench).")
    p.add_argument("--smoke", action="store_true",
                   help="every row at toy size (2 seeds, 1 epoch, the notebook-size set): minutes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every row (default 0-4)")
    p.add_argument("--noise-floor-seeds", type=int, nargs="*",
                   help="extra seeds of the PPKT row only, for the A/A noise floor (default 5-7; none: no value)")
    p.add_argument("--aa-seeds", type=int, nargs="+", help="seeds of the PPKT A/A row (default 100-107)")
    p.add_argument("--epochs", type=int, help="pretraining epochs per run")
    p.add_argument("--ceiling-epochs", type=int, help="epochs of the supervised ceiling")
    p.add_argument("--workers", type=int, help="jobs at once, one thread each (default 2)")
    p.add_argument("--dataroot", help="the data's root (default data/nuscenes-bench, or with --smoke the embedded "
                                      "set; generated if missing)")
    p.add_argument("--output-root", help="where each job's checkpoints and result.json go")
    p.add_argument("--results-dir", help="where <name>.{json,md,png} go (default benchmarks/results)")
    p.add_argument("--name", help="results name (default bench, or bench_smoke)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="extra PretrainConfig.lite fields (JSON values) for every pretraining, e.g. num_matches=256")
    p.add_argument("--batchnorm", choices=("running", "recalibrated"),
                   help="the frozen trunk's BatchNorm statistics in every read-out (default running; recalibrated: "
                        "re-estimated on the train scans, the control for stale statistics)")
    a = p.parse_args(argv)
    plan = BenchPlan.smoke() if a.smoke else BenchPlan()
    changes = {k: v for k, v in {"seeds": a.seeds and tuple(a.seeds), "aa_seeds": a.aa_seeds and tuple(a.aa_seeds),
                                 "noise_floor_seeds": None if a.noise_floor_seeds is None else tuple(a.noise_floor_seeds),
                                 "pretrain_epochs": a.epochs, "ceiling_epochs": a.ceiling_epochs,
                                 "workers": a.workers, "dataroot": a.dataroot, "output_root": a.output_root,
                                 "results_name": a.name, "batchnorm": a.batchnorm}.items() if v is not None}
    if a.set:
        changes["pretrain"] = parse_fields(a.set)
    seeds, extra = set(changes.get("seeds", plan.seeds)), set(changes.get("noise_floor_seeds", plan.noise_floor_seeds))
    if set(changes.get("aa_seeds", plan.aa_seeds)) & (seeds | extra):
        p.error("--aa-seeds must be disjoint from --seeds and --noise-floor-seeds (the A/A row is the noise floor)")
    if seeds & extra:
        p.error(f"--noise-floor-seeds must be disjoint from --seeds: {sorted(seeds & extra)} in both")
    plan = replace(plan, **changes)
    report = bench(plan, results_dir=a.results_dir)
    from cmcr_lite.bench import markdown_report

    print(markdown_report(report["summary"], plan, report["job_minutes"], report["wall_from_scratch"]))
    return report


def label_efficiency_main(argv) -> dict:
    """``python -m cmcr_lite.experiments label-efficiency [--smoke] ...``: see ``bench.label_efficiency``."""
    from cmcr_lite.bench import BenchPlan, LabelEfficiencyPlan, label_efficiency
    from cmcr_lite.pretrain import parse_fields

    p = argparse.ArgumentParser(prog="python -m cmcr_lite.experiments label-efficiency",
                                description="Fine-tuning and linear probing at several label fractions, per "
                                            "pretraining (random init, PPKT, CMCR), over seeds.")
    p.add_argument("--smoke", action="store_true", help="toy size on the notebook-size set (1/3 and all scenes)")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2")
    p.add_argument("--fractions", type=float, nargs="+", help="label fractions (default: the bench set's 1/18 1/6 1/2 1)")
    p.add_argument("--finetune-steps", type=int, help="optimizer steps of every fine-tuning run (default: LabelEfficiencyPlan.finetune_steps, 150)")
    p.add_argument("--workers", type=int, help="jobs at once, one thread each (default 2)")
    p.add_argument("--dataroot", help="the data's root (default data/nuscenes-bench; --smoke: the embedded set)")
    p.add_argument("--output-root", help="the pretraining checkpoints' folder (default: the bench's, reused)")
    p.add_argument("--results-dir", help="where <name>.{json,md} go (default benchmarks/results)")
    p.add_argument("--name", help="results name (default label_efficiency)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="extra PretrainConfig.lite fields")
    a = p.parse_args(argv)
    bench_plan = BenchPlan.smoke() if a.smoke else BenchPlan()
    bench_changes = {k: v for k, v in {"workers": a.workers, "dataroot": a.dataroot, "output_root": a.output_root,
                                       "seeds": a.seeds and tuple(a.seeds)}.items() if v is not None}
    if a.set:
        bench_changes["pretrain"] = parse_fields(a.set)
    plan = LabelEfficiencyPlan(bench=replace(bench_plan, **bench_changes))
    if a.smoke:
        plan = replace(plan, seeds=(0, 1), fractions=(1 / 3, 1.0), finetune_steps=20,
                       results_name="label_efficiency_smoke")
    changes = {k: v for k, v in {"seeds": a.seeds and tuple(a.seeds), "fractions": a.fractions and tuple(a.fractions),
                                 "finetune_steps": a.finetune_steps, "results_name": a.name}.items() if v is not None}
    plan = replace(plan, **changes)
    report = label_efficiency(plan, results_dir=a.results_dir)
    print((Path(a.results_dir or RESULTS_DIR) / f"{plan.results_name}.md").read_text())
    return report


def add_plan_options(p: argparse.ArgumentParser, default_name: str):
    """The options every bench-job command shares (``BenchPlan`` fields and where results go)."""
    p.add_argument("--smoke", action="store_true", help="toy size (the bench's smoke plan): minutes")
    p.add_argument("--dataroot", help="the data's root (default data/nuscenes-bench; --smoke: the embedded set)")
    p.add_argument("--output-root", help="where each job's checkpoints go (default: the bench's)")
    p.add_argument("--results-dir", help="where <name>.{json,md,png} and the job results go (default benchmarks/results)")
    p.add_argument("--name", help=f"results name (default {default_name}, or {default_name}_smoke)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="extra PretrainConfig.lite fields (JSON values) for every pretraining, as the bench's --set")


def plan_changes(a: argparse.Namespace, **more) -> dict:
    """``BenchPlan`` fields from the options of :func:`add_plan_options` (and ``more``) that were given."""
    from cmcr_lite.pretrain import parse_fields

    changes = {k: v for k, v in {"dataroot": a.dataroot, "output_root": a.output_root, **more}.items() if v is not None}
    if a.set:
        changes["pretrain"] = parse_fields(a.set)
    return changes


def ladder_main(argv) -> dict:
    """``python -m cmcr_lite.experiments ladder [--smoke] [--diagnostic-weights W ...] ...``: see ``cmcr_lite.ladder``."""
    from cmcr_lite.ladder import LadderPlan, ladder

    p = argparse.ArgumentParser(prog="python -m cmcr_lite.experiments ladder",
                                description="The paper's ablation ladder on the bench (cmcr_lite.ladder); resumable.")
    add_plan_options(p, "ladder")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every row (default: the bench's, 0-4)")
    p.add_argument("--diagnostic-weights", type=float, nargs="*",
                   help="rows 'CMCR (occupancy xW)' with the occupancy and intensity weights times W (diagnostic, "
                        "not the paper's method); default none")
    p.add_argument("--workers", type=int, help="jobs at once, one thread each (default 2)")
    p.add_argument("--bench-name", help="the bench's results name, whose PPKT, CMCR and occupancy-only jobs are "
                                        "reused (default bench, or bench_smoke)")
    p.add_argument("--report-only", action="store_true",
                   help="run no job: summarise the job results already there (e.g. while a long call runs)")
    p.add_argument("--batchnorm", choices=("running", "recalibrated"),
                   help="the frozen trunk's BatchNorm statistics in every read-out (default running); with "
                        "recalibrated, the job results go to <name>_runs/ instead of the bench's")
    a = p.parse_args(argv)
    plan = LadderPlan.smoke() if a.smoke else LadderPlan()
    bench_changes = plan_changes(a, seeds=a.seeds and tuple(a.seeds), workers=a.workers, batchnorm=a.batchnorm,
                                 results_name=a.bench_name)
    changes = {k: v for k, v in {"results_name": a.name, "diagnostic_weights": None if a.diagnostic_weights is None
                                 else tuple(a.diagnostic_weights)}.items() if v is not None}
    if a.batchnorm == "recalibrated":  # other read-outs of the same trunks: results apart from the bench's
        name = a.name or plan.results_name
        name = name if name.endswith("_recalibrated") else f"{name}_recalibrated"
        bench_changes["results_name"] = changes["results_name"] = name
    plan = replace(plan, bench=replace(plan.bench, **bench_changes), **changes)
    report = ladder(plan, results_dir=a.results_dir, report_only=a.report_only)
    print((Path(a.results_dir or RESULTS_DIR) / f"{plan.results_name}.md").read_text())
    return report


def mechanism_main(argv) -> dict:
    """``python -m cmcr_lite.experiments mechanism [--smoke] ...``: see ``cmcr_lite.mechanism``."""
    from cmcr_lite.mechanism import MechanismPlan, mechanism

    p = argparse.ArgumentParser(prog="python -m cmcr_lite.experiments mechanism",
                                description="Which loss terms shape the 3D trunk: per-term gradients over a bench "
                                            "pretraining and one full-size step (cmcr_lite.mechanism); resumable.")
    add_plan_options(p, "mechanism")
    p.add_argument("--row", help="the bench row to pretrain with the diagnostic (default CMCR)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--every", type=int, help="steps between two measurements (default 10)")
    p.add_argument("--no-full-step", action="store_true", help="skip the full-preset step at nuScenes density")
    p.add_argument("--full-points", type=int, help="LiDAR points per scan of the full-preset step (default 34000)")
    a = p.parse_args(argv)
    plan = MechanismPlan.smoke() if a.smoke else MechanismPlan()
    bench_changes = plan_changes(a)
    changes = {k: v for k, v in {"row": a.row, "seed": a.seed, "gradient_every": a.every, "results_name": a.name,
                                 "full_points": a.full_points,
                                 "full_step": False if a.no_full_step else None}.items() if v is not None}
    changes["bench"] = replace(plan.bench, **bench_changes)
    plan = replace(plan, **changes)
    report = mechanism(plan, results_dir=a.results_dir)
    print((Path(a.results_dir or RESULTS_DIR) / f"{plan.results_name}.md").read_text())
    return report


README = Path(__file__).resolve().parents[1] / "README.md"
README_BLOCKS = ("ladder",)  # <!-- NAME:begin --> ... <!-- NAME:end --> blocks generated from results files


def readme_block(name: str) -> str:
    """The text of the README's generated block ``name``, from the committed results files."""
    if name == "ladder":
        from cmcr_lite.ladder import load_ladder, readme_block as ladder_block

        mechanism_file = RESULTS_DIR / "mechanism.json"
        return ladder_block(load_ladder()["summary"],
                            json.loads(mechanism_file.read_text()) if mechanism_file.is_file() else None)
    raise ValueError(f"no README block {name!r}; blocks are {README_BLOCKS}")


def readme_with_blocks(text: str) -> str:
    """``text`` (the README) with every generated block rewritten from the results files."""
    for name in README_BLOCKS:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in text or end not in text:
            raise ValueError(f"README.md: no {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + readme_block(name) + "\n" + end + rest.split(end, 1)[1]
    return text


def main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return bench_main(argv[1:])
    if argv[:1] == ["label-efficiency"]:
        return label_efficiency_main(argv[1:])
    if argv[:1] == ["ladder"]:
        return ladder_main(argv[1:])
    if argv[:1] == ["mechanism"]:
        return mechanism_main(argv[1:])
    if argv[:1] == ["readme"]:  # rewrite the README's generated blocks from the committed results
        README.write_text(readme_with_blocks(README.read_text()))
        print(f"{README}: blocks {', '.join(README_BLOCKS)} rewritten")
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=["baseline", "ablation", "bench", "label-efficiency", "ladder", "mechanism",
                                          "readme"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help=f"pretraining epochs per run (lite preset: 4 steps each); default {DEFAULT_EPOCHS}")
    p.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                   help='ablation only: the variants to run, e.g. --only PPKT "CMCR full"')
    p.add_argument("--name", default=None,
                   help="results name (benchmarks/results/<name>.{json,md}, outputs/experiments/<name>/); "
                        "default <experiment>_lite")
    args = p.parse_args(argv)
    if args.only and args.experiment != "ablation":
        p.error("--only applies to the ablation")
    try:  # reject unknown names before any run starts
        ablation_variants(args.only)
    except ValueError as e:
        p.error(str(e))
    name = args.name or f"{args.experiment}_lite"
    kwargs = {"seeds": args.seeds, "epochs": args.epochs or DEFAULT_EPOCHS[args.experiment], "results_name": name}
    if args.name:  # keep a named run's checkpoints apart from the default one's
        kwargs["output_root"] = f"outputs/experiments/{name}"
    if args.experiment == "ablation":
        report = ablation(only=args.only, **kwargs)
    else:
        report = baseline(**kwargs)
    print(markdown_table(report["summary"], args.seeds))


if __name__ == "__main__":
    main()

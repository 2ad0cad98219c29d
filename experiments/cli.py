"""``python -m experiments <experiment> ...``: one command per experiment (see ``experiments/README.md``).

    python -m experiments bench                      # the decisive benchmark (experiments.bench)
    python -m experiments bench --smoke              # the same at toy size (minutes)
    python -m experiments ladder                     # the paper's ablation on the bench (experiments.ladder)
    python -m experiments mechanism                  # which loss terms move the trunk (experiments.mechanism)
    python -m experiments label-efficiency           # fine-tune / probe at few labels (bench trunks)
    python -m experiments instances                  # panoptic segmentation + detection (bench trunks)
    python -m experiments baseline --seeds 0 1 2     # notebook-size PPKT / SLidR vs random init (experiments.lite_runs)
    python -m experiments ablation --seeds 0 1 2     # notebook-size CMCR ablation (experiments.lite_runs)
    python -m experiments notes                      # rewrite the generated result blocks (README, docs, notes)
    python -m experiments trunks                     # the converged trunks the notebooks load (experiments.trunks)
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from cmcr_lite.runtime import CommandLineParser, reports_input_errors
from experiments import RESULTS_DIR


def bench_main(argv) -> dict:
    """``python -m experiments bench [--smoke] [--seeds ...] ...``: see ``experiments.bench``."""
    from experiments.bench import bench
    from experiments.plan import BenchPlan
    from experiments.report import markdown_report

    p = CommandLineParser(prog="python -m experiments bench",
                          description="The benchmark that can decide the paper's claim (experiments.bench).")
    add_plan_options(p, "bench")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every row (default 0-4)")
    p.add_argument("--noise-floor-seeds", type=int, nargs="*",
                   help="extra seeds of the PPKT row only, for the A/A noise floor (default 5-7; none: no value)")
    p.add_argument("--aa-seeds", type=int, nargs="+", help="seeds of the PPKT A/A row (default 100-107)")
    p.add_argument("--epochs", type=int, help="pretraining epochs per run")
    p.add_argument("--ceiling-epochs", type=int, help="epochs of the supervised ceiling")
    p.add_argument("--workers", type=int, help="jobs at once, one thread each (default 2)")
    p.add_argument("--batchnorm", choices=("running", "recalibrated"),
                   help="the frozen trunk's BatchNorm statistics in every read-out (default running; recalibrated: "
                        "re-estimated on the train scans, the control for stale statistics)")
    a = p.parse_args(argv)
    plan = BenchPlan.smoke() if a.smoke else BenchPlan()
    changes = plan_changes(a, seeds=a.seeds and tuple(a.seeds), aa_seeds=a.aa_seeds and tuple(a.aa_seeds),
                           noise_floor_seeds=None if a.noise_floor_seeds is None else tuple(a.noise_floor_seeds),
                           pretrain_epochs=a.epochs, ceiling_epochs=a.ceiling_epochs, workers=a.workers,
                           results_name=a.name, batchnorm=a.batchnorm)
    seeds, extra = set(changes.get("seeds", plan.seeds)), set(changes.get("noise_floor_seeds", plan.noise_floor_seeds))
    if set(changes.get("aa_seeds", plan.aa_seeds)) & (seeds | extra):
        p.error("--aa-seeds must be disjoint from --seeds and --noise-floor-seeds (the A/A row is the noise floor)")
    if seeds & extra:
        p.error(f"--noise-floor-seeds must be disjoint from --seeds: {sorted(seeds & extra)} in both")
    plan = replace(plan, **changes)
    report = bench(plan, results_dir=a.results_dir)
    print(markdown_report(report["summary"], plan, report["job_minutes"], report["wall_from_scratch"]))
    return report


def _fractions_main(argv, command: str, description: str, plan_cls, run, fractions_help: str, steps_help: str,
                    smoke_steps: int) -> dict:
    """The command line of an experiment that fine-tunes the bench's trunks at several label fractions
    over seeds (``plan_cls``: its plan, with ``bench``, ``seeds``, ``fractions``, ``finetune_steps``,
    ``results_name``; ``run(plan, results_dir=...)``: the experiment)."""
    from experiments.plan import BenchPlan

    name = command.replace("-", "_")
    p = CommandLineParser(prog=f"python -m experiments {command}", description=description)
    add_plan_options(p, name)
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2")
    p.add_argument("--fractions", type=float, nargs="+", help=fractions_help)
    p.add_argument("--finetune-steps", type=int, help=steps_help)
    p.add_argument("--workers", type=int, help="jobs at once, one thread each (default 2)")
    a = p.parse_args(argv)
    bench_plan = BenchPlan.smoke() if a.smoke else BenchPlan()
    bench_changes = plan_changes(a, workers=a.workers, seeds=a.seeds and tuple(a.seeds))
    plan = plan_cls(bench=replace(bench_plan, **bench_changes))
    if a.smoke:
        plan = replace(plan, seeds=(0, 1), fractions=(1 / 3, 1.0), finetune_steps=smoke_steps,
                       results_name=f"{name}_smoke")
    changes = {k: v for k, v in {"seeds": a.seeds and tuple(a.seeds), "fractions": a.fractions and tuple(a.fractions),
                                 "finetune_steps": a.finetune_steps, "results_name": a.name}.items() if v is not None}
    plan = replace(plan, **changes)
    report = run(plan, results_dir=a.results_dir)
    print((Path(a.results_dir or RESULTS_DIR) / f"{plan.results_name}.md").read_text())
    return report


def label_efficiency_main(argv) -> dict:
    """``python -m experiments label-efficiency [--smoke] ...``: see ``experiments.label_efficiency``."""
    from experiments.label_efficiency import LabelEfficiencyPlan, label_efficiency

    return _fractions_main(argv, "label-efficiency", "Fine-tuning and linear probing at several label fractions, per "
                                                     "pretraining (random init, PPKT, CMCR), over seeds.",
                           LabelEfficiencyPlan, label_efficiency,
                           "label fractions (default: the bench set's 1/18 1/6 1/2 1)",
                           "optimizer steps of every fine-tuning run (default: LabelEfficiencyPlan.finetune_steps, 150)",
                           smoke_steps=20)


def instances_main(argv) -> dict:
    """``python -m experiments instances [--smoke] ...``: see ``experiments.instances``."""
    from experiments.instances import InstancesPlan, instances

    return _fractions_main(argv, "instances", "Panoptic segmentation and 3D detection, per pretraining (random init, "
                                              "PPKT, CMCR) and label fraction, over seeds, scored by the nuScenes devkit.",
                           InstancesPlan, instances, "label fractions (default: the bench set's 1/18 and 1)",
                           "optimizer steps of every run (default: InstancesPlan's, 300)", smoke_steps=10)


def add_plan_options(p: argparse.ArgumentParser, default_name: str):
    """The options every bench-job command shares (``BenchPlan`` fields and where results go)."""
    p.add_argument("--smoke", action="store_true", help="toy size (the bench's smoke plan): minutes")
    p.add_argument("--dataroot", help="the data's root (default data/nuscenes-bench; --smoke: the embedded set)")
    p.add_argument("--output-root", help="where each job's checkpoints go (default: the bench's)")
    p.add_argument("--results-dir", help="where <name>.{json,md,png} and the job results go (default experiments/results)")
    p.add_argument("--name", help=f"results name (default {default_name}, or {default_name}_smoke)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="extra PretrainConfig.lite fields (JSON values) for every pretraining, as the bench's --set")


def plan_changes(a: argparse.Namespace, **more) -> dict:
    """``BenchPlan`` fields from the options of :func:`add_plan_options` (and ``more``) that were given.
    ``--set`` values are checked against ``PretrainConfig`` here, before any job starts: a bad field or
    value is one line ``error: ...`` (exit status 2), not a traceback from a worker."""
    changes = {k: v for k, v in {"dataroot": a.dataroot, "output_root": a.output_root, **more}.items() if v is not None}
    if a.set:
        from cmcr_lite.pretrain import parse_fields

        check_pretrain_fields(a.set)
        changes["pretrain"] = parse_fields(a.set)
    return changes


def check_pretrain_fields(items):
    """InputError naming the field and value unless ``["FIELD=VALUE", ...]`` make a valid lite
    ``PretrainConfig`` (the pretraining command's own checks, ``pretrain.config_from_args``)."""
    from cmcr_lite.pretrain import config_from_args

    config_from_args(argparse.Namespace(config="lite", set=items, output_dir=None))


def ladder_main(argv) -> dict:
    """``python -m experiments ladder [--smoke] [--diagnostic-weights W ...] ...``: see ``experiments.ladder``."""
    from experiments.ladder import LadderPlan, ladder

    p = CommandLineParser(prog="python -m experiments ladder",
                          description="The paper's ablation ladder on the bench (experiments.ladder); resumable.")
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
    if a.diagnostic_weights and min(a.diagnostic_weights) <= 0:
        p.error(f"argument --diagnostic-weights: weights must be > 0, got {a.diagnostic_weights}")
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
    """``python -m experiments mechanism [--smoke] ...``: see ``experiments.mechanism``."""
    from experiments.mechanism import MechanismPlan, mechanism

    p = CommandLineParser(prog="python -m experiments mechanism",
                          description="Which loss terms shape the 3D trunk: per-term gradients over a bench "
                                      "pretraining and one full-size step (experiments.mechanism); resumable.")
    add_plan_options(p, "mechanism")
    p.add_argument("--row", help="the bench row to pretrain with the diagnostic (default CMCR)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--every", type=int, help="steps between two measurements (default 10)")
    p.add_argument("--no-full-step", action="store_true", help="skip the full-preset step at nuScenes density")
    p.add_argument("--full-points", type=int, help="LiDAR points per scan of the full-preset step (default 34000)")
    a = p.parse_args(argv)
    from experiments.plan import is_pretrained

    if a.row is not None and not is_pretrained(a.row):
        p.error(f"argument --row: {a.row!r} is not a pretrained row of the bench or the ladder (e.g. 'CMCR', "
                "'PPKT', '+ GeoMIM', 'CMCR (occupancy ×6)')")
    if a.every is not None and a.every < 1:
        p.error(f"argument --every: must be >= 1, got {a.every}")
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


@reports_input_errors
def main(argv=None):
    import sys

    from experiments.lite_runs import DEFAULT_EPOCHS, ablation, ablation_variants, baseline, markdown_table

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return bench_main(argv[1:])
    if argv[:1] == ["label-efficiency"]:
        return label_efficiency_main(argv[1:])
    if argv[:1] == ["instances"]:
        return instances_main(argv[1:])
    if argv[:1] == ["ladder"]:
        return ladder_main(argv[1:])
    if argv[:1] == ["mechanism"]:
        return mechanism_main(argv[1:])
    if argv[:1] == ["trunks"]:  # the bench's converged trunks that the notebooks load
        from experiments.trunks import main as trunks_main

        return trunks_main(argv[1:])
    if argv[:1] == ["notes"]:  # rewrite the generated blocks of the README and the results notes
        from experiments.notes import main as notes_main

        return notes_main(argv[1:])
    p = CommandLineParser(prog="python -m experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=["baseline", "ablation", "bench", "instances", "label-efficiency", "ladder",
                                          "mechanism", "notes", "trunks"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help=f"pretraining epochs per run (lite preset: 4 steps each); default {DEFAULT_EPOCHS}")
    p.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                   help='ablation only: the variants to run, e.g. --only PPKT "CMCR full"')
    p.add_argument("--name", default=None,
                   help="results name (experiments/results/<name>.{json,md}, outputs/experiments/<name>/); "
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

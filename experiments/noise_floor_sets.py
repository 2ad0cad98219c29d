"""The bench's noise floor on more than two seed sets: PPKT on further disjoint sets of seeds, read
together with the PPKT and A/A rows of a bench report made on the same kind of machine.

    python -m experiments.noise_floor_sets --sets 8-15 300-307 200-207 \
        --report experiments/results/cross_machine_runs/amd_epyc_17_from_scratch/bench.json \
        --out experiments/results/noise_floor_sets_amd_epyc_17

Why: the bench's A/A row (PPKT on seeds 100-107) came out 1.5 to 1.9 mIoU points above its PPKT row
(seeds 0-7) in both realizations of the table, against 1 point asked. Two sets cannot tell a seed-set
effect from a rare draw; five can. Each job is the bench's own PPKT job (``experiments.jobs.run_job``), one
thread each, resumable: a job whose result is in ``--out`` is not run again (a PPKT job takes about
6 minutes on one core). Every job, and the report's, must come from one kind of machine (the bits
change between kinds, ``cmcr_lite.runtime.machine``), or the script stops and says which differ.

Writes ``<out>/noise_floor_sets.{json,md,png}``: every set's mean and std, how far the set means
scatter against the ``sigma / sqrt(n)`` that independent seeds predict (one-way ANOVA), every pair
of sets' difference, how often two random disjoint sets of n differ by 1 point or by the report's
A/A gap, and each class's share of the mIoU's variance (``experiments.stats``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from cmcr_lite.pretrain import parse_fields  # --set values: JSON, else the text
from experiments.bench import same_plan
from experiments.jobs import pool_map, prepare_data, run_job
from experiments.plan import BenchPlan
from experiments.stats import chance_of_gap, spread_of_set_means, variance_shares

ROW = "PPKT (A/A)"  # the same job as the PPKT row's: another seed set of the same method


def parse_set(text: str) -> list:
    """'8-15' -> [8, ..., 15]; '3' -> [3]."""
    lo, _, hi = text.partition("-")
    try:
        seeds = list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed set is 'FIRST-LAST' or one seed; got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"the seed set {text!r} is empty (FIRST must not exceed LAST)")
    return seeds


def _label(seeds: list) -> str:
    return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def _kind(result: dict) -> tuple:
    m = result.get("machine") or {}
    return m.get("cpu"), m.get("cpu_capability"), m.get("blas_kernels")


def gather_sets(report: dict | None, sets: list, jobs: list, plan: BenchPlan) -> dict:
    """label -> the job results of that set: the report's PPKT and A/A rows first (when given), then
    ``sets`` from ``jobs``. Raises ValueError when the report's plan is not ``plan``, when sets
    overlap, or when the jobs come from more than one kind of machine."""
    out = {}
    if report is not None:
        if not same_plan(report["plan"], plan):
            raise ValueError("noise_floor_sets: the report's plan is not the bench plan these jobs run")
        for row in ("PPKT", "PPKT (A/A)"):
            runs = sorted((r for r in report["runs"] if r["row"] == row), key=lambda r: r["seed"])
            out[_label([r["seed"] for r in runs])] = runs
    by_seed = {r["seed"]: r for r in jobs}
    for seeds in sets:
        out[_label(seeds)] = [by_seed[s] for s in seeds]
    every = [r["seed"] for runs in out.values() for r in runs]
    if len(every) != len(set(every)):
        raise ValueError(f"noise_floor_sets: the seed sets overlap: {sorted(s for s in set(every) if every.count(s) > 1)}")
    kinds = {_kind(r) for runs in out.values() for r in runs}
    if len(kinds) > 1:
        raise ValueError(f"noise_floor_sets: the jobs come from {len(kinds)} kinds of machine {sorted(map(str, kinds))}; "
                         "one kind makes one realization, so run every set on one kind")
    return out


def summarize_sets(by_set: dict, report_gap: float | None = None) -> dict:
    """The numbers of noise_floor_sets.json from the job results of each set (mIoU in %)."""
    miou = {k: [100 * r["miou"] for r in runs] for k, runs in by_set.items()}
    spread = spread_of_set_means(miou)
    every = [v for vals in miou.values() for v in vals]
    runs = [r for rs in by_set.values() for r in rs]
    n = len(next(iter(miou.values())))
    gaps = {"1.0": chance_of_gap(every, n, 1.0)}
    if report_gap is not None:
        gaps[f"{report_gap:.2f}"] = chance_of_gap(every, n, report_gap)
    shares = variance_shares({c: [100 * r["per_class"][c] for r in runs] for c in runs[0]["per_class"]})
    per_class = {c: {"mean": float(sum(100 * r["per_class"][c] for r in runs) / len(runs)),
                     "per_set": {k: float(sum(100 * r["per_class"][c] for r in rs) / len(rs)) for k, rs in by_set.items()}}
                 for c in runs[0]["per_class"]}
    return {"miou": miou, "spread": spread, "seeds_in_all": len(every), "n_per_set": n,
            "chance_of_gap": gaps, "variance_shares": shares, "class_iou": per_class,
            "machine": runs[0].get("machine")}


def markdown(summary: dict, report_name: str | None) -> str:
    s, n = summary["spread"], summary["n_per_set"]
    m = summary["machine"] or {}
    lines = [f"# The noise floor on {len(s['sets'])} disjoint seed sets of PPKT ({n} seeds each)", "",
             f"Every job is the bench's PPKT job, one thread each, on one kind of machine ({m.get('cpu')}, "
             f"{m.get('cpu_capability')}, OpenBLAS {m.get('blas_kernels')})"
             + (f"; the first two sets are the PPKT and A/A rows of `{report_name}`." if report_name else "."), "",
             "| seed set | mIoU, mean ± std (%) |", "|---|---|"]
    lines += [f"| {k} | {v['mean']:.2f} ± {v['std']:.2f} |" for k, v in s["sets"].items()]
    lines += ["", "| measure | value |", "|---|---|",
              f"| per-seed std, pooled within sets | {s['pooled_std']:.2f} |",
              f"| std of the set means | {s['std_of_means']:.2f} |",
              f"| std of the set means that independent seeds predict (pooled / √{n}) | {s['predicted_std_of_means']:.2f} |",
              f"| one-way ANOVA: F, p | {s['F']:.2f}, {s['p']:.3f} |"]
    for gap, p in summary["chance_of_gap"].items():
        lines.append(f"| two random disjoint sets of {n} from all {summary['seeds_in_all']} seeds: chance of a gap ≥ {gap} "
                     f"points | {p:.3f} |")
    over = sum(abs(d) > 1 for d in s["pairs"].values())
    lines += ["", f"Every pair of sets ({over} of {len(s['pairs'])} differ by more than 1 point):", "",
              "| pair | difference of means (points) |", "|---|---|"]
    lines += [f"| {k} | {v:+.2f} |" for k, v in s["pairs"].items()]
    shares = sorted(summary["variance_shares"].items(), key=lambda kv: -kv[1])
    lines += ["", f"Each class's share of the variance of the mIoU over all {summary['seeds_in_all']} seeds "
              "(cov(IoU_c, mIoU) / (C · var(mIoU)); the shares sum to 1), and its IoU per set:", "",
              "| class | share | IoU, all seeds | " + " | ".join(s["sets"]) + " |",
              "|---|---|---|" + "---|" * len(s["sets"])]
    for c, share in shares:
        ci = summary["class_iou"][c]
        lines.append(f"| {c} | {share:.2f} | {ci['mean']:.1f} | " + " | ".join(f"{ci['per_set'][k]:.1f}" for k in s["sets"]) + " |")
    return "\n".join(lines) + "\n"


def figure(summary: dict, path: Path):
    """Per-seed mIoU per set with each mean and the ±1.96 sigma / sqrt(n) band independent seeds
    predict around the grand mean, and each class's share of the variance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cmcr_lite.runtime import atomic_path

    s = summary["spread"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    every = np.concatenate([np.asarray(v) for v in summary["miou"].values()])
    half = 1.96 * s["predicted_std_of_means"]
    a.axhspan(every.mean() - half, every.mean() + half, color="grey", alpha=0.2,
              label="grand mean ± 1.96 σ/√n (where 95 % of set means fall if seeds are independent)")
    for i, (k, vals) in enumerate(summary["miou"].items()):
        a.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=18)
        a.plot([i - 0.3, i + 0.3], [np.mean(vals)] * 2, color="k", lw=2)
    a.set_xticks(range(len(summary["miou"])), [f"seeds {k}" for k in summary["miou"]])
    a.set(ylabel="linear-probe mIoU (%)", title=f"PPKT on disjoint seed sets (ANOVA p = {s['p']:.3f})")
    a.legend(fontsize=7, loc="lower right")
    shares = sorted(summary["variance_shares"].items(), key=lambda kv: -kv[1])
    b.barh([c for c, _ in shares], [v for _, v in shares])
    b.invert_yaxis()
    b.set(xlabel="share of the mIoU's variance over seeds", title="which classes make the seed-to-seed spread")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=parse_set, nargs="+", required=True, help="seed sets to run, e.g. 8-15 300-307")
    ap.add_argument("--report", type=Path, help="a bench report (bench.json) whose PPKT and A/A rows join as two sets")
    ap.add_argument("--out", type=Path, required=True, help="where the job results and noise_floor_sets.* go")
    ap.add_argument("--workers", type=int, default=2, help="jobs at once, one thread each (default 2)")
    ap.add_argument("--smoke", action="store_true", help="the bench's smoke plan (notebook-size set, 1 epoch)")
    ap.add_argument("--dataroot", help="the data's root (default: the plan's)")
    ap.add_argument("--output-root", help="where each job's checkpoints go (default: the plan's)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="extra PretrainConfig.lite fields (JSON values) for every job, as `experiments bench --set`")
    args = ap.parse_args(argv)
    plan = BenchPlan.smoke() if args.smoke else BenchPlan()
    fields = {"workers": args.workers}
    if args.dataroot:
        fields["dataroot"] = args.dataroot
    if args.output_root:
        fields["output_root"] = args.output_root
    if args.set:
        fields["pretrain"] = parse_fields(args.set)
    plan = replace(plan, **fields)
    report = None
    if args.report:
        if not args.report.is_file():
            sys.exit(f"noise_floor_sets: no bench report at {args.report}")
        report = json.loads(args.report.read_text())
    t0 = time.time()
    root = prepare_data(plan)
    seeds = [s for seeds in args.sets for s in seeds]
    jobs = pool_map(run_job, [(plan.to_dict(), root, ROW, s, str(args.out)) for s in seeds], plan.workers,
                     "noise-floor seed sets", True)
    try:
        by_set = gather_sets(report, args.sets, jobs, plan)
    except ValueError as e:
        sys.exit(str(e))
    gap = None if report is None else 100 * report["summary"]["differences"]["PPKT (A/A) - PPKT"]["miou"]["mean"]
    summary = summarize_sets(by_set, gap)
    summary["minutes_this_call"] = (time.time() - t0) / 60
    summary["job_seeds"] = {_label(s): s for s in args.sets}
    from cmcr_lite.runtime import atomic_path

    with atomic_path(args.out / "noise_floor_sets.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_path(args.out / "noise_floor_sets.md") as tmp:
        tmp.write_text(markdown(summary, str(args.report) if args.report else None))
    figure(summary, args.out / "noise_floor_sets.png")
    print((args.out / "noise_floor_sets.md").read_text())
    return summary


if __name__ == "__main__":
    main()

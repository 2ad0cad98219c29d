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
A/A gap, and each class's share of the mIoU's variance (``experiments.stats``). The sentences that
read them (``results/noise_floor_sets_amd_epyc_17/README.md``, ``docs/results.md``) are written from
those files by :func:`folder_notes` and :func:`results_page_notes` (``python -m experiments notes``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cmcr_lite.pretrain import parse_fields  # --set values: JSON, else the text
from experiments import RESULTS_DIR
from experiments.bench import same_plan
from experiments.ceiling_recipes import wall_with_current_ceiling
from experiments.jobs import pool_map, prepare_data, run_job
from experiments.machines import FROM_SCRATCH
from experiments.plan import BenchPlan
from experiments.stats import chance_of_gap, spread_of_set_means, variance_shares
from experiments.wording import count_word, load, premise

ROW = "PPKT (A/A)"  # the same job as the PPKT row's: another seed set of the same method
FOLDER = RESULTS_DIR / "noise_floor_sets_amd_epyc_17"  # five sets on the AMD EPYC of model 17
THIRD_SET = RESULTS_DIR / "noise_floor_third_set_runs"  # seeds 200-207 on the committed jobs' machine
HERE = "experiments/noise_floor_sets.py"


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


def seeds_for_power(sigma: float, gap: float = 1.0) -> int:
    """Seeds a side for two sets' difference of means to stay under ``gap`` in 95 % of draws:
    the smallest n with 1.96 · sigma · sqrt(2 / n) <= gap."""
    return int(np.ceil(2 * (1.96 * sigma / gap) ** 2))


def _miou(runs) -> np.ndarray:
    return 100 * np.array([r["miou"] for r in runs])


def reading() -> dict:
    """Everything the notes quote, from the committed files: the five-set summary, the from-scratch
    report, the committed bench's PPKT and A/A jobs, and seeds 200-207 on both machine kinds."""
    summary, report = load(FOLDER / "noise_floor_sets.json"), load(FROM_SCRATCH)
    jobs = {j["seed"]: j for j in (load(p) for p in FOLDER.glob("ppkt__a_a_seed*.json"))}
    premise(sorted(jobs) == sorted(s for seeds in summary["job_seeds"].values() for s in seeds), "every job of the sets", HERE)
    bench = {row: [load(p) for p in sorted((RESULTS_DIR / "bench_runs").glob(pattern))]
             for row, pattern in (("PPKT", "ppkt_seed*.json"), ("A/A", "ppkt__a_a_seed*.json"))}
    third = {j["seed"]: j for j in (load(p) for p in THIRD_SET.glob("ppkt__a_a_seed*.json"))}
    return {"summary": summary, "report": report, "jobs": jobs, "bench": bench, "third": third,
            "gap": 100 * report["summary"]["differences"]["PPKT (A/A) - PPKT"]["miou"]["mean"]}


def folder_notes() -> str:
    """What the five seed sets show: results/noise_floor_sets_amd_epyc_17/README.md's reading."""
    r = reading()
    summary, jobs, s = r["summary"], r["jobs"], r["summary"]["spread"]
    means = {k: v["mean"] for k, v in s["sets"].items()}
    premise(max(means, key=means.get) == "100–107", "One set is the outlier, and it is the A/A set", HERE)
    premise(s["p"] < 0.05 and s["std_of_means"] > s["predicted_std_of_means"], "scatter more than independent seeds predict", HERE)
    premise(max(summary["variance_shares"], key=summary["variance_shares"].get) == "traffic_cone",
            "The traffic cone carries the largest share", HERE)
    others = [k for k in means if k != "100–107"]
    cone = summary["class_iou"]["traffic_cone"]["per_set"]
    third = {k: 100 * j["miou"] for k, j in r["third"].items()}
    here = {k: 100 * jobs[k]["miou"] for k in third}
    committed_sets = [_miou(r["bench"]["PPKT"]), _miou(r["bench"]["A/A"]), np.array(list(third.values()))]
    committed_sigma = float(np.sqrt(np.mean([v.var(ddof=1) for v in committed_sets])))
    chance, gap = summary["chance_of_gap"], f"{r['gap']:.2f}"
    minutes = sum(j["seconds"] for j in jobs.values()) / 60
    steps = float(np.median([j["pretrain_seconds_per_step"] for j in jobs.values()]))
    need = seeds_for_power(s["pooled_std"])
    return (
        f"The {len(jobs)} jobs took {minutes:.0f} one-thread minutes, about {minutes / 2:.0f} minutes on 2 cores "
        f"({steps:.2f} s per PPKT step, median).\n"
        "\n"
        "What it shows:\n"
        "\n"
        "- **One set is the outlier, and it is the A/A set.** Seeds 100–107 score highest. The other four\n"
        f"  sets' means lie within {max(abs(means[a] - means[b]) for a in others for b in others):.2f} points of one another.\n"
        "- **The set means scatter more than independent seeds predict, but only just.** Their std is\n"
        f"  {s['std_of_means']:.2f} points, against the {s['predicted_std_of_means']:.2f} that independent seeds with the "
        f"pooled per-seed std of\n  {s['pooled_std']:.2f} predict. A one-way ANOVA over the five sets gives p = {s['p']:.3f}.\n"
        "- **The bench's A/A gap is a rare split.** Take all 40 seeds as one pool and draw two disjoint sets\n"
        f"  of 8 at random. Their means differ by at least 1 point in {100 * chance['1.0']:.1f} % of draws, and by the\n"
        f"  from-scratch bench's {gap} points in {100 * chance[gap]:.1f} % of draws.\n"
        "- **Nothing in the code reads a seed's size.** A seed reaches a run only as the seed of NumPy's\n"
        "  generators per (seed, epoch, scan) and of torch's generators for the initialisation, the data order\n"
        "  and the pair sampling.\n"
        "- So either seeds 100–107 are a rare draw, or those particular seeds have an effect that nothing here\n"
        "  explains. The two realizations do not count as two independent draws of that set: they share each\n"
        "  seed's initialisation and data order.\n"
        "- **One small class makes the largest share.** The traffic cone carries the largest share of the\n"
        "  mIoU's variance over the 40 seeds (`experiments.stats.variance_shares`), and its IoU per set\n"
        f"  moves by up to {max(cone.values()) - min(cone.values()):.1f} points.\n"
        "- **The same seeds on the committed kind of machine land close.** PPKT on seeds 200–207 ran on the\n"
        "  Intel machine of the committed table (`../noise_floor_third_set_runs/`) and here. The set means\n"
        f"  agree to {abs(np.mean(list(third.values())) - np.mean(list(here.values()))):.1f} points, and single seeds "
        f"differ by up to {max(abs(third[k] - here[k]) for k in here):.1f}.\n"
        "\n"
        "What it means for the bench's power check: at this machine's per-seed spread, two sets of 8\n"
        f"independent seeds pass the 1-point A/A check in about {100 - round(100 * chance['1.0'])} % of draws. "
        "To pass in 95 % of draws, each\n"
        f"side needs n seeds with 1.96 · σ · √(2/n) ≤ 1: {need} a side at σ = {s['pooled_std']:.2f}. The committed "
        f"table's σ of\n{committed_sigma:.2f} would need {seeds_for_power(committed_sigma)}."
    )


def results_page_notes() -> str:
    """docs/results.md's reading of the noise floor: the A/A gap, the third set, the five sets, the cone."""
    r = reading()
    summary, report, s = r["summary"], r["report"], r["summary"]["spread"]
    bench = load(RESULTS_DIR / "bench.json")["summary"]
    d = bench["differences"]["PPKT (A/A) - PPKT"]["miou"]
    ppkt, aa, third = _miou(r["bench"]["PPKT"]), _miou(r["bench"]["A/A"]), _miou(r["third"].values())
    premise(len(ppkt) == len(aa) == len(third) == 8, "eight seeds a side", HERE)
    means = {k: v["mean"] for k, v in s["sets"].items()}
    others = [k for k in means if k != "100–107"]
    premise(max(means, key=means.get) == "100–107", "the one outlier", HERE)
    # the class that makes the largest part of the committed A/A gap
    iou = lambda runs, c: 100 * np.array([j["per_class"][c] for j in runs])  # noqa: E731
    classes = list(r["bench"]["PPKT"][0]["per_class"])
    shares = {c: (iou(r["bench"]["A/A"], c).mean() - iou(r["bench"]["PPKT"], c).mean()) / len(classes) for c in classes}
    premise(max(shares, key=shares.get) == "traffic_cone", "the traffic cone makes the largest part", HERE)
    c_ppkt, c_aa = iou(r["bench"]["PPKT"], "traffic_cone"), iou(r["bench"]["A/A"], "traffic_cone")
    need = seeds_for_power(s["pooled_std"])
    ppkt_job = np.mean([j["seconds"] for j in report["runs"] if j["row"].startswith("PPKT")]) / 60
    extra = 2 * (need - 8) * ppkt_job
    wall = wall_with_current_ceiling(report) + extra / 2
    chance, gap = summary["chance_of_gap"], f"{r['gap']:.2f}"
    n = len(BenchPlan().seeds)
    resolved = 1.96 * s["pooled_std"] * np.sqrt(2 / n)
    return (
        f"The A/A row differs from PPKT by {aa.mean() - ppkt.mean():+.1f} mIoU points over eight seeds a side "
        f"(1 asked; Welch interval\n{100 * d['low']:+.1f} to {100 * d['high']:+.1f}). "
        "As a diagnostic (not a row of the bench), PPKT on a third disjoint set,\n"
        "seeds 200–207 (`experiments/results/noise_floor_third_set_runs/`), lands between the two:\n"
        f"{third.mean():.1f} ± {third.std(ddof=1):.1f}, {third.mean() - ppkt.mean():+.1f} above the PPKT row and "
        f"{aa.mean() - third.mean():.1f} below the A/A row.\n"
        "Nothing in the code reads a seed's size (a seed reaches the run only as the seed of NumPy's generators\n"
        "per (seed, epoch, scan) and of torch's for the initialisation, the data order and the pair sampling),\n"
        "and five sets say more than three: on the AMD EPYC of the from-scratch run (below), PPKT ran on three\n"
        "more disjoint sets of 8, seeds 8–15, 200–207 and 300–307 (`python -m experiments.noise_floor_sets`,\n"
        "`experiments/results/noise_floor_sets_amd_epyc_17/`). There the A/A set 100–107 is the one outlier\n"
        f"({means['100–107']:.1f}, against {min(means[k] for k in others):.1f} to {max(means[k] for k in others):.1f} "
        f"for the four others); the five set means spread by {s['std_of_means']:.2f} points (std)\n"
        f"against the {s['predicted_std_of_means']:.2f} that independent seeds with the pooled per-seed std of "
        f"{s['pooled_std']:.2f} predict (one-way ANOVA\np = {s['p']:.3f}), and two sets of 8 drawn at random from all "
        f"40 seeds differ by 1 point or more in {100 * chance['1.0']:.1f} %\n"
        f"of draws, by that bench's {gap} in {100 * chance[gap]:.1f} %. So the A/A gap is a rare draw of seeds 100–107, "
        "made twice\nby two realizations that share each seed's initialisation and data order, or an effect of those\n"
        f"seeds that nothing here explains; at that spread, 8 seeds a side pass the 1-point check in about "
        f"{100 - round(100 * chance['1.0'])} %\n"
        f"of draws, and 95 % would take {need} a side: {need - 8} more PPKT seeds on each side, {extra:.0f} more "
        "one-thread\n"
        f"minutes at the AMD EPYC of model 17's {ppkt_job:.1f} per PPKT job, which would take the bench there to about "
        f"{wall:.0f}\nmin of wall time{', past its 2-hour budget' if wall > 120 else ''}. "
        "The largest part of the committed A/A gap is one small\n"
        f"class: the traffic cone's IoU is {c_ppkt.mean():.1f} ± {c_ppkt.std(ddof=1):.1f} over the eight PPKT seeds "
        f"({count_word(int((c_ppkt < c_aa.min()).sum()))} of them under\nevery A/A seed's) "
        f"against {c_aa.mean():.1f} ± {c_aa.std(ddof=1):.1f} over the A/A seeds, which alone makes "
        f"+{shares['traffic_cone']:.2f} of the +{aa.mean() - ppkt.mean():.2f} mIoU\n"
        f"points (mIoU is the mean over {len(classes)} classes). At this size, differences between rows under about "
        f"{resolved:.1f} mIoU\npoints (1.96 σ √(2/{n}) for {n} seeds a row at the pooled σ) are not resolved."
    )


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

"""The paper's ablation ladder on the bench: which of CMCR's parts keeps (or loses) what occupancy teaches.

    python -m experiments ladder            # the rungs x 5 seeds on the bench set (resumable)
    python -m experiments ladder --smoke    # the same pipeline at toy size, minutes

The bench (``experiments.bench``) finds CMCR ≈ PPKT while occupancy alone tells the geometry twins
apart better than PPKT. The ladder adds CMCR's parts to PPKT one at a time, as the paper's ablation
does (``cmcr.ABLATION_STEPS``): ``+ decoupling``, ``+ codebook``, ``+ MIM``, ``+ GeoMIM``, then
``CMCR`` (the bench's own row, which adds occupancy and intensity). Beside it:

* ``PPKT + occupancy``: the NCE and the occupancy/intensity terms alone (no decoupling, codebook or
  MIM): does the LiDAR-only target's gain survive next to the NCE at all?
* diagnostic rows ``CMCR (occupancy ×w)``, named as such (the paper's weights stay the defaults): the
  occupancy and intensity weights raised by ``w``, with ``w`` set from the measured per-term gradient
  shares (``cmcr_lite.gradients``), never from val numbers.

Every job is a bench job (``experiments.jobs.run_job``: same seeds, pretraining recipe, read-out and checkpoint
folders), so the bench's random-init, PPKT, CMCR and occupancy-only results are reused, never rerun. Output:
``experiments/results/<results_name>.{json,md,png}`` with the paired differences (95 % Student-t
intervals) of every row against PPKT and of every rung against the rung below, and each new job's
result in ``experiments/results/<results_name>_runs/``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from experiments import RESULTS_DIR
from experiments.jobs import job_seconds, pool_map, prepare_data, run_job, write_results
from experiments.plan import COLUMNS, LADDER, NCE_AND_OCCUPANCY, BenchPlan, diagnostic_row, job_result
from experiments.report import COLUMN_TITLES, load_report, paired_differences, rescored, summarize_rows

RUNGS = ("PPKT",) + LADDER + ("CMCR",)
REUSED = ("random init", "PPKT", "CMCR", "occupancy only")  # the bench's rows, read from its results


@dataclass
class LadderPlan:
    """The ladder's rows on the bench's plan (seeds, recipe, read-out, result folder)."""
    bench: BenchPlan = field(default_factory=BenchPlan)
    # diagnostic weights w of the rows "CMCR (occupancy ×w)"; empty: the ladder only
    diagnostic_weights: tuple = ()
    results_name: str = "ladder"

    @classmethod
    def smoke(cls, **overrides) -> "LadderPlan":
        """The rows on the bench's smoke plan (2 seeds, 1 epoch, the notebook-size set), one diagnostic row."""
        return replace(cls(bench=BenchPlan.smoke(), diagnostic_weights=(10,), results_name="ladder_smoke"),
                       **overrides)

    def rows(self) -> tuple:
        """Every row of the report, in table order."""
        return (("random init",) + RUNGS + (NCE_AND_OCCUPANCY, "occupancy only")
                + tuple(diagnostic_row(w) for w in self.diagnostic_weights))

    def differences(self) -> tuple:
        """(row, minus row) pairs: every row against PPKT, each rung against the one below, and the
        diagnostic rows against CMCR."""
        rows = self.rows()
        pairs = [(r, "PPKT") for r in rows if r not in ("PPKT", "random init")]
        pairs += [(a, b) for b, a in zip(RUNGS[1:-1], RUNGS[2:])]
        pairs += [(diagnostic_row(w), "CMCR") for w in self.diagnostic_weights]
        return tuple(pairs)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def ladder_jobs(plan: LadderPlan) -> list:
    """[(row, seed)] of every row on the bench's seeds: the ladder's rows, slowest first, then the
    diagnostic rows (so a call cut short leaves the paper's ablation complete first)."""
    rows = ["CMCR", "occupancy only", NCE_AND_OCCUPANCY, "+ GeoMIM", "+ MIM", "+ codebook", "+ decoupling", "PPKT",
            "random init"]
    rows += [diagnostic_row(w) for w in plan.diagnostic_weights]
    return [(row, s) for row in rows for s in plan.bench.seeds]


def summarize_ladder(results: list, plan: LadderPlan) -> dict:
    """{"rows": ..., "differences": ...} as the bench's summary, over the ladder's rows and pairs."""
    rows, by_row = summarize_rows(rescored(results), plan.rows())
    return {"rows": rows, "differences": paired_differences(by_row, plan.differences())}


LADDER_COLUMNS = ("miou", "geometry twins told apart", "appearance twins told apart",
                  "geometry twins in features", "geometry twins in features (MLP)")


def markdown_ladder(summary: dict, plan: LadderPlan, minutes: float) -> str:
    """ladder.md: the rows (mean ± sample std) and the paired differences with their intervals."""
    rows, diffs = summary["rows"], summary["differences"]
    b = plan.bench
    lines = [f"# The ablation ladder on the bench: seeds {list(b.seeds)}, {b.pretrain_epochs} pretraining epochs "
             f"({b.pretrain_schedule} learning rate)", "",
             f"Compute: {minutes:.0f} min of one-thread jobs in all (the reused bench rows included). Values in %, "
             "mean ± sample std over seeds; the read-out is the bench's (see bench.md). Diagnostic rows "
             "(`CMCR (occupancy ×w)`) are not the paper's method: its weights are 1.", "",
             "| row | seeds | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " | s / step |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for row in plan.rows():
        if row in rows:
            cells = [f"{100 * rows[row][c]['mean']:.1f} ± {100 * rows[row][c]['std']:.1f}" for c in COLUMNS]
            sps = rows[row].get("seconds_per_step")
            lines.append(f"| {row} | {len(rows[row]['seeds'])} | " + " | ".join(cells)
                         + f" | {'' if sps is None else f'{sps:.2f}'} |")
    lines += ["", "## Paired differences (points of %, mean and 95 % interval over the seeds both rows have)", "",
              "| difference | " + " | ".join(COLUMN_TITLES[c] for c in LADDER_COLUMNS) + " |",
              "|---" * (len(LADDER_COLUMNS) + 1) + "|"]
    for name, d in diffs.items():
        cells = [f"{100 * d[c]['mean']:+.1f} [{100 * d[c]['low']:+.1f}, {100 * d[c]['high']:+.1f}]"
                 for c in LADDER_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ladder_figure(summary: dict, path: Path):
    """One panel per column of mIoU / geometry twins / appearance twins: each row's paired difference
    against PPKT with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.runtime import atomic_path

    names = [n for n in summary["differences"] if n.endswith(" - PPKT")]
    cols = ("miou", "geometry twins told apart", "appearance twins told apart")
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(names) + 1.6), sharey=True, constrained_layout=True)
    for ax, col in zip(axes, cols):
        for i, name in enumerate(names):
            d = summary["differences"][name][col]
            ax.errorbar(100 * d["mean"], i, xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]],
                        fmt="o", color="C3" if "×" in name else "C0", capsize=3)
        ax.axvline(0, color="k", lw=1)
        ax.set(title=f"{COLUMN_TITLES[col]}: row − PPKT", xlabel="points of % (95 % interval)")
    axes[0].set_yticks(range(len(names)), [n.removesuffix(" - PPKT") for n in names])
    axes[0].invert_yaxis()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def ladder(plan: LadderPlan | None = None, progress: bool = True, results_dir: Path | None = None,
           report_only: bool = False) -> dict:
    """Run (or resume) every job of ``plan`` and write ``<results_dir>/<results_name>.{json,md,png}``.
    The new rows' job results go to ``<results_name>_runs/``; PPKT, CMCR and occupancy only are the
    bench's (``<bench.results_name>_runs/``), reused when there. ``report_only``: run nothing, and
    summarise the job results that are there (the report then says how many seeds each row has)."""
    plan = plan or LadderPlan()
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    root = None if report_only else prepare_data(plan.bench, progress)
    # the bench's rows are read from (or, when missing, run into) the bench's folder; the ladder's own
    # rows go to their own folder
    bench_runs, own_runs = results_dir / f"{plan.bench.results_name}_runs", results_dir / f"{plan.results_name}_runs"
    jobs = [(plan.bench.to_dict(), root, row, seed, str(bench_runs if row in REUSED else own_runs))
            for row, seed in ladder_jobs(plan)]
    if report_only:  # summarise the jobs done so far (e.g. while a long call is still running)
        done = [job_result(runs, row, seed) for _, _, row, seed, runs in jobs]
        results = [json.loads(p.read_text()) for p in done if p.is_file()]
    else:
        results = pool_map(run_job, jobs, plan.bench.workers, "ladder jobs", progress)
    minutes = sum(job_seconds(r) for r in results) / 60
    summary = summarize_ladder(results, plan)
    report = {"plan": plan.to_dict(), "minutes_this_call": (time.time() - t0) / 60, "job_minutes": minutes,
              "summary": summary, "runs": results}
    write_results(results_dir, plan.results_name, report, markdown_ladder(summary, plan, minutes))
    ladder_figure(summary, results_dir / f"{plan.results_name}.png")
    return report


def load_ladder(name: str = "ladder", results_dir: Path | None = None) -> dict | None:
    """The written ``<name>.json`` report, or None when the ladder has not been run."""
    return load_report(name, results_dir)


CONTROL_COLUMNS = ("miou", "geometry twins told apart", "appearance twins told apart")


def batchnorm_control(running: dict, recalibrated: dict, columns=CONTROL_COLUMNS) -> dict:
    """The same trunks read out with the BatchNorm statistics pretraining left (``running``, a ladder
    report) and with statistics re-estimated on the train scans (``recalibrated``, a ladder report of
    ``--batchnorm recalibrated``), on the seeds the recalibrated report has.

    Returns {"seeds", "rows", "columns": {column: {"running": {row: mean}, "recalibrated": {row: mean},
    "tau": Kendall's tau between the two orders of the rows, "same_order": bool}}, "differences":
    {"row - PPKT": {"running": {column: {mean, low, high}}, "recalibrated": ...}}}."""
    from scipy import stats

    seeds = sorted(recalibrated["plan"]["bench"]["seeds"])
    plan = LadderPlan(diagnostic_weights=tuple(recalibrated["plan"]["diagnostic_weights"]))
    same_seeds = summarize_ladder([r for r in running["runs"] if r["seed"] in seeds], plan)
    rec = recalibrated["summary"]
    rows = [r for r in plan.rows() if r in same_seeds["rows"] and r in rec["rows"]]
    out = {"seeds": seeds, "rows": rows, "columns": {}, "differences": {}}
    for col in columns:
        a = {r: same_seeds["rows"][r][col]["mean"] for r in rows}
        b = {r: rec["rows"][r][col]["mean"] for r in rows}
        out["columns"][col] = {"running": a, "recalibrated": b,
                               "tau": float(stats.kendalltau(list(a.values()), list(b.values())).statistic),
                               "same_order": sorted(rows, key=a.get) == sorted(rows, key=b.get)}
    for name, d in rec["differences"].items():
        if name.endswith(" - PPKT") and name in same_seeds["differences"]:
            out["differences"][name] = {"running": same_seeds["differences"][name], "recalibrated": d}
    return out


def batchnorm_sentences(control: dict) -> str:
    """What the BatchNorm control shows, in words, every number read from :func:`batchnorm_control`."""
    seeds = control["seeds"]
    parts = []
    for col, c in control["columns"].items():
        title = COLUMN_TITLES[col]
        parts.append(f"{title}: " + ("the same order" if c["same_order"] else "another order")
                     + f" (Kendall's τ {c['tau']:.2f})")
    text = (f"Read out with BatchNorm statistics re-estimated on the train scans (seeds {seeds[0]}–{seeds[-1]}, "
            f"{len(control['rows'])} rows), against the running statistics on the same seeds: "
            + "; ".join(parts) + ".")
    geo, app = "geometry twins told apart", "appearance twins told apart"
    for name in ("occupancy only - PPKT", "CMCR - PPKT", "PPKT + occupancy - PPKT"):
        d = control["differences"].get(name)
        if d:
            text += (f" {name.replace(' - ', ' − ')}: geometry twins {says(d['recalibrated'][geo])} recalibrated, "
                     f"{says(d['running'][geo])} running; appearance twins {says(d['recalibrated'][app])} against "
                     f"{says(d['running'][app])}.")
    r = control["columns"][app]
    if "random init" in r["running"] and "PPKT" in r["running"]:
        text += (f" Appearance twins told apart by random init: {100 * r['running']['random init']:.1f} % running, "
                 f"{100 * r['recalibrated']['random init']:.1f} % recalibrated; by PPKT "
                 f"{100 * r['running']['PPKT']:.1f} % and {100 * r['recalibrated']['PPKT']:.1f} %.")
    return text


def step_seconds(summary: dict) -> dict:
    """{row: seconds per pretraining step} of the rows that measured it."""
    return {row: r["seconds_per_step"] for row, r in summary["rows"].items() if "seconds_per_step" in r}



# ------------------------------------------------------------------------------------------ reading
# What "keeps both" means for a row, fixed before the diagnostic rows ran: it keeps PPKT's appearance
# twins when it tells them apart within APPEARANCE_TOLERANCE of PPKT (mean paired difference), and it
# keeps occupancy's geometry twins when its paired gain over PPKT is at least GEOMETRY_SHARE of occupancy
# only's, with a 95 % interval that excludes 0.
APPEARANCE_TOLERANCE = 0.02
GEOMETRY_SHARE = 0.5


def says(d: dict) -> str:
    """A difference in points with its interval: '+7.6 [+4.4, +10.8]'."""
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def keeps_both(summary: dict, row: str) -> dict | None:
    """{"appearance", "geometry", "both"} for ``row`` by the rule above, or None when its paired
    differences (or occupancy only's) are missing."""
    diffs = summary["differences"]
    d, occ = diffs.get(f"{row} - PPKT"), diffs.get("occupancy only - PPKT")
    if d is None or occ is None or d["geometry twins told apart"]["low"] != d["geometry twins told apart"]["low"]:
        return None  # missing, or one seed so far (no interval)
    geometry, appearance = d["geometry twins told apart"], d["appearance twins told apart"]
    keeps = {"appearance": appearance["mean"] >= -APPEARANCE_TOLERANCE,
             "geometry": geometry["low"] > 0
             and geometry["mean"] >= GEOMETRY_SHARE * occ["geometry twins told apart"]["mean"]}
    return {**keeps, "both": keeps["appearance"] and keeps["geometry"]}


def ladder_verdict(summary: dict) -> str:
    """The ladder in words, every number read from ``summary`` (a ladder report's ``"summary"``):
    each rung against the one below, PPKT + occupancy and occupancy only against PPKT, and the
    diagnostic rows by :func:`keeps_both`."""
    diffs, rows = summary["differences"], summary["rows"]
    cols = (("geometry twins told apart", "geometry twins"), ("appearance twins told apart", "appearance twins"),
            ("miou", "mIoU"))

    def line(name):
        d = diffs[name]
        if any(d[col]["low"] != d[col]["low"] for col, _ in cols):  # NaN: one seed in common, no interval
            return f"**{name}**: " + "; ".join(f"{label} {100 * d[col]['mean']:+.1f}" for col, label in cols) + (
                " (one seed: no interval yet)")
        zero = [label for col, label in cols if d[col]["low"] <= 0 <= d[col]["high"]]
        return (f"**{name}**: " + "; ".join(f"{label} {says(d[col])}" for col, label in cols)
                + (f" (intervals that include 0: {', '.join(zero)})" if zero else " (no interval includes 0)"))
    out = ["Each rung against the one below, paired over the seeds (points of %, 95 % interval):"]
    out += [f"- {line(f'{a} - {b}')}" for b, a in zip(RUNGS[:-1], RUNGS[1:]) if f"{a} - {b}" in diffs]
    out.append("Against PPKT:")
    out += [f"- {line(f'{r} - PPKT')}" for r in ("CMCR", NCE_AND_OCCUPANCY, "occupancy only") if f"{r} - PPKT" in diffs]
    diagnostic = [r for r in rows if r.startswith("CMCR (occupancy ×")]
    if diagnostic:
        out.append(f"Diagnostic rows (not the paper's weights), against PPKT; a row keeps PPKT's appearance twins when "
                   f"it stays within {100 * APPEARANCE_TOLERANCE:.0f} points of them, and occupancy's geometry twins when "
                   f"its gain is at least {100 * GEOMETRY_SHARE:.0f} % of occupancy only's with an interval above 0:")
        for r in diagnostic:
            k = keeps_both(summary, r)
            verdict = "" if k is None else (" — keeps both" if k["both"] else " — keeps " + (
                "the appearance twins only" if k["appearance"] else "the geometry twins only" if k["geometry"]
                else "neither"))
            out.append(f"- {line(f'{r} - PPKT')} ({len(rows[r]['seeds'])} seeds){verdict}")
    return "\n".join(out)


def readme_block(summary: dict, mechanism: dict | None = None) -> str:
    """The README's ladder summary: each row's paired difference to PPKT on the twins and mIoU, and
    (given a mechanism report) the gradient shares in one sentence. Generated, never typed."""
    cols = ("geometry twins told apart", "appearance twins told apart", "miou")
    lines = ["| row − PPKT (points, 95 % interval) | seeds | geometry twins told apart | appearance twins told apart | mIoU |",
             "|---|---|---|---|---|"]
    for name, d in summary["differences"].items():
        row, _, ref = name.partition(" - ")
        if ref == "PPKT":
            lines.append(f"| {row} | {len(summary['rows'][row]['seeds'])} | " + " | ".join(says(d[c]) for c in cols) + " |")
    if mechanism is not None:
        t = mechanism["lite"]["table"]
        lidar = sum(t[k]["share"]["median"] for k in ("occupancy", "intensity"))
        lines += ["", f"Over a bench pretraining of CMCR at the paper's weights, the NCE carries a median "
                      f"{100 * t['nce']['share']['median']:.0f} % of the 3D trunk's gradient, occupancy and intensity "
                      f"together {100 * lidar:.0f} % (`experiments/results/mechanism.md`)."]
    return "\n".join(lines)

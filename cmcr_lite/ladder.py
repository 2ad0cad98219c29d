"""The paper's ablation ladder on the bench: which of CMCR's parts keeps (or loses) what occupancy teaches.

    python -m cmcr_lite.experiments ladder            # the rungs x 5 seeds on the bench set (resumable)
    python -m cmcr_lite.experiments ladder --smoke    # the same pipeline at toy size, minutes

The bench (``cmcr_lite.bench``) finds CMCR ≈ PPKT while occupancy alone tells the geometry twins
apart better than PPKT. The ladder adds CMCR's parts to PPKT one at a time, as the paper's ablation
does (``cmcr.ABLATION_STEPS``): ``+ decoupling``, ``+ codebook``, ``+ MIM``, ``+ GeoMIM``, then
``CMCR`` (the bench's own row, which adds occupancy and intensity). Beside it:

* ``PPKT + occupancy``: the NCE and the occupancy/intensity terms alone (no decoupling, codebook or
  MIM): does the LiDAR-only target's gain survive next to the NCE at all?
* diagnostic rows ``CMCR (occupancy ×w)``, named as such (the paper's weights stay the defaults): the
  occupancy and intensity weights raised by ``w``, with ``w`` set from the measured per-term gradient
  shares (``cmcr_lite.gradients``), never from val numbers.

Every job is a bench job (``bench.run_job``: same seeds, pretraining recipe, read-out and checkpoint
folders), so the bench's PPKT, CMCR and occupancy-only results are reused, never rerun. Output:
``benchmarks/results/<results_name>.{json,md,png}`` with the paired differences (95 % Student-t
intervals) of every row against PPKT and of every rung against the rung below, and each new job's
result in ``benchmarks/results/<results_name>_runs/``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cmcr_lite.bench import (COLUMN_TITLES, COLUMNS, LADDER, NCE_AND_OCCUPANCY, RESULTS_DIR, BenchPlan,
                             diagnostic_row, job_seconds, paired_differences, pool_map, prepare_data, rescored,
                             run_job, summarize_rows)

RUNGS = ("PPKT",) + LADDER + ("CMCR",)
REUSED = ("PPKT", "CMCR", "occupancy only")  # the bench's rows, read from its results


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
        return RUNGS + (NCE_AND_OCCUPANCY, "occupancy only") + tuple(diagnostic_row(w) for w in self.diagnostic_weights)

    def differences(self) -> tuple:
        """(row, minus row) pairs: every row against PPKT, each rung against the one below, and the
        diagnostic rows against CMCR."""
        rows = self.rows()
        pairs = [(r, "PPKT") for r in rows if r != "PPKT"]
        pairs += [(a, b) for b, a in zip(RUNGS[1:-1], RUNGS[2:])]
        pairs += [(diagnostic_row(w), "CMCR") for w in self.diagnostic_weights]
        return tuple(pairs)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def ladder_jobs(plan: LadderPlan) -> list:
    """[(row, seed)] of every row on the bench's seeds, the slowest first (the CMCR-like rows)."""
    slow_first = [diagnostic_row(w) for w in plan.diagnostic_weights] + list(REUSED[1:]) + [
        NCE_AND_OCCUPANCY, "+ GeoMIM", "+ MIM", "+ codebook", "+ decoupling", "PPKT"]
    return [(row, s) for row in slow_first for s in plan.bench.seeds]


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
             "| row | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " | s / step |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for row in plan.rows():
        if row in rows:
            cells = [f"{100 * rows[row][c]['mean']:.1f} ± {100 * rows[row][c]['std']:.1f}" for c in COLUMNS]
            sps = rows[row].get("seconds_per_step")
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {'' if sps is None else f'{sps:.2f}'} |")
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


def ladder(plan: LadderPlan | None = None, progress: bool = True, results_dir: Path | None = None) -> dict:
    """Run (or resume) every job of ``plan`` and write ``<results_dir>/<results_name>.{json,md,png}``.
    The new rows' job results go to ``<results_name>_runs/``; PPKT, CMCR and occupancy only are the
    bench's (``<bench.results_name>_runs/``), reused when there."""
    from cmcr_lite.runtime import atomic_path

    plan = plan or LadderPlan()
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    root = prepare_data(plan.bench, progress)
    # the bench's rows are read from (or, when missing, run into) the bench's folder; the ladder's own
    # rows go to their own folder
    bench_runs, own_runs = results_dir / f"{plan.bench.results_name}_runs", results_dir / f"{plan.results_name}_runs"
    jobs = [(plan.bench.to_dict(), root, row, seed, str(bench_runs if row in REUSED else own_runs))
            for row, seed in ladder_jobs(plan)]
    results = pool_map(run_job, jobs, plan.bench.workers, "ladder jobs", progress)
    minutes = sum(job_seconds(r) for r in results) / 60
    summary = summarize_ladder(results, plan)
    report = {"plan": plan.to_dict(), "minutes_this_call": (time.time() - t0) / 60, "job_minutes": minutes,
              "summary": summary, "runs": results}
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(results_dir / f"{plan.results_name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(results_dir / f"{plan.results_name}.md") as tmp:
        tmp.write_text(markdown_ladder(summary, plan, minutes))
    ladder_figure(summary, results_dir / f"{plan.results_name}.png")
    return report


def load_ladder(name: str = "ladder", results_dir: Path | None = None) -> dict | None:
    """The written ``<name>.json`` report, or None when the ladder has not been run."""
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def step_seconds(summary: dict) -> dict:
    """{row: seconds per pretraining step} of the rows that measured it."""
    return {row: r["seconds_per_step"] for row, r in summary["rows"].items() if "seconds_per_step" in r}


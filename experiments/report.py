"""The bench's summary and report: per-row means and sample std over seeds, paired differences with
95 % intervals, the checks that the bench can decide anything, bench.md, bench.png and the verdict
in words."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmcr_lite.analysis.readout import per_pair
from cmcr_lite.metrics import summarize_confusion
from experiments import RESULTS_DIR
from experiments.plan import COLUMNS, DIFFERENCES, PRETRAINED, ROWS, BenchPlan, is_pretrained
from experiments.stats import sample_std, t_interval, welch_interval


def machine_label(m: dict | None) -> str:
    """A job's machine (``runtime.machine()``) in words: ``"AMD EPYC, AVX2"``, with OpenBLAS's kernels
    when recorded; ``"not recorded"`` for the jobs made before machines were."""
    if not m:
        return "not recorded"
    return f"{m['cpu']}, {m['cpu_capability']}" + (f", OpenBLAS {m['blas_kernels']}" if m.get("blas_kernels") else "")


def machines_sentence(rows: dict) -> str:
    """bench.md's note on where the jobs ran, when they did not all run on one kind of machine: their
    step times, and the last bits of their floats, depend on it."""
    kinds = {m for r in rows.values() for m in r.get("machines", [])}
    if len(kinds) < 2:
        return ""
    where = "; ".join(f"{m}: " + ", ".join(row for row, r in rows.items() if m in r.get("machines", []))
                      for m in sorted(kinds))
    return (f"The jobs ran on {len(kinds)} kinds of machine, so their times add up compute of different "
            f"speeds (rows by machine: {where}).")


def rescored(results: list) -> list:
    """``results`` with the confusion-matrix columns recomputed from each result's matrix, so a change
    of the metric's rules (``metrics``) reaches results written before it without rerunning their jobs."""
    return [{**r, **summarize_confusion(np.asarray(r["confusion"])), "per_pair": per_pair(np.asarray(r["confusion"]))}
            if "confusion" in r else r for r in results]


def summarize_rows(results: list, row_names) -> tuple:
    """(rows, by_row): per row of ``row_names`` that has results, {column: {"mean", "std", "values"}} (sample
    std over seeds) with its seeds, per twin pair and per class means, loss flatness, step time and
    machines; ``by_row``: {row: its results sorted by seed}. ``results`` must be :func:`rescored`."""
    by_row = {row: sorted([r for r in results if r["row"] == row], key=lambda r: r["seed"]) for row in row_names}
    rows = {}
    for row, runs in by_row.items():
        if not runs:
            continue
        rows[row] = {"seeds": [r["seed"] for r in runs]}
        for col in COLUMNS:
            vals = [float(r.get(col, float("nan"))) for r in runs]
            rows[row][col] = {"mean": float(np.nanmean(vals)), "std": sample_std(vals), "values": vals}
        pairs = sorted(runs[0].get("per_pair", {}))
        rows[row]["per_pair"] = {p: float(np.mean([r["per_pair"][p] for r in runs])) for p in pairs}
        rows[row]["per_class"] = {c: float(np.mean([r["per_class"].get(c, np.nan) for r in runs]))
                                  for c in runs[0]["per_class"]}
        curves = [[h["loss"] for h in r["history"]] for r in runs
                  if isinstance(r.get("history"), list) and len(r["history"]) >= 2 and "loss" in r["history"][0]]
        if curves and is_pretrained(row):
            # how flat the end of the curve is: the last epoch's share of the whole drop of the loss
            rows[row]["last_epoch_share"] = float(np.mean([(c[-2] - c[-1]) / (c[0] - c[-1]) for c in curves]))
        steps = [r["pretrain_seconds_per_step"] for r in runs if r.get("pretrain_seconds_per_step") is not None]
        if steps:
            rows[row]["seconds_per_step"] = float(np.mean(steps))
        rows[row]["machines"] = sorted({machine_label(r.get("machine")) for r in runs})
    return rows, by_row


def paired_differences(by_row: dict, pairs, columns=COLUMNS) -> dict:
    """{"a - b": {column: {"mean", "low", "high"}}} for each (a, b) of ``pairs`` whose rows both have
    results: the mean of a - b over the seeds both have, with its 95 % Student-t interval."""
    diffs = {}
    for a, b in pairs:
        if by_row.get(a) and by_row.get(b):
            va, vb = {r["seed"]: r for r in by_row[a]}, {r["seed"]: r for r in by_row[b]}
            common = sorted(set(va) & set(vb))
            diffs[f"{a} - {b}"] = {col: dict(zip(("mean", "low", "high"),
                                                 t_interval([va[s][col] - vb[s][col] for s in common])))
                                   for col in columns}
    return diffs


def summarize(results: list, plan: BenchPlan) -> dict:
    """{"rows": {row: {column: {"mean", "std", "values"}}}, "differences": ..., "checks": ...}, every
    confusion-matrix column recomputed by today's ``metrics`` (:func:`rescored`)."""
    rows, by_row = summarize_rows(rescored(results), ROWS)
    diffs = paired_differences(by_row, DIFFERENCES)
    if "PPKT" in rows and "PPKT (A/A)" in rows:
        aa, ppkt = rows["PPKT (A/A)"], rows["PPKT"]
        diffs["PPKT (A/A) - PPKT"] = {col: dict(zip(("mean", "low", "high"),
                                                    welch_interval(aa[col]["values"], ppkt[col]["values"])))
                                      for col in COLUMNS}
        n = len(plan.seeds)
        if len(aa["seeds"]) > n and len(ppkt["seeds"]) > n:
            # the same floor on the first n seeds of each side, the seed count of every other row: what
            # a bench without the extra noise-floor seeds would have measured
            diffs[f"PPKT (A/A) - PPKT, first {n} seeds"] = {
                col: dict(zip(("mean", "low", "high"), welch_interval(aa[col]["values"][:n], ppkt[col]["values"][:n])))
                for col in COLUMNS}
    return {"rows": rows, "differences": diffs, "checks": threshold_checks(rows)}


def threshold_checks(rows: dict) -> dict:
    """The issue's conditions for the bench to mean something, each {"value", "needed", "holds"}."""
    from cmcr_lite.classes import GEOMETRY_ONLY

    checks = {}
    if "supervised ceiling" in rows:
        c = rows["supervised ceiling"]
        for pair in ("car|truck", "terrain|vegetation"):
            v = c["per_pair"].get(pair, float("nan"))
            checks[f"ceiling tells {pair.replace('|', ' vs ')} apart"] = {"value": v, "needed": ">= 0.90", "holds": bool(v >= 0.9)}
        for name in GEOMETRY_ONLY:
            v = c["per_class"].get(name, float("nan"))
            checks[f"ceiling {name} IoU"] = {"value": v, "needed": ">= 0.60", "holds": bool(v >= 0.6)}
    if "image-only reference" in rows:
        c = rows["image-only reference"]
        for pair in ("driveable_surface|sidewalk", "bus|construction_vehicle"):
            v = c["per_pair"].get(pair, float("nan"))
            checks[f"image-only tells {pair.replace('|', ' vs ')} apart"] = {"value": v, "needed": ">= 0.90", "holds": bool(v >= 0.9)}
        v = c["geometry twins told apart"]["mean"]
        checks["image-only geometry twins near chance"] = {"value": v, "needed": "<= 0.65", "holds": bool(v <= 0.65)}
    if "PPKT" in rows and "PPKT (A/A)" in rows:
        v = abs(rows["PPKT (A/A)"]["miou"]["mean"] - rows["PPKT"]["miou"]["mean"])
        checks["A/A mIoU difference"] = {"value": v, "needed": "<= 0.010", "holds": bool(v <= 0.01)}
        for row in PRETRAINED:
            if row in rows:
                v = rows[row]["miou"]["std"]
                checks[f"{row} mIoU std"] = {"value": v, "needed": "<= 0.015", "holds": bool(v <= 0.015)}
    return checks


COLUMN_TITLES = {"miou": "mIoU", "geometry-only": "geometry-only IoU", "appearance-only": "appearance-only IoU",
                 "both": "both IoU", "geometry twins told apart": "geometry twins told apart",
                 "appearance twins told apart": "appearance twins told apart",
                 "geometry twins in features": "geometry twins in features (linear)",
                 "appearance twins in features": "appearance twins in features (linear)",
                 "geometry twins in features (MLP)": "geometry twins in features (MLP)",
                 "appearance twins in features (MLP)": "appearance twins in features (MLP)"}


def _wall_sentence(wall: dict | None, minutes: float, workers: int) -> str:
    """bench.md's wall time: the measured ``wall_from_scratch`` and where it ran, else the estimate
    ``minutes / workers`` from the summed job times."""
    if not wall:
        return (f"about {minutes / workers:.0f} min of wall time on {workers} cores when run in one go (an "
                "estimate: no call has run every job).")
    n, cpu = wall["workers"], wall["machine"]
    data = ", the dataset's generation and the teacher's training included" if wall["data_made"] else ""
    return (f"{wall['minutes']:.0f} min of wall time measured from scratch, every job in one call on {n} "
            f"worker{'s' if n != 1 else ''} (CPU: {cpu['cpu']}, {cpu['cpu_capability']}){data}.")


def markdown_report(summary: dict, plan: BenchPlan, minutes: float, wall: dict | None = None) -> str:
    """bench.md: the plan, the compute, the table, the differences and the checks. ``minutes``: every
    job's one-thread compute, summed; ``wall``: a report's ``wall_from_scratch`` (None: never measured)."""
    rows, diffs = summary["rows"], summary["differences"]
    n = len(plan.seeds)
    ppkt_seeds = list(plan.seeds) + list(plan.noise_floor_seeds)
    floor = (f"; PPKT also on {list(plan.noise_floor_seeds)}, so the noise floor compares {len(ppkt_seeds)} "
             f"seeds of PPKT with {len(plan.aa_seeds)} of the A/A row {list(plan.aa_seeds)}"
             if plan.noise_floor_seeds else f"; A/A row {list(plan.aa_seeds)}")
    machines = machines_sentence(rows)
    lines = [f"# The bench: {n} seeds per row ({list(plan.seeds)}{floor}), "
             f"{plan.pretrain_epochs} pretraining epochs ({plan.pretrain_schedule} learning rate)", "",
             f"Compute: {minutes:.0f} min of one-thread jobs in all (each job's own time, summed, where it was "
             f"measured); {_wall_sentence(wall, minutes, plan.workers)}"
             + (f" {machines}" if machines else ""), "",
             "Values in %, mean ± sample std over seeds. mIoU and IoU columns: the 16-class read-out on the val "
             "split (a linear softmax probe of the frozen trunk's features, fitted to its optimum by L-BFGS, so "
             "it adds no noise of its own; the supervised ceiling's own predictions; the same probe on the "
             "image-only reference's teacher features at the points' pixels). 'Told apart': balanced "
             "accuracy of each twin against its twin in that confusion matrix (50 = chance). 'In features': a "
             "two-class probe per twin pair on the features themselves, linear (ridge) or a small MLP.", "",
             "| row | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " | s / step |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for row in ROWS:
        if row not in rows:
            continue
        cells = [f"{100 * rows[row][c]['mean']:.1f} ± {100 * rows[row][c]['std']:.1f}" for c in COLUMNS]
        sps = rows[row].get("seconds_per_step")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {'' if sps is None else f'{sps:.2f}'} |")
    lines += ["", "## Differences (points of %, mean and 95 % interval)", "",
              "Paired over the seeds both rows have (Student t); the A/A row is PPKT on other seeds (Welch), the "
              "noise floor.", "",
              "| difference | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |",
              "|---" * (len(COLUMNS) + 1) + "|"]
    for name, d in diffs.items():
        cells = [f"{100 * d[c]['mean']:+.1f} [{100 * d[c]['low']:+.1f}, {100 * d[c]['high']:+.1f}]" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Do the ceilings and the power hold?", "", "| condition | value | needed | holds |",
              "|---|---|---|---|"]
    for name, c in summary["checks"].items():
        lines.append(f"| {name} | {c['value']:.3f} | {c['needed']} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def bench_figure(results: list, summary: dict, path: Path):
    """2 x 4: pretraining loss per epoch for each pretrained row (every seed), then per-seed dots of
    mIoU and of the geometry / appearance twins told apart, and the paired differences with their
    95 % intervals next to the A/A floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.runtime import atomic_path

    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    for ax, row in zip(axes[0], PRETRAINED):
        for r in (r for r in results if r["row"] == row):
            h = r.get("history", [])
            ax.plot([e["epoch"] + 1 for e in h], [e["loss"] for e in h], marker=".", lw=1, label=f"seed {r['seed']}")
        ax.set(title=f"{row}: pretraining loss", xlabel="epoch", ylabel="mean loss of the epoch")
        ax.legend(fontsize=7)
    rows = [r for r in ROWS if r in summary["rows"]]
    for ax, col, title in zip(axes[1][:3], ("miou", "geometry twins told apart", "appearance twins told apart"),
                              ("linear-probe mIoU (%)", "geometry twins told apart (%)",
                               "appearance twins told apart (%)")):
        for i, row in enumerate(rows):
            vals = 100 * np.asarray(summary["rows"][row][col]["values"])
            ax.scatter(vals, np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), s=18)
            ax.plot([vals.mean()] * 2, [i - 0.3, i + 0.3], color="k", lw=2)
        ax.set_yticks(range(len(rows)), rows)
        ax.invert_yaxis()
        ax.set(title=title, xlabel="% (one dot per seed, bar = mean)")
        if col != "miou":
            ax.axvline(50, color="grey", ls=":", lw=1)
    ax = axes[1][3]
    names = list(summary["differences"])
    for i, name in enumerate(names):
        for j, (col, colour) in enumerate((("miou", "C0"), ("geometry twins told apart", "C1"),
                                           ("appearance twins told apart", "C2"))):
            d = summary["differences"][name][col]
            y = i + (j - 1) * 0.22
            ax.errorbar(100 * d["mean"], y, xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]],
                        fmt="o", color=colour, capsize=3, label=COLUMN_TITLES[col] if i == 0 else None)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(title="differences, 95 % interval", xlabel="row − reference (percentage points)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # under the axis: no row hidden
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def summary_table(summary: dict, columns=("miou", "geometry twins told apart", "appearance twins told apart")) -> str:
    """The README's bench table: each row's seeds and ``columns`` (mean ± sample std, %)."""
    lines = ["| row | seeds | " + " | ".join(COLUMN_TITLES[c] for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for row, r in summary["rows"].items():
        cells = [f"{100 * r[c]['mean']:.1f} ± {100 * r[c]['std']:.1f}" for c in columns]
        lines.append(f"| {row} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_report(name: str = "bench", results_dir: Path | None = None) -> dict | None:
    """The written ``<name>.json`` report, or None when the bench has not been run."""
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _significant(d: dict) -> bool:
    return d["low"] > 0 or d["high"] < 0


def bench_verdict(summary: dict) -> str:
    """What the bench shows, in plain words, every number read from ``summary`` (a report's
    ``"summary"``): the ceilings, the noise floor, CMCR − PPKT and occupancy − PPKT on the twins."""
    rows, diffs, checks = summary["rows"], summary["differences"], summary["checks"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    out = []
    ceiling = [k for k in checks if k.startswith("ceiling")]
    failed = [k for k in ceiling if not checks[k]["holds"]]
    if ceiling:
        out.append("**The ceilings.** " + (
            "The supervised LiDAR-only ceiling meets every threshold: both geometry twin pairs are told apart "
            f"(car vs truck {pct(rows['supervised ceiling']['per_pair']['car|truck'])} %, terrain vs vegetation "
            f"{pct(rows['supervised ceiling']['per_pair']['terrain|vegetation'])} %), so what separates them *can* "
            "be learned from the LiDAR." if not failed else
            "The supervised LiDAR-only ceiling falls short on: " + ", ".join(
                f"{k} = {checks[k]['value']:.3f} (needed {checks[k]['needed']})" for k in failed)
            + ": on those, a pretraining that fails may be failing a task the LiDAR cannot do at this size."))
    if "image-only reference" in rows:
        r = rows["image-only reference"]
        out.append(f"The image-only reference tells the appearance twins apart at "
                   f"{pct(r['appearance twins told apart']['mean'])} % and the geometry twins at "
                   f"{pct(r['geometry twins told apart']['mean'])} % (50 = chance): the teacher can hand down "
                   "the first and has nothing to hand down for the second.")
    flat = {row: rows[row]["last_epoch_share"] for row in PRETRAINED if "last_epoch_share" in rows.get(row, {})}
    if flat:
        out.append("**Convergence.** The last pretraining epoch brings " + ", ".join(
            f"{100 * v:.1f} % ({row})" for row, v in flat.items()) + " of the loss's whole drop. " + (
            "The curves are flat." if max(flat.values()) < 0.02 else
            "The pretrainings have not converged: the numbers below are those of trunks still learning."))
    aa = diffs.get("PPKT (A/A) - PPKT")
    if aa:
        first = next((k for k in diffs if k.startswith("PPKT (A/A) - PPKT, first")), None)
        out.append(f"**The noise floor.** PPKT on a second, disjoint seed set ({len(rows['PPKT (A/A)']['seeds'])} "
                   f"seeds against PPKT's {len(rows['PPKT']['seeds'])}) differs from PPKT by "
                   f"{100 * aa['miou']['mean']:+.1f} mIoU points (95 % interval {100 * aa['miou']['low']:+.1f} to "
                   f"{100 * aa['miou']['high']:+.1f}); the per-seed std of PPKT's mIoU is "
                   f"{pct(rows['PPKT']['miou']['std'])} points."
                   + ("" if first is None else
                      f" On the first {first.rsplit('first ', 1)[1]} of each side (the seed count of every other "
                      f"row), the gap was {100 * diffs[first]['miou']['mean']:+.1f} ({100 * diffs[first]['miou']['low']:+.1f} "
                      f"to {100 * diffs[first]['miou']['high']:+.1f})."))
        power = {k: v for k, v in checks.items() if k == "A/A mIoU difference" or k.endswith("mIoU std")}
        short = [f"{k} {100 * v['value']:.1f} points" for k, v in power.items() if not v["holds"]]
        out.append("**Power** (A/A difference ≤ 1 point, per-seed std ≤ 1.5 points in every pretrained row): "
                   + ("holds." if not short else "not reached: " + "; ".join(short) + ". Differences smaller "
                      "than these are not resolved by this bench."))
    for name, label in (("CMCR - PPKT", "CMCR"), ("occupancy only - PPKT", "Occupancy alone")):
        d = diffs.get(name)
        if not d:
            continue
        g, a, m = d["geometry twins told apart"], d["appearance twins told apart"], d["miou"]
        gf, gm = d["geometry twins in features"], d["geometry twins in features (MLP)"]

        def says(x):
            return (f"{100 * x['mean']:+.1f} points ({100 * x['low']:+.1f} to {100 * x['high']:+.1f}, "
                    + ("an interval that excludes 0" if _significant(x) else "an interval that includes 0") + ")")
        out.append(f"**{label} vs PPKT**, paired over the same seeds: geometry twins told apart {says(g)}; "
                   f"geometry twins in the features, linear probe {says(gf)}, MLP probe {says(gm)}; "
                   f"appearance twins told apart "
                   f"{says(a)}; mIoU {says(m)}.")
    return "\n\n".join(out)

"""Can the supervised ceiling reach its plateau in fewer epochs? The bench's ceiling job with other
learning rates and batch sizes, on seeds 0 and 1, resumable.

    python -m experiments.ceiling_recipes [--epochs 30] [--recipe b2_lr0.05 ...] [--seeds 0 1] [--out DIR]
                                         [--dataset bench|notebook] [--dataroot ROOT]

Why: the bench's earlier ceiling (SGD lr 0.05, batch 4, 60 epochs) was a large share of its compute and
still rose at 60 epochs (``results/ceiling_length_amd_epyc_17``); this script chose today's. A training pass costs about the same
whatever the batch size (the same points go through the network), so a recipe that makes more or
larger updates per pass could plateau sooner. The ceiling is a reference, not a method under test:
picking its recipe on val makes it higher, which makes the learnability thresholds harder to fake,
not easier. Each job is ``experiments.jobs.run_job`` with ``BenchPlan.ceiling`` and ``ceiling_epochs`` replaced;
its JSON goes to ``<out>/<recipe>_<epochs>ep/`` (:func:`recipe_folder`); a job already there is read
back, not rerun.
Prints mIoU and the twin checks per recipe, mean over the seeds.

The tables and sentences of the three ceiling folders' notes (``results/ceiling_length_amd_epyc_17``,
``results/ceiling_recipes_amd_epyc_17``, ``results/ceiling_recipes_amd_epyc_23_49``) are read from
their job files here; ``python -m experiments notes`` writes them.
"""
import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from experiments import RESULTS_DIR
from experiments.machines import FROM_SCRATCH, committed_job, committed_minutes, first_difference, session_speed_range
from experiments.plan import BenchPlan
from experiments.wording import load, premise, times


def recipe_name(ceiling: dict) -> str:
    """A ``BenchPlan.ceiling`` in words: ``"b2_lr0.1"`` for batch 2 at lr 0.1."""
    return f"b{ceiling['batch_size']}_lr{ceiling['lr']}"


def recipe_folder(ceiling: dict, epochs: int) -> str:
    """Where a recipe's jobs go under ``--out``: ``"b2_lr0.1_30ep"``."""
    return f"{recipe_name(ceiling)}_{epochs}ep"


# name -> BenchPlan.ceiling (momentum 0.9, weight decay 1e-4, cosine to 0 over the run, as the bench)
RECIPES = {recipe_name(c): c for c in (
    {"lr": 0.05, "lr_head": None, "batch_size": 4},  # the bench's earlier recipe (60 epochs there)
    {"lr": 0.05, "lr_head": None, "batch_size": 2},
    {"lr": 0.1, "lr_head": None, "batch_size": 2},   # the bench's own since (BenchPlan.ceiling, 30 epochs)
    {"lr": 0.1, "lr_head": None, "batch_size": 4},
    {"lr": 0.2, "lr_head": None, "batch_size": 4},
)}
OUT = RESULTS_DIR / "ceiling_recipes_amd_epyc_17"
LENGTHS = RESULTS_DIR / "ceiling_length_amd_epyc_17"  # the earlier recipe at 20, 30 and 40 epochs
AVX2 = RESULTS_DIR / "ceiling_recipes_amd_epyc_23_49"  # the bench's ceiling row, made on another kind of CPU
EARLIER = "b4_lr0.05_60ep (the bench's earlier)"  # the ceiling's recipe before the bench took today's
CURRENT = recipe_folder(BenchPlan().ceiling, BenchPlan().ceiling_epochs)  # "b2_lr0.1_30ep"
HERE = "experiments/ceiling_recipes.py"


def summary_line(name: str, epochs: int, results: list) -> dict:
    """Mean over seeds of what the bench checks on a ceiling (fractions)."""
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    return {"recipe": name, "epochs": epochs, "seeds": [r["seed"] for r in results],
            "miou": mean([r["miou"] for r in results]),
            "car|truck": mean([r["per_pair"]["car|truck"] for r in results]),
            "terrain|vegetation": mean([r["per_pair"]["terrain|vegetation"] for r in results]),
            "minutes": mean([r["seconds"] / 60 for r in results])}


# what the bench checks on a ceiling job, and the four classes of its two geometry twin pairs (fractions)
COLUMNS = [("mIoU", lambda r: r["miou"]), ("car vs truck told apart", lambda r: r["per_pair"]["car|truck"]),
           ("terrain vs vegetation told apart", lambda r: r["per_pair"]["terrain|vegetation"])]
COLUMNS += [(f"{c} IoU", lambda r, c=c: r["per_class"][c]) for c in ("car", "truck", "terrain", "vegetation")]


def recipe_jobs(folder: Path) -> dict:
    """``{"<recipe>_<E>ep": [job, ...] by seed}`` under ``folder``."""
    return {d.name: [load(p) for p in sorted(d.glob("*.json"))] for d in sorted(folder.glob("*ep"))}


def earlier_ceiling_jobs() -> list:
    """The earlier recipe's ceiling jobs on the AMD EPYC of model 17: the from-scratch bench's, by seed."""
    return sorted((r for r in load(FROM_SCRATCH)["runs"] if r["row"] == "supervised ceiling"), key=lambda r: r["seed"])


def ceiling_table(rows: list, first: str = "recipe") -> str:
    """A markdown table of ceiling jobs: one line per ``(name, jobs, spread)``, each column the mean over
    the jobs in % (with the sample std when ``spread``), and the jobs' mean minutes."""
    lines = [f"| {first} | batch | lr | epochs | steps | seeds | " + " | ".join(n for n, _ in COLUMNS) + " | minutes per job |",
             "|---" * (len(COLUMNS) + 7) + "|"]
    for name, runs, spread in rows:
        c = runs[0]["sizes"]["ceiling"]
        vals = [100 * np.array([f(r) for r in runs]) for _, f in COLUMNS]
        cells = [f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if spread else f"{v.mean():.1f}" for v in vals]
        lines.append(f"| {name} | {c['batch_size']} | {c['lr']} | {runs[0]['sizes']['ceiling_epochs']} | "
                     f"{len(runs[0]['history']['step_loss'])} | {', '.join(str(r['seed']) for r in runs)} | "
                     + " | ".join(cells) + f" | {np.mean([r['seconds'] for r in runs]) / 60:.1f} |")
    return "\n".join(lines)


def length_rows() -> dict:
    """``{epochs: jobs}``: the earlier recipe at 20, 30, 40 epochs, and the from-scratch bench's 60 on the same seeds."""
    by_epochs = {int(d.name[len("epochs"):]): [load(p) for p in sorted(d.glob("*.json"))] for d in LENGTHS.glob("epochs*")}
    seeds = sorted(r["seed"] for r in next(iter(by_epochs.values())))
    by_epochs[60] = [r for r in earlier_ceiling_jobs() if r["seed"] in seeds]
    for runs in by_epochs.values():
        premise([r["seed"] for r in runs] == seeds, "the same seeds at every length", HERE)
    premise({r["machine"]["cpu"] for runs in by_epochs.values() for r in runs} == {"AMD EPYC"}, "same machine kind", HERE)
    return dict(sorted(by_epochs.items()))


def ceiling_length_table() -> str:
    """The earlier ceiling recipe at 20, 30, 40 and 60 epochs, mean of the seeds per column (%)."""
    lines = ["| epochs | steps | " + " | ".join(n for n, _ in COLUMNS) + " | minutes per job |", "|---" * (len(COLUMNS) + 3) + "|"]
    for epochs, runs in length_rows().items():
        lines.append(f"| {epochs} | {len(runs[0]['history']['step_loss'])} | "
                     + " | ".join(f"{100 * np.mean([f(r) for r in runs]):.1f}" for _, f in COLUMNS)
                     + f" | {np.mean([r['seconds'] for r in runs]) / 60:.1f} |")
    return "\n".join(lines)


def length_gain() -> float:
    """mIoU points the earlier recipe gains from 40 to 60 epochs (mean of the seeds); stops unless it
    still rises by more than a point, which both readings of it say."""
    rows = length_rows()
    gain = 100 * (np.mean([r["miou"] for r in rows[60]]) - np.mean([r["miou"] for r in rows[40]]))
    premise(gain > 1, "still rising between 40 and 60 epochs", HERE)
    return float(gain)


def ceiling_length_notes() -> str:
    """What the ceiling-length table shows, in words."""
    rows = length_rows()
    mean = {e: {n: 100 * np.mean([f(r) for r in runs]) for n, f in COLUMNS} for e, runs in rows.items()}
    gain = length_gain()
    premise(mean[20]["car vs truck told apart"] < 60 and mean[30]["car vs truck told apart"] < 90
            <= mean[40]["car vs truck told apart"], "car vs truck near chance at 20, past 0.90 only at 40", HERE)
    lo, hi = session_speed_range()
    return (
        "- **Under this recipe, the ceiling cannot be cut to save time.** (Another recipe can:\n"
        f"  `../ceiling_recipes_amd_epyc_17/`.) It gains +{gain:.1f} mIoU points from 40 to 60 epochs.\n"
        f"  At 40 epochs terrain vs vegetation is told apart at {mean[40]['terrain vs vegetation told apart']:.1f}.\n"
        "- **Nor has it quite plateaued at 60.** The gains shrink, but they have not stopped. The curve rises\n"
        "  steeply up to 30 epochs; car vs truck is near chance at 20 and passes 0.90 only at 40. From 40 to\n"
        f"  60 it still gains about {gain / 2:.1f} points per 10 epochs.\n"
        "- So this recipe's ceiling is a lower bound on what supervised LiDAR-only training reaches at this\n"
        "  size; a longer run would raise it, and make the bench longer.\n"
        "- Minutes per job: the 60-epoch jobs ran inside the whole bench, two jobs at a time, in another\n"
        f"  session. The same kind of machine's speed varied by {lo:.2f}–{hi:.2f}× between sessions\n"
        "  (`../cross_machine_runs/README.md`), so only the shorter rows compare with one another."
    )


def ceiling_recipes_table() -> str:
    """The ceiling under other recipes against the earlier one, mean of seeds 0 and 1 per column; then
    every seed a recipe has when it has more than two (mean ± sample std)."""
    groups, earlier = recipe_jobs(OUT), earlier_ceiling_jobs()
    rows = [(EARLIER, [r for r in earlier if r["seed"] in (0, 1)], False)]
    rows += [(name, [r for r in runs if r["seed"] in (0, 1)], False) for name, runs in groups.items()]
    rows += [(EARLIER, earlier, True)] + [(name, runs, True) for name, runs in groups.items() if len(runs) > 2]
    return ceiling_table(rows)


def compute_share() -> float:
    """Today's recipe's minutes per job over the earlier one's, seeds 0 and 1, on the AMD EPYC of model 17."""
    today = [r for r in recipe_jobs(OUT)[CURRENT] if r["seed"] in (0, 1)]
    earlier = [r for r in earlier_ceiling_jobs() if r["seed"] in (0, 1)]
    return np.mean([r["seconds"] for r in today]) / np.mean([r["seconds"] for r in earlier])


def ceiling_recipes_notes() -> str:
    """What the recipes table shows, and what switching cost and saved."""
    groups = {name: [r for r in runs if r["seed"] in (0, 1)] for name, runs in recipe_jobs(OUT).items()}
    groups[EARLIER] = [r for r in earlier_ceiling_jobs() if r["seed"] in (0, 1)]
    mean = {name: {n: 100 * np.mean([f(r) for r in runs]) for n, f in COLUMNS} for name, runs in groups.items()}
    minutes = {name: np.mean([r["seconds"] for r in runs]) / 60 for name, runs in groups.items()}
    pairs = ("car vs truck told apart", "terrain vs vegetation told apart")
    premise(mean[CURRENT]["mIoU"] > mean[EARLIER]["mIoU"] and all(mean[CURRENT][p] > mean[EARLIER][p] for p in pairs),
            "beats the bench's earlier 60-epoch ceiling", HERE)
    premise(mean["b4_lr0.1_30ep"]["mIoU"] < mean[EARLIER]["mIoU"], "Doubling the rate at batch 4 does not help", HERE)
    steps = {name: len(runs[0]["history"]["step_loss"]) for name, runs in groups.items()}
    committed = sum(load(committed_job(f"supervised_ceiling_seed{k}.json"))["seconds"] for k in range(5)) / 60
    share = compute_share()
    saved = committed * (1 - share)
    lo, hi = session_speed_range()
    return (
        f"- **Batch 2 at lr 0.1 for 30 epochs beats the bench's earlier 60-epoch ceiling at {share:.1f} of its "
        "compute.**\n"
        "  On seeds 0 and 1 it reaches a higher mIoU, and both geometry twin pairs are told apart better.\n"
        f"  Halving the batch at the same rate (batch 2, lr 0.05) makes about as many steps ({steps['b2_lr0.05_30ep']}) as "
        f"the earlier\n  recipe does in 60 epochs ({steps[EARLIER]}), and lands "
        f"{mean[EARLIER]['mIoU'] - mean['b2_lr0.05_30ep']['mIoU']:.1f} points below it. Doubling the rate at batch 4 "
        "does not help.\n"
        "  More updates per pass, at a higher rate, is what speeds it up.\n"
        "- Minutes per job: the 60-epoch jobs ran inside the whole from-scratch bench in another session, two jobs\n"
        f"  at a time; these ran two at a time in this one. The same kind of machine varied by {lo:.2f}–{hi:.2f}×\n"
        "  between sessions (`../cross_machine_runs/README.md`), but the step count and the batch size say\n"
        f"  the same: {steps[CURRENT]} steps of 2 scans are 30 passes over the train set, against 60.\n"
        "- **The bench now uses it.** `BenchPlan.ceiling` is batch 2 at lr 0.1 for 30 epochs. On this kind of\n"
        f"  machine the switch cuts the committed ceiling jobs' {committed:.0f} one-thread minutes (of the bench's "
        f"{committed_minutes():.0f} then)\n"
        f"  by about {5 * round(saved / 5)} (scaled by this machine's {minutes[CURRENT]:.1f} against "
        f"{minutes[EARLIER]:.1f} minutes per job), about\n"
        f"  {saved / 2:.0f} minutes of wall time on 2 cores."
    )


def wall_with_current_ceiling(report: dict) -> float:
    """The from-scratch ``report``'s measured wall minutes (earlier 60-epoch ceiling) with its five
    ceiling jobs swapped for today's recipe's mean job on the same machine kind, on 2 cores: an estimate."""
    old = sum(r["seconds"] for r in report["runs"] if r["row"] == "supervised ceiling") / 60
    new = np.mean([r["seconds"] for r in recipe_jobs(OUT)[CURRENT]]) / 60
    return report["wall_from_scratch"]["minutes"] - (old - 5 * new) / 2


def avx2_ceiling_jobs() -> tuple:
    """(the bench's ceiling row as made on the AVX2 machine, today's recipe on the AMD EPYC of model 17)."""
    return recipe_jobs(AVX2)[CURRENT], recipe_jobs(OUT)[CURRENT]


def avx2_ceiling_table() -> str:
    """The bench's ceiling recipe on the AVX2 machine against the AMD EPYC of model 17 that chose it, on
    the seeds both ran, then every seed the AVX2 machine ran."""
    here, there = avx2_ceiling_jobs()
    plan = BenchPlan()
    premise([r["seed"] for r in here] == list(plan.seeds), "the bench's five seeds", HERE)
    bench = {r["seed"]: r for r in load(RESULTS_DIR / "bench.json")["runs"] if r["row"] == "supervised ceiling"}
    premise(all(r == bench[r["seed"]] == load(RESULTS_DIR / "bench_runs" / f"supervised_ceiling_seed{r['seed']}.json")
                for r in here), "These five jobs are the bench's supervised ceiling row", HERE)
    premise(all(r["sizes"]["ceiling"] == plan.ceiling and r["sizes"]["ceiling_epochs"] == plan.ceiling_epochs
                for r in here), "made under the bench's current recipe", HERE)
    both = sorted({r["seed"] for r in here} & {r["seed"] for r in there})
    return ceiling_table([("AMD EPYC family 25 model 17, AVX-512", [r for r in there if r["seed"] in both], True),
                          ("AMD EPYC family 23 model 49, AVX2", [r for r in here if r["seed"] in both], True),
                          ("AMD EPYC family 23 model 49, AVX2 (the bench's row)", here, True)], first="machine")


def avx2_ceiling_notes() -> str:
    """What the AVX2 ceiling table shows: agreement, first differing step, time."""
    here, there = avx2_ceiling_jobs()
    by_seed = {r["seed"]: r for r in there}
    shared = [r for r in here if r["seed"] in by_seed]
    first = [first_difference(r["history"]["step_loss"], by_seed[r["seed"]]["history"]["step_loss"]) for r in shared]
    span = f"{min(first)}" if min(first) == max(first) else f"{min(first)} to {max(first)}"
    ratio = [r["seconds"] / by_seed[r["seed"]]["seconds"] for r in shared]
    drift = max(abs(r["miou"] - by_seed[r["seed"]]["miou"]) for r in shared)
    m_here, m_there = (100 * np.array([r["miou"] for r in rs]) for rs in (shared, [by_seed[r["seed"]] for r in shared]))
    premise(abs(m_here.mean() - m_there.mean()) < min(m_here.std(ddof=1), m_there.std(ddof=1)),
            "the means agree within a fraction of the seed spread", HERE)
    return (
        f"- **It repeats the model-17 line on another kind of machine.** On seeds {shared[0]['seed']}–{shared[-1]['seed']},"
        " which both ran, the\n"
        f"  means agree within a fraction of the seed spread (mIoU {m_here.mean():.1f} here against {m_there.mean():.1f}"
        f" there, std {m_here.std(ddof=1):.1f}\n  and {m_there.std(ddof=1):.1f}).\n"
        "- The bits part early, as between any two kinds of machine here (`../cross_machine_runs/`): the\n"
        f"  per-step losses are equal for the first {span} steps, then apart in the last bits, and the final\n"
        f"  mIoU moves by up to {100 * drift:.1f} points per seed.\n"
        f"- Time: per seed, {times(ratio)} the time of the model-17 jobs (the model-17 jobs of later seeds\n"
        f"  ran later in their session, more slowly). About {np.mean([r['seconds'] for r in here]) / 60:.1f} "
        "minutes per job here.\n"
        "- So the bench's rows come from two kinds of machine: the ceiling from this one, every other row\n"
        "  from the committed jobs' (`../bench.md` says so in its Compute line). The ceiling is a reference,\n"
        "  not one side of any difference the bench reports, so no paired difference mixes machines."
    )


def main(argv=None):
    from experiments.jobs import pool_map, prepare_data, run_job

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--recipe", nargs="+", default=[k for k in RECIPES if k != "b4_lr0.05"], choices=list(RECIPES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dataset", choices=("bench", "notebook"), default="bench",
                    help="notebook: the small embedded set (a toy run; the numbers mean nothing)")
    ap.add_argument("--dataroot", default=None, help="a nuScenes-format root instead of the dataset's own")
    ap.add_argument("--version", default="v1.0-synthetic")
    args = ap.parse_args(argv)
    base = BenchPlan(dataset=args.dataset, dataroot=args.dataroot, version=args.version)
    root = prepare_data(base)
    jobs = []
    for name in args.recipe:
        plan = replace(base, ceiling_epochs=args.epochs, ceiling=RECIPES[name],
                       output_root=f"outputs/experiments/ceiling_{name}_{args.epochs}ep")
        jobs += [(plan.to_dict(), root, "supervised ceiling", s, str(args.out / recipe_folder(RECIPES[name], args.epochs)))
                 for s in args.seeds]
    results = pool_map(run_job, jobs, base.workers, "ceiling recipes", True)
    lines = []
    for i, name in enumerate(args.recipe):
        line = summary_line(name, args.epochs, results[i * len(args.seeds):(i + 1) * len(args.seeds)])
        print(f"{name:>10} {args.epochs:3d} ep  mIoU {100 * line['miou']:5.1f}  car|truck {100 * line['car|truck']:5.1f}"
              f"  terrain|vegetation {100 * line['terrain|vegetation']:5.1f}  {line['minutes']:.1f} min/job")
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()

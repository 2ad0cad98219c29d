"""docs/results.md, the long reading of the committed results, must say what the result files say.

The README's own result blocks are generated (``python -m experiments readme``) and checked by
``tests/test_ladder.py``; the sentences here are still typed by hand in docs/results.md."""
import re
from pathlib import Path

from experiments.plan import BenchPlan, row_slug
from cmcr_lite.paths import REPO_ROOT

from experiments.ceiling_recipes import recipe_folder

SPEED_RESULTS = REPO_ROOT / "benchmarks" / "results"  # step-time profiles stay with the speed benchmarks
RESULTS_NOTES = REPO_ROOT / "docs" / "results.md"  # the README's long reading of the results, moved out of it

# the bench's ceiling recipe, as experiments/ceiling_recipes.py names its folder: "b2_lr0.1_30ep"
CURRENT_RECIPE = recipe_folder(BenchPlan().ceiling, BenchPlan().ceiling_epochs)


def committed_job(name: str) -> Path:
    """The committed job ``name`` (``<row>_seed<k>.json``) that the cross-machine runs were compared
    with: bench_runs/ holds the bench's jobs; the supervised ceiling's were replaced by a shorter recipe
    after those runs, and its earlier 60-epoch jobs, made on the committed jobs' machine, are kept in
    bench_runs_ceiling_60ep/."""
    runs = REPO_ROOT / "experiments" / "results"
    return runs / ("bench_runs_ceiling_60ep" if name.startswith("supervised_ceiling") else "bench_runs") / name


def committed_paths() -> list:
    """Every committed job of the bench as the cross-machine runs saw it (:func:`committed_job`)."""
    return sorted(committed_job(p.name) for p in (REPO_ROOT / "experiments" / "results" / "bench_runs").glob("*.json"))


def first_table(markdown: str) -> str:
    lines, table = markdown.splitlines(), []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def _assert_readme_quotes(marker: str, results_md: str):
    """The README block between <!-- marker:begin --> and <!-- marker:end --> is the first table of
    experiments/results/<results_md>, or empty while that file does not exist."""
    readme = RESULTS_NOTES.read_text()
    block = re.search(rf"<!-- {marker}:begin -->\n(.*?)<!-- {marker}:end -->", readme, re.S)
    assert block, f"docs/results.md lost its <!-- {marker}:begin --> ... <!-- {marker}:end --> block"
    md = REPO_ROOT / "experiments" / "results" / results_md
    quoted = block.group(1).strip()
    if not md.is_file():
        assert quoted == "", f"README quotes a table, but experiments/results/{results_md} does not exist"
        return
    assert quoted == first_table(md.read_text())


def test_readme_label_efficiency_table_is_the_committed_one():
    _assert_readme_quotes("label_efficiency", "label_efficiency.md")


def test_readme_bench_numbers_are_the_committed_ones():
    """The README's short reading of the bench quotes these numbers; a rerun that changes them must
    change the text too."""
    import json

    path = REPO_ROOT / "experiments" / "results" / "bench.json"
    readme = RESULTS_NOTES.read_text()
    if not path.is_file():
        return
    summary = json.loads(path.read_text())["summary"]
    d = summary["differences"]

    def pts(x):
        return f"{100 * x:+.1f}".replace("-", "−")

    g = d["CMCR - PPKT"]["geometry twins told apart"]
    o = d["occupancy only - PPKT"]["geometry twins told apart"]
    om = d["occupancy only - PPKT"]["geometry twins in features (MLP)"]
    checks, rows = summary["checks"], summary["rows"]
    mlp = f"MLP probe ({pts(om['mean'])}" + (", an interval that includes 0)" if om["low"] <= 0 <= om["high"] else ")")
    quoted = [f"{pts(g['mean'])} points, {pts(g['low'])} to {pts(g['high'])}",
              f"{pts(o['mean'])}, {pts(o['low'])} to {pts(o['high'])}", mlp,
              f"car from truck at {checks['ceiling tells car vs truck apart']['value']:.3f}",
              f"vegetation at {checks['ceiling tells terrain vs vegetation apart']['value']:.3f}",
              f"geometry twins at {checks['image-only geometry twins near chance']['value']:.3f}",
              f"A/A − PPKT {pts(d['PPKT (A/A) - PPKT']['miou']['mean'])} mIoU points",
              f"std {100 * rows['PPKT']['miou']['std']:.1f} for PPKT and {100 * rows['CMCR']['miou']['std']:.1f} for CMCR"]
    for text in quoted:
        assert text in readme, f"docs/results.md should quote {text!r} from bench.json"


def wall_with_current_ceiling(report: dict) -> float:
    """The from-scratch ``report``'s measured wall minutes (AMD EPYC of model 17, 60-epoch ceiling) with
    its five ceiling jobs swapped for the current recipe's mean job on the same machine kind
    (ceiling_recipes_amd_epyc_17/), on 2 cores: an estimate."""
    import statistics

    old = sum(r["seconds"] for r in report["runs"] if r["row"] == "supervised ceiling") / 60
    jobs = recipe_jobs(REPO_ROOT / "experiments" / "results" / "ceiling_recipes_amd_epyc_17")[CURRENT_RECIPE]
    new = statistics.mean(r["seconds"] for r in jobs) / 60
    return report["wall_from_scratch"]["minutes"] - (old - 5 * new) / 2


def test_readme_bench_times_are_the_jobs_own():
    """The README's times for the whole bench: the committed jobs' one-thread minutes and half of them on
    2 cores; the from-scratch run measured on the AMD EPYC of model 17 with the earlier 60-epoch ceiling;
    and that run with its ceiling jobs swapped for the current recipe's on the same machine kind."""
    import json

    results = REPO_ROOT / "experiments" / "results"
    bench = json.loads((results / "bench.json").read_text())
    scratch = json.loads((results / "cross_machine_runs" / "amd_epyc_17_from_scratch" / "bench.json").read_text())
    flat = " ".join(RESULTS_NOTES.read_text().split())
    assert f"{bench['job_minutes']:.0f} min of one-thread jobs" in flat
    assert f"about {bench['job_minutes'] / 2:.0f} min of wall time on 2 cores" in flat
    wall = scratch["wall_from_scratch"]["minutes"]
    assert f"{wall:.0f} min from scratch on 2 cores of an AMD EPYC of model 17, measured" in flat
    assert f"about {wall_with_current_ceiling(scratch):.0f} min there with today's (an estimate)" in flat


def test_readme_third_seed_set_numbers_are_the_committed_ones():
    """The README's noise-floor diagnostic (PPKT on seeds 200-207) quotes the committed runs."""
    import json

    import numpy as np

    runs = REPO_ROOT / "experiments" / "results"
    third = sorted((runs / "noise_floor_third_set_runs").glob("*.json"))
    if not third:
        return
    readme = " ".join(RESULTS_NOTES.read_text().split())  # line breaks are spaces
    third_runs = [json.loads(p.read_text()) for p in third]
    ppkt_runs, aa_runs = ([json.loads(p.read_text()) for p in sorted((runs / "bench_runs").glob(pattern))]
                          for pattern in ("ppkt_seed*.json", "ppkt__a_a_seed*.json"))
    miou = lambda results: 100 * np.array([r["miou"] for r in results])  # noqa: E731
    t, ppkt, aa = miou(third_runs), miou(ppkt_runs), miou(aa_runs)
    assert len(t) == len(ppkt) == len(aa) == 8
    for text in (f"{t.mean():.1f} ± {t.std(ddof=1):.1f}", f"+{t.mean() - ppkt.mean():.1f} above the PPKT row",
                 f"{aa.mean() - t.mean():.1f} below the A/A row"):
        assert text in readme, f"docs/results.md should quote {text!r} from the committed runs"
    # the class that makes the largest part of the A/A gap: its IoU per seed, and its share of the gap
    iou = lambda results, c: 100 * np.array([r["per_class"][c] for r in results])  # noqa: E731
    classes = list(ppkt_runs[0]["per_class"])
    n_classes = len(classes)
    shares = {c: (iou(aa_runs, c).mean() - iou(ppkt_runs, c).mean()) / n_classes for c in classes}
    assert max(shares, key=shares.get) == "traffic_cone"  # "the largest part"
    c_ppkt, c_aa, share = iou(ppkt_runs, "traffic_cone"), iou(aa_runs, "traffic_cone"), shares["traffic_cone"]
    assert share > (aa.mean() - ppkt.mean()) / 3  # and over a third of the gap
    for text in (f"{c_ppkt.mean():.1f} ± {c_ppkt.std(ddof=1):.1f} over the eight PPKT seeds",
                 f"({['no', 'one', 'two', 'three', 'four'][int((c_ppkt < 53).sum())]} of them under 53)",
                 f"{c_aa.mean():.1f} ± {c_aa.std(ddof=1):.1f} over the A/A seeds",
                 f"+{share:.2f} of the +{aa.mean() - ppkt.mean():.2f} mIoU points",
                 f"mean over {n_classes} classes"):
        assert text in readme, f"docs/results.md should quote {text!r} from the committed runs"


def test_noise_floor_sets_numbers_are_the_committed_ones():
    """experiments/results/noise_floor_sets_amd_epyc_17: its summary is what its job files and the
    from-scratch report give (recomputed here with scipy's ANOVA, not the script's), and both READMEs
    quote it."""
    import json

    import numpy as np
    from scipy import stats

    results = REPO_ROOT / "experiments" / "results"
    folder = results / "noise_floor_sets_amd_epyc_17"
    if not (folder / "noise_floor_sets.json").is_file():
        return
    summary = json.loads((folder / "noise_floor_sets.json").read_text())
    report = json.loads((results / "cross_machine_runs" / "amd_epyc_17_from_scratch" / "bench.json").read_text())
    jobs = {j["seed"]: j for j in (json.loads(p.read_text()) for p in folder.glob("ppkt__a_a_seed*.json"))}
    sets = {"0–7": [r for r in report["runs"] if r["row"] == "PPKT"],
            "100–107": [r for r in report["runs"] if r["row"] == "PPKT (A/A)"]}
    sets.update({k: [jobs[s] for s in seeds] for k, seeds in summary["job_seeds"].items()})
    assert sorted(jobs) == sorted(s for seeds in summary["job_seeds"].values() for s in seeds)
    assert len({json.dumps(r["machine"], sort_keys=True) for runs in sets.values() for r in runs}) == 1
    miou = {k: 100 * np.array([r["miou"] for r in sorted(runs, key=lambda r: r["seed"])]) for k, runs in sets.items()}
    assert {k: list(v) for k, v in miou.items()} == summary["miou"]
    anova = stats.f_oneway(*miou.values())
    means = np.array([v.mean() for v in miou.values()])
    pooled = np.sqrt(np.mean([v.var(ddof=1) for v in miou.values()]))
    spread = summary["spread"]
    assert np.isclose(spread["p"], anova.pvalue) and np.isclose(spread["std_of_means"], means.std(ddof=1))
    assert np.isclose(spread["pooled_std"], pooled)
    others = [k for k in miou if k != "100–107"]
    assert max(miou, key=lambda k: miou[k].mean()) == "100–107"  # "the one outlier"
    need = lambda sigma: int(np.ceil(2 * (1.96 * sigma) ** 2))  # noqa: E731  1.96 sigma sqrt(2/n) <= 1
    gap = f"{100 * report['summary']['differences']['PPKT (A/A) - PPKT']['miou']['mean']:.2f}"
    chance = summary["chance_of_gap"]
    third = {j["seed"]: 100 * j["miou"] for j in (json.loads(p.read_text())
                                                  for p in (results / "noise_floor_third_set_runs").glob("*.json"))}
    here = {s: 100 * jobs[s]["miou"] for s in range(200, 208)}
    # the committed table's per-seed std, pooled over its three PPKT sets (0-7, 100-107, 200-207)
    committed_sets = [[100 * json.loads(p.read_text())["miou"] for p in (results / "bench_runs").glob(pattern)]
                      for pattern in ("ppkt_seed*.json", "ppkt__a_a_seed*.json")] + [list(third.values())]
    committed = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in committed_sets])))
    cone = summary["class_iou"]["traffic_cone"]["per_set"]
    minutes = sum(j["seconds"] for j in jobs.values()) / 60
    steps = float(np.median([j["pretrain_seconds_per_step"] for j in jobs.values()]))
    readme = " ".join(RESULTS_NOTES.read_text().split())
    notes = " ".join((folder / "README.md").read_text().split())
    both = [f"{means.std(ddof=1):.2f} points", f"{pooled / np.sqrt(8):.2f} that independent seeds",
            f"pooled per-seed std of {pooled:.2f}", f"p = {anova.pvalue:.3f}", f"{100 * chance['1.0']:.1f} %",
            f"{100 * chance[gap]:.1f} %",
            f"{100 - round(100 * chance['1.0'])} % of draws", f"{need(pooled)} a side"]
    for text in both:
        assert text in readme and text in notes, f"both READMEs should quote {text!r}"
    outlier = (f"({miou['100–107'].mean():.1f}, against {min(miou[k].mean() for k in others):.1f} to "
               f"{max(miou[k].mean() for k in others):.1f} for the four others)")
    assert outlier in readme and f"that bench's {float(gap):.2f}" in readme
    # what 12 a side would cost on the from-scratch run's machine, with the bench's current ceiling
    ppkt_job = np.mean([r["seconds"] for r in report["runs"] if r["row"].startswith("PPKT")]) / 60
    extra = 2 * (need(pooled) - 8) * ppkt_job
    wall = wall_with_current_ceiling(report) + extra / 2
    assert wall > 120  # "past its 2-hour budget"
    for text in (f"{need(pooled) - 8} more PPKT seeds on each side, {extra:.0f} more one-thread minutes",
                 f"{ppkt_job:.1f} per PPKT job", f"about {wall:.0f} min of wall time"):
        assert text in readme, f"docs/results.md should quote {text!r}"
    for text in (f"within {max(abs(miou[a].mean() - miou[b].mean()) for a in others for b in others):.2f} points",
                 f"{minutes:.0f} one-thread minutes", f"{steps:.2f} s per PPKT step",
                 f"agree to {abs(np.mean(list(third.values())) - np.mean(list(here.values()))):.1f} points",
                 f"differ by up to {max(abs(third[s] - here[s]) for s in here):.1f}",
                 f"up to {max(cone.values()) - min(cone.values()):.1f} points",
                 f"σ of {committed:.2f} would need {need(committed)}"):
        assert text in notes, f"noise_floor_sets_amd_epyc_17/README.md should quote {text!r}"
    assert max(summary["variance_shares"], key=summary["variance_shares"].get) == "traffic_cone"


def ceiling_length_table(folder, report: dict) -> str:
    """The ceiling at 20, 30 and 40 epochs (job files under ``folder/epochs<E>``) and at the bench's 60
    (``report``'s ceiling jobs on the same seeds), mean of the seeds per column, as a markdown table."""
    import json

    import numpy as np

    by_epochs = {int(d.name[len("epochs"):]): [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]
                 for d in folder.glob("epochs*")}
    seeds = sorted(r["seed"] for r in next(iter(by_epochs.values())))
    by_epochs[report["plan"]["ceiling_epochs"]] = sorted(
        (r for r in report["runs"] if r["row"] == "supervised ceiling" and r["seed"] in seeds), key=lambda r: r["seed"])
    cols = [("mIoU", lambda r: r["miou"]), ("car vs truck told apart", lambda r: r["per_pair"]["car|truck"]),
            ("terrain vs vegetation told apart", lambda r: r["per_pair"]["terrain|vegetation"])]
    cols += [(f"{c} IoU", lambda r, c=c: r["per_class"][c]) for c in ("car", "truck", "terrain", "vegetation")]
    lines = ["| epochs | steps | " + " | ".join(name for name, _ in cols) + " | minutes per job |",
             "|---" * (len(cols) + 3) + "|"]
    for epochs in sorted(by_epochs):
        runs = by_epochs[epochs]
        assert [r["seed"] for r in runs] == seeds
        steps = len(runs[0]["history"]["step_loss"])
        lines.append(f"| {epochs} | {steps} | " + " | ".join(f"{100 * np.mean([f(r) for r in runs]):.1f}" for _, f in cols)
                     + f" | {np.mean([r['seconds'] for r in runs]) / 60:.1f} |")
    return "\n".join(lines)


def test_ceiling_length_table_is_the_files_own():
    """experiments/results/ceiling_length_amd_epyc_17/README.md: its table is what the job files and the
    from-scratch report (same machine kind) hold, and its words follow the numbers."""
    import json

    results = REPO_ROOT / "experiments" / "results"
    folder = results / "ceiling_length_amd_epyc_17"
    if not folder.is_dir():
        return
    report = json.loads((results / "cross_machine_runs" / "amd_epyc_17_from_scratch" / "bench.json").read_text())
    notes = (folder / "README.md").read_text()
    block = re.search(r"<!-- ceiling_length:begin -->\n(.*?)<!-- ceiling_length:end -->", notes, re.S)
    assert block, "ceiling_length_amd_epyc_17/README.md lost its table markers"
    table = ceiling_length_table(folder, report)
    assert block.group(1).strip() == table
    miou = {int(line.split("|")[1]): float(line.split("|")[3]) for line in table.splitlines()[2:]}
    assert miou[60] - miou[40] > 1  # "still rising between 40 and 60 epochs"
    flat = " ".join(notes.split())
    readme = " ".join(RESULTS_NOTES.read_text().split())
    for text in (flat, readme):
        assert f"+{miou[60] - miou[40]:.1f} mIoU points from 40 to 60 epochs" in text
    jobs = [json.loads(p.read_text()) for p in folder.glob("epochs*/*.json")]
    assert {json.dumps(j["machine"], sort_keys=True) for j in jobs} == {
        json.dumps(r["machine"], sort_keys=True) for r in report["runs"] if r["row"] == "supervised ceiling"}


def test_cross_machine_numbers_are_the_committed_ones():
    """experiments/results/cross_machine_runs/README.md and the README say how two ceiling jobs run on
    another kind of CPU compare with the committed ones; the committed files must say so too."""
    import json

    runs = REPO_ROOT / "experiments" / "results"
    other = sorted((runs / "cross_machine_runs").glob("*.json"))
    if not other:
        return
    notes = " ".join((runs / "cross_machine_runs" / "README.md").read_text().split())
    first_diff, miou, pair, slower = [], [], [], []
    for path in other:
        here, there = json.loads(committed_job(path.name).read_text()), json.loads(path.read_text())
        assert here["sizes"] == there["sizes"] and here["seed"] == there["seed"]
        a, b = here["history"]["step_loss"], there["history"]["step_loss"]
        first_diff.append(next(i for i, (x, y) in enumerate(zip(a, b)) if x != y))
        assert max(abs(x - y) for x, y in zip(a[:first_diff[-1] + 1], b)) < 1e-5  # the last bits of a float
        miou.append(f"{100 * (there['miou'] - here['miou']):+.2f}".replace("-", "−"))
        pair.append(f"{100 * (there['per_pair']['car|truck'] - here['per_pair']['car|truck']):+.2f}".replace("-", "−"))
        slower.append(f"{there['seconds'] / here['seconds']:.2f}×")
    assert first_diff == [3, 3], first_diff  # "the first three training losses are equal"
    for text in (f"the mIoU differs by {miou[0]} and {miou[1]} points",
                 f"car vs truck told apart by {pair[0]} and {pair[1]} points",
                 f"Each job took {slower[0]} and {slower[1]}"):
        assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    # the one-thread profiles on that machine, against the committed one
    ppkt = [step(f, "ppkt") for f in ("pretrain_step_amd_avx2_first.md", "pretrain_step_amd_avx2.md")]
    cmcr = [step(f, "cmcr") for f in ("pretrain_step_amd_avx2_first.md", "pretrain_step_amd_avx2.md")]
    text = (f"took {ppkt[0]:.2f} and {ppkt[1]:.2f} s for a PPKT step and {cmcr[0]:.2f} and {cmcr[1]:.2f} s for a "
            f"CMCR step, against {step('pretrain_step.md', 'ppkt'):.2f} and {step('pretrain_step.md', 'cmcr'):.2f} s")
    assert text in notes, f"cross_machine_runs/README.md should say {text!r}"


def untimed(job: dict) -> dict:
    """A bench job's result without its times and the machine it ran on."""
    out = {k: v for k, v in job.items()
           if k not in ("seconds", "machine", "pretrain_seconds_per_step", "readout_seconds")}
    history = out.get("history")
    if history is not None:
        out["history"] = ({k: v for k, v in history.items() if k != "seconds"} if isinstance(history, dict)
                          else [{k: v for k, v in e.items() if "second" not in k} for e in history])
    return out


def step(name: str, method: str) -> float:
    """A one-thread profile's step time in s: the ``step`` column of ``method`` in experiments/results/``name``."""
    text = (SPEED_RESULTS / name).read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
    return float(row.split("|")[-3])


def test_openblas_kernel_runs_are_what_the_notes_say():
    """cross_machine_runs/intel_xeon_207: the ceiling jobs on OpenBLAS's generic kernels drift from the
    committed ones; every job on the SkylakeX kernels equals its committed one in everything but time.
    The quoted time ratios are the files' own."""
    import json

    runs = REPO_ROOT / "experiments" / "results"
    where = runs / "cross_machine_runs" / "intel_xeon_207"
    notes = " ".join((runs / "cross_machine_runs" / "README.md").read_text().split())

    ratio = {}
    right_jobs = sorted((where / "skylakex_blas").glob("*.json"))
    assert [p.name for p in right_jobs] == ["cmcr_seed0.json", "cmcr_seed1.json", "supervised_ceiling_seed0.json",
                                            "supervised_ceiling_seed1.json"]
    for path in right_jobs:
        committed, right = json.loads(committed_job(path.name).read_text()), json.loads(path.read_text())
        assert right["machine"]["blas_kernels"] == "SkylakeX"
        assert untimed(right) == untimed(committed), path.name  # bit for bit
        ratio.setdefault(path.name.rsplit("_seed", 1)[0], []).append(f"{right['seconds'] / committed['seconds']:.2f}×")
    generic_ratio, versus = [], []
    for seed in (0, 1):
        name = f"supervised_ceiling_seed{seed}.json"
        committed = json.loads(committed_job(name).read_text())
        generic = json.loads((where / "prescott_blas" / name).read_text())
        right = json.loads((where / "skylakex_blas" / name).read_text())
        assert "blas_kernels" not in generic["machine"]  # run before the kernels were recorded
        assert generic["history"]["step_loss"] != committed["history"]["step_loss"]
        assert generic["confusion"] != committed["confusion"]
        generic_ratio.append(f"{generic['seconds'] / committed['seconds']:.2f}×")
        versus.append(f"{generic['seconds'] / right['seconds']:.2f}×")
    for text in (f"each took {' and '.join(generic_ratio)} the committed jobs' time",
                 f"The ceiling took {' and '.join(ratio['supervised_ceiling'])} the committed time",
                 f"took {' and '.join(versus)} as long as these",
                 f"CMCR took {' and '.join(ratio['cmcr'])} the committed time"):
        assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    generic = "pretrain_step_intel_xeon_prescott_blas.md"
    right = ["pretrain_step_intel_xeon_skylakex_blas_first.md", "pretrain_step_intel_xeon_skylakex_blas.md"]
    text = (f"a PPKT step took {step(generic, 'ppkt'):.2f} s and a CMCR step {step(generic, 'cmcr'):.2f} s")
    assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    ppkt, cmcr = [step(f, "ppkt") for f in right], [step(f, "cmcr") for f in right]
    text = (f"PPKT took {ppkt[0]:.2f} and {ppkt[1]:.2f} s and CMCR {cmcr[0]:.2f} and {cmcr[1]:.2f} s, "
            f"{cmcr[0] / ppkt[0]:.2f}× and {cmcr[1] / ppkt[1]:.2f}× PPKT's step")
    assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    kernels = (SPEED_RESULTS / "openblas_kernels_intel_xeon_207.md").read_text()
    assert "| SkylakeX | 543 | 0.60 |" in kernels and "the lite trunk's step took 0.60× the time" in notes


def test_amd_epyc_runs_are_what_the_notes_say():
    """cross_machine_runs/amd_epyc_17: no job equals its committed one; the ceiling leaves it at the
    fourth step under either OpenBLAS kernels; the quoted mIoU moves, time ratios and whole-bench
    estimate are the files' own."""
    import json
    from collections import defaultdict

    runs = REPO_ROOT / "experiments" / "results"
    where = runs / "cross_machine_runs" / "amd_epyc_17"
    notes = " ".join((runs / "cross_machine_runs" / "README.md").read_text().split())
    ratio, moved = defaultdict(list), defaultdict(list)
    jobs = [json.loads(p.read_text()) for p in sorted(where.glob("*.json"))]
    assert len(jobs) == 14
    for here in jobs:
        committed = json.loads(committed_job(f"{row_slug(here['row'])}_seed{here['seed']}.json").read_text())
        assert here["machine"] == {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "cores": 2,
                                   "blas_kernels": "Cooperlake"}
        assert untimed(here) != untimed(committed), (here["row"], here["seed"])
        # occupancy only resumed from its epoch checkpoints: its job time holds only the later steps
        key = "pretrain_seconds_per_step" if here["row"] == "occupancy only" else "seconds"
        ratio[here["row"]].append(here[key] / committed[key])
        moved[here["row"]].append(f"{100 * (here['miou'] - committed['miou']):+.2f}".replace("-", "−"))
        if here["row"] == "supervised ceiling":
            assert here["history"]["step_loss"][:3] == committed["history"]["step_loss"][:3]
            assert here["history"]["step_loss"][3] != committed["history"]["step_loss"][3]
    for row, after in (("supervised ceiling", "(ceiling)"), ("CMCR", "(CMCR)"), ("PPKT", "(PPKT)"),
                       ("PPKT (A/A)", "(PPKT A/A)"), ("occupancy only", "points (occupancy only)")):
        text = f"{' and '.join(moved[row])} {after}"
        assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    times = {row: " and ".join(f"{r:.2f}×" for r in ratio[row]) for row in ratio}
    for text in (f"the ceiling took {times['supervised ceiling']} the time", f"CMCR {times['CMCR']}",
                 f"PPKT {times['PPKT']}", f"PPKT A/A {times['PPKT (A/A)']}",
                 f"An occupancy-only step took {times['occupancy only']}"):
        assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    from experiments.jobs import job_seconds

    whole = _weighted_compute(jobs)
    total = sum(job_seconds(json.loads(p.read_text())) for p in committed_paths()) / 60  # the jobs compared with
    assert (f"gives {whole:.0f} min of one-thread compute for the whole bench against the committed {total:.0f} min: "
            f"about {whole / 2 / 60:.1f} hours on 2 cores") in notes
    for kernels, equal_to_committed, equal_to_here in (("cooperlake", 3, 14), ("skylakex", 3, 5)):
        table = (where / f"first_steps_{kernels}.md").read_text()
        assert f"The first {equal_to_committed} of 14 steps are equal; step {equal_to_committed}" in table
        assert "| 3 | 3.69125366 | 3.69125319 | +4.77e-07 |" in table
        assert "step 3 differs by the same +4.77e-07" in notes
        assert (f"all {equal_to_here} steps are equal on Cooperlake" if kernels == "cooperlake"
                else f"the first {equal_to_here} on SkylakeX") in notes
    profile = (SPEED_RESULTS / "pretrain_step_amd_epyc_17.md").read_text()
    assert "OpenBLAS on its Cooperlake kernels" in profile and "| ppkt |" in profile
    ppkt, cmcr = step("pretrain_step_amd_epyc_17.md", "ppkt"), step("pretrain_step_amd_epyc_17.md", "cmcr")
    assert f"a PPKT step took {ppkt:.2f} s and a CMCR step {cmcr:.2f} s, {cmcr / ppkt:.2f}× PPKT's step" in notes


def _times(name: str, where: str, seeds=(0, 1)) -> list:
    """``name``'s job time under cross_machine_runs/``where`` against its committed job, per seed, as '1.23×'."""
    import json

    runs = REPO_ROOT / "experiments" / "results"
    out = []
    for seed in seeds:
        here = json.loads((runs / "cross_machine_runs" / where / f"{name}_seed{seed}.json").read_text())
        there = json.loads(committed_job(f"{name}_seed{seed}.json").read_text())
        out.append(f"{here['seconds'] / there['seconds']:.2f}×")
    return out


def _weighted_compute(jobs: list) -> float:
    """The whole bench's one-thread minutes at ``jobs``' speed: each row's committed minutes times the
    mean ratio of that row's ``jobs`` to their committed ones (per step for occupancy only, whose jobs
    on the AMD EPYC of model 17 resumed from epoch checkpoints)."""
    import json
    import statistics
    from collections import defaultdict

    committed_minutes, ratio = defaultdict(float), defaultdict(list)
    for path in committed_paths():
        job = json.loads(path.read_text())
        committed_minutes[job["row"]] += job["seconds"] / 60
    for here in jobs:
        committed = json.loads(committed_job(f"{row_slug(here['row'])}_seed{here['seed']}.json").read_text())
        key = "pretrain_seconds_per_step" if here["row"] == "occupancy only" else "seconds"
        ratio[here["row"]].append(here[key] / committed[key])
    return sum(statistics.mean(ratio[row]) * minutes for row, minutes in committed_minutes.items())


def test_readme_machines_table_is_the_files_own():
    """The README's table of machines (between <!-- machines:begin/end -->) is what the committed
    cross-machine jobs and the from-scratch report say: bits, time ratios and whole-bench times."""
    import json
    import statistics

    runs = REPO_ROOT / "experiments" / "results"
    cross = runs / "cross_machine_runs"
    from dataclasses import replace

    from experiments.bench import same_plan
    from experiments.jobs import job_seconds

    committed = json.loads((runs / "bench.json").read_text())
    # the jobs these machines were compared with: the bench's, with its earlier 60-epoch ceiling
    compared = [json.loads(p.read_text()) for p in committed_paths()]
    total = sum(job_seconds(r) for r in compared) / 60
    amd = [json.loads(p.read_text()) for p in sorted((cross / "amd_epyc_17").glob("*.json"))]
    scratch = json.loads((cross / "amd_epyc_17_from_scratch" / "bench.json").read_text())
    wall = scratch["wall_from_scratch"]
    assert wall["data_made"] and wall["workers"] == 2 and wall["machine"] == amd[0]["machine"]
    assert len(scratch["runs"]) == len(compared) == len(committed["runs"]) == 41
    # the plan of the committed bench before its ceiling changed recipe (only where its files went differs)
    earlier = replace(BenchPlan.from_dict(committed["plan"]), ceiling_epochs=60,
                      ceiling={"lr": 0.05, "lr_head": None, "batch_size": 4})
    assert same_plan(scratch["plan"], earlier) and not same_plan(scratch["plan"], BenchPlan.from_dict(committed["plan"]))
    by_job = {(r["row"], r["seed"]): r for r in scratch["runs"]}
    assert all(untimed(by_job[(r["row"], r["seed"])]) == untimed(r) for r in amd)  # same kind: bit for bit
    committed_jobs = {(r["row"], r["seed"]): r for r in compared}
    assert all(untimed(r) != untimed(committed_jobs[k]) for k, r in by_job.items())
    skylakex = _times("supervised_ceiling", "intel_xeon_207/skylakex_blas") + _times("cmcr", "intel_xeon_207/skylakex_blas")
    rows = [
        "| machine | OpenBLAS kernels | jobs | bits, against the committed jobs | time, against the committed jobs "
        "| the whole bench on 2 cores |",
        "|---|---|---|---|---|---|",
        f"| the committed jobs', the 60-epoch ceiling's among them (not recorded) | SkylakeX (inferred) | all 41 | "
        f"| 1× | about {total / 2:.0f} min (an estimate from the jobs' own times) |",
        f"| AMD EPYC, AVX2 | not recorded | ceiling, seeds 0 and 1 | equal for 3 steps, then apart in the last bits "
        f"| {' and '.join(_times('supervised_ceiling', '.'))} | about 4 to 5 hours (an estimate) |",
        f"| Intel Xeon model 207, AVX-512 | Prescott (OpenBLAS's generic) | ceiling, seeds 0 and 1 | apart within "
        f"the first steps | {' and '.join(_times('supervised_ceiling', 'intel_xeon_207/prescott_blas'))} | |",
        f"| the same, after `import cmcr_lite` | SkylakeX | ceiling and CMCR, seeds 0 and 1 | equal | ceiling "
        f"{' and '.join(skylakex[:2])}, CMCR {' and '.join(skylakex[2:])} | about "
        f"{statistics.mean(float(t[:-1]) for t in skylakex) * total / 2 / 60:.1f} hours (an estimate) |",
        f"| AMD EPYC family 25 model 17, AVX-512 | Cooperlake (OpenBLAS's own) | every row, seeds 0 and 1 (14 jobs) "
        f"| equal for 3 steps, then apart | {_weighted_compute(amd) / total:.2f}× the compute | about "
        f"{_weighted_compute(amd) / 2 / 60:.1f} hours (an estimate) |",
        f"| the same, in another session | Cooperlake | all 41, from scratch in one call | apart; the 14 jobs above "
        f"equal | {_weighted_compute(scratch['runs']) / total:.2f}× the compute | **{wall['minutes']:.0f} min, "
        "measured** |",
    ]
    readme = RESULTS_NOTES.read_text()
    block = re.search(r"<!-- machines:begin -->\n(.*?)<!-- machines:end -->", readme, re.S)
    assert block, "docs/results.md lost its <!-- machines:begin --> ... <!-- machines:end --> block"
    assert block.group(1).strip() == "\n".join(rows)
    # the notes' and the README's reading of that second realization are its own summary's
    notes = " ".join((cross / "README.md").read_text().split())
    flat = " ".join(readme.split())
    d = scratch["summary"]["differences"]

    def pts(x):
        return f"{100 * x:+.1f}".replace("-", "−")

    for key, col in (("CMCR - PPKT", "miou"), ("CMCR - PPKT", "geometry twins told apart"),
                     ("occupancy only - PPKT", "geometry twins told apart"), ("PPKT (A/A) - PPKT", "miou")):
        v = d[key][col]
        assert f"{pts(v['mean'])} [{pts(v['low'])}, {pts(v['high'])}]" in notes, (key, col)
        assert f"{pts(v['mean'])} ({pts(v['low'])} to {pts(v['high'])})" in flat, (key, col)
    assert f"**Wall time: {wall['minutes']:.0f} min**" in notes
    assert f"summed to {scratch['job_minutes']:.0f} min of one-thread compute" in notes
    assert f"CMCR's per-seed std is {100 * scratch['summary']['rows']['CMCR']['miou']['std']:.1f} points" in notes


EARLIER = "b4_lr0.05_60ep (the bench's earlier)"  # the ceiling's recipe before the bench took b2_lr0.1_30ep


def ceiling_table(rows: list, first: str = "recipe") -> str:
    """A markdown table of supervised-ceiling jobs: one line per ``(name, jobs, spread)``, each column the
    mean over the jobs in % (with the sample std when ``spread``), and the jobs' mean minutes."""
    import numpy as np

    cols = [("mIoU", lambda r: r["miou"]), ("car vs truck told apart", lambda r: r["per_pair"]["car|truck"]),
            ("terrain vs vegetation told apart", lambda r: r["per_pair"]["terrain|vegetation"])]
    cols += [(f"{c} IoU", lambda r, c=c: r["per_class"][c]) for c in ("car", "truck", "terrain", "vegetation")]
    lines = [f"| {first} | batch | lr | epochs | steps | seeds | " + " | ".join(n for n, _ in cols) + " | minutes per job |",
             "|---" * (len(cols) + 7) + "|"]
    for name, runs, spread in rows:
        c = runs[0]["sizes"]["ceiling"]
        vals = [100 * np.array([f(r) for r in runs]) for _, f in cols]
        cells = [f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if spread else f"{v.mean():.1f}" for v in vals]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        lines.append(f"| {name} | {c['batch_size']} | {c['lr']} | {runs[0]['sizes']['ceiling_epochs']} | "
                     f"{len(runs[0]['history']['step_loss'])} | {seeds} | " + " | ".join(cells)
                     + f" | {np.mean([r['seconds'] for r in runs]) / 60:.1f} |")
    return "\n".join(lines)


def recipe_jobs(folder) -> dict:
    """``{<recipe>_<E>ep: [job, ...] by seed}`` under ``folder``."""
    import json

    return {d.name: [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] for d in sorted(folder.glob("*ep"))}


def ceiling_recipes_table(folder, report: dict) -> str:
    """The ceiling under other recipes (job files under ``folder/<recipe>_<E>ep``) against the bench's
    earlier recipe (``report``'s ceiling jobs), mean of seeds 0 and 1 per column; then every seed a
    recipe has when it has more than two (mean ± sample std), as a markdown table."""
    groups = recipe_jobs(folder)
    earlier = sorted((r for r in report["runs"] if r["row"] == "supervised ceiling"), key=lambda r: r["seed"])
    rows = [(EARLIER, [r for r in earlier if r["seed"] in (0, 1)], False)]
    rows += [(name, [r for r in runs if r["seed"] in (0, 1)], False) for name, runs in groups.items()]
    rows += [(EARLIER, earlier, True)] + [(name, runs, True) for name, runs in groups.items() if len(runs) > 2]
    return ceiling_table(rows)


def test_ceiling_recipes_table_is_the_files_own():
    """experiments/results/ceiling_recipes_amd_epyc_17/README.md: its table is what the job files and the
    AMD from-scratch report (same machine kind) hold."""
    import json

    results = REPO_ROOT / "experiments" / "results"
    folder = results / "ceiling_recipes_amd_epyc_17"
    report = json.loads((results / "cross_machine_runs" / "amd_epyc_17_from_scratch" / "bench.json").read_text())
    notes, table = (folder / "README.md").read_text(), ceiling_recipes_table(folder, report)
    block = re.search(r"<!-- ceiling_recipes:begin -->\n(.*?)<!-- ceiling_recipes:end -->", notes, re.S)
    assert block, "ceiling_recipes_amd_epyc_17/README.md lost its table markers"
    assert block.group(1).strip() == table
    jobs = [json.loads(p.read_text()) for p in folder.glob("*ep/*.json")]
    assert {json.dumps(j["machine"], sort_keys=True) for j in jobs} == {
        json.dumps(r["machine"], sort_keys=True) for r in report["runs"] if r["row"] == "supervised ceiling"}
    # the words under the table
    ours = EARLIER
    def row(name):
        return next(l for l in table.splitlines() if l.startswith(f"| {name} |"))
    miou = lambda name: float(row(name).split("|")[7])  # noqa: E731
    pairs = lambda name: [float(row(name).split("|")[i]) for i in (8, 9)]  # noqa: E731
    assert miou("b2_lr0.1_30ep") > miou(ours) and all(
        a > b for a, b in zip(pairs("b2_lr0.1_30ep"), pairs(ours)))
    assert miou("b4_lr0.1_30ep") < miou(ours)
    flat = " ".join(notes.split())
    assert f"lands {miou(ours) - miou('b2_lr0.05_30ep'):.1f} points below it" in flat
    minutes = lambda name: float(row(name).split("|")[-2])  # noqa: E731
    assert f"{minutes('b2_lr0.1_30ep'):.1f} against {minutes(ours):.1f} minutes per job" in flat
    committed = sum(json.loads(committed_job(f"supervised_ceiling_seed{k}.json").read_text())["seconds"]
                    for k in range(5)) / 60  # the bench's 60-epoch ceiling jobs, in its 245 minutes
    saved = committed * (1 - minutes("b2_lr0.1_30ep") / minutes(ours))
    assert f"ceiling jobs took {committed:.0f} of them" in flat
    assert f"by about {5 * round(saved / 5)} (its" in flat and f"about {saved / 2:.0f} minutes of wall time" in flat
    ratio = minutes("b2_lr0.1_30ep") / minutes(ours)
    readme = " ".join(RESULTS_NOTES.read_text().split())
    for text in (flat, readme):
        assert f"at {ratio:.1f} of its compute" in text


def avx2_ceiling_table(here: list, there: list) -> str:
    """The bench's ceiling recipe on the AMD EPYC of family 23, model 49 (``here``: the bench's five
    ceiling jobs) against the AMD EPYC of model 17 that chose it (``there``), on the seeds both ran,
    then every seed here."""
    both = sorted({r["seed"] for r in here} & {r["seed"] for r in there})
    return ceiling_table([("AMD EPYC family 25 model 17, AVX-512", [r for r in there if r["seed"] in both], True),
                          ("AMD EPYC family 23 model 49, AVX2", [r for r in here if r["seed"] in both], True),
                          ("AMD EPYC family 23 model 49, AVX2 (the bench's row)", here, True)], first="machine")


def test_avx2_ceiling_jobs_are_the_benchs_row_and_what_the_notes_say():
    """experiments/results/ceiling_recipes_amd_epyc_23_49: its five jobs are the bench's ceiling row
    (bench_runs/ and bench.json), made on one kind of machine under the bench's current recipe; its
    table, first differing step and time ratio are the files' own."""
    import json

    results = REPO_ROOT / "experiments" / "results"
    folder = results / "ceiling_recipes_amd_epyc_23_49"
    plan = BenchPlan()
    here = recipe_jobs(folder)[CURRENT_RECIPE]
    there = recipe_jobs(results / "ceiling_recipes_amd_epyc_17")[CURRENT_RECIPE]
    assert [r["seed"] for r in here] == list(plan.seeds)
    assert {json.dumps(r["machine"], sort_keys=True) for r in here} == {json.dumps(
        {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cores": 2, "blas_kernels": "Zen"}, sort_keys=True)}
    bench = json.loads((results / "bench.json").read_text())
    ceiling = sorted((r for r in bench["runs"] if r["row"] == "supervised ceiling"), key=lambda r: r["seed"])
    for job, committed in zip(here, ceiling):
        assert job == committed == json.loads((results / "bench_runs" / f"supervised_ceiling_seed{job['seed']}.json").read_text())
        assert job["sizes"]["ceiling"] == plan.ceiling and job["sizes"]["ceiling_epochs"] == plan.ceiling_epochs
    notes = (folder / "README.md").read_text()
    block = re.search(r"<!-- avx2_ceiling:begin -->\n(.*?)<!-- avx2_ceiling:end -->", notes, re.S)
    assert block, "ceiling_recipes_amd_epyc_23_49/README.md lost its table markers"
    assert block.group(1).strip() == avx2_ceiling_table(here, there)
    flat = " ".join(notes.split())
    by_seed = {r["seed"]: r for r in there}
    first = [next(i for i, (a, b) in enumerate(zip(r["history"]["step_loss"], by_seed[r["seed"]]["history"]["step_loss"]))
                  if a != b) for r in here if r["seed"] in by_seed]
    span = f"{min(first)}" if min(first) == max(first) else f"{min(first)} to {max(first)}"
    assert f"equal for the first {span} steps" in flat, first
    ratio = [r["seconds"] / by_seed[r["seed"]]["seconds"] for r in here if r["seed"] in by_seed]
    assert f"{ratio[0]:.2f}× and {ratio[1]:.2f}× the time" in flat
    assert f"seeds 2 and 3 {ratio[2]:.2f}× and {ratio[3]:.2f}×" in flat
    drift = max(abs(r["miou"] - by_seed[r["seed"]]["miou"]) for r in here if r["seed"] in by_seed)
    assert f"by up to {100 * drift:.1f} points per seed" in flat

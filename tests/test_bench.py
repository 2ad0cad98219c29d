"""The decisive benchmark (experiments.bench): its statistics by closed form, its probes on data with a
known answer, and the whole pipeline end to end at toy size (every row, resumable)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from cmcr_lite.analysis.probes import mlp_twin_probe, softmax_probe, twin_probe
from experiments.bench import bench
from experiments.ceiling_recipes import recipe_folder
from experiments.jobs import job_seconds, PROBE
from experiments.label_efficiency import label_efficiency_summary
from experiments.plan import bench_jobs, BenchPlan, COLUMNS, ROWS
from experiments.report import bench_verdict, load_report
from experiments.stats import t_interval, welch_interval
from cmcr_lite.classes import class_index
from experiments.cli import main as experiments_main
from cmcr_lite.paths import REPO_ROOT
from cmcr_lite.runtime import machine



def test_t_interval_by_hand():
    d = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    mean, lo, hi = t_interval(d)
    half = 2.7764451051977987 * np.std(d, ddof=1) / np.sqrt(5)  # t(0.975, 4)
    assert mean == 3.0 and np.isclose(lo, 3.0 - half) and np.isclose(hi, 3.0 + half)


def test_welch_interval_matches_scipy_welch_test():
    a, b = np.array([0.30, 0.32, 0.35, 0.31, 0.33]), np.array([0.28, 0.36, 0.25, 0.31, 0.29])
    diff, lo, hi = welch_interval(a, b)
    assert np.isclose(diff, a.mean() - b.mean())
    # the 95 % interval excludes 0 exactly when Welch's two-sided test has p < 0.05
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert (lo > 0 or hi < 0) == (p < 0.05)
    res = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert np.isclose(lo, res.low) and np.isclose(hi, res.high)


def _ring_twins(n=4000, seed=0):
    """car inside a circle, truck outside (radius at the median, so half each): a radially symmetric
    label that no linear probe can read, and an MLP can."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 2)).astype(np.float32)
    y = np.where((x ** 2).sum(1) > 2 * np.log(2), class_index("truck"), class_index("car"))
    return torch.from_numpy(x), y


def test_mlp_probe_reads_what_a_linear_probe_cannot():
    (xt, yt), (xv, yv) = _ring_twins(seed=0), _ring_twins(seed=1)
    pair = [("car", "truck")]
    linear = twin_probe(xt, yt, xv, yv, pair)[("car", "truck")]
    mlp = mlp_twin_probe(xt, yt, xv, yv, pair, seed=0)[("car", "truck")]
    assert linear < 0.65 and mlp > 0.9  # a linear cut through a ring is near chance, whichever it is
    assert mlp == mlp_twin_probe(xt, yt, xv, yv, pair, seed=0)[("car", "truck")]  # seeded


def test_softmax_probe_is_the_logistic_regression_optimum():
    """The probe reaches the optimum of its convex objective: scikit-learn's multinomial logistic
    regression on the same standardised features with C = 1 / (2 l2 N) predicts the same classes.
    The classes overlap (no perfect separation), and label 0 is absent from training."""
    from sklearn.linear_model import LogisticRegression

    g = np.random.default_rng(0)
    centres = g.normal(scale=1.5, size=(5, 8))
    y = g.integers(1, 6, 3000)
    x = (centres[y - 1] + g.normal(size=(3000, 8))).astype(np.float32)
    l2 = 1e-3
    pred = softmax_probe(torch.from_numpy(x[:2000]), y[:2000], torch.from_numpy(x[2000:]), num_classes=6, l2=l2)
    mean, std = x[:2000].mean(0), x[:2000].std(0)
    ref = LogisticRegression(C=1 / (2 * l2 * 2000), tol=1e-10, max_iter=10_000)
    ref.fit((x[:2000] - mean) / std, y[:2000])
    expected = ref.predict((x[2000:] - mean) / std)
    assert np.mean(pred == expected) >= 0.998
    assert 0 not in set(pred)           # a class without training rows is never predicted
    assert 0.6 < np.mean(pred == y[2000:]) < 0.99  # overlapping classes: good, not perfect


def test_label_efficiency_summary_from_confusion_matrices():
    """Means and sample std of the mIoU per (pretraining, mode, fraction), recomputed from each run's
    confusion matrix: a diagonal matrix is 100 %, one with class 1's points all called 2 is 25 %."""
    perfect = np.diag([0] + [10] * 16)
    half = perfect.copy()
    half[1, 1], half[1, 2] = 0, 10           # class 1: IoU 0; class 2: 10 / 20
    runs = [{"pretraining": "PPKT", "mode": "finetune", "fraction": 0.5, "seed": s, "confusion": c.tolist()}
            for s, c in ((0, perfect), (1, half))]
    cell = label_efficiency_summary(runs)["PPKT"]["finetune"]["0.5000"]
    values = [1.0, (14 + 0 + 0.5) / 16]
    assert cell["values"] == pytest.approx(values) and cell["seeds"] == [0, 1]
    assert cell["mean"] == pytest.approx(np.mean(values)) and cell["std"] == pytest.approx(np.std(values, ddof=1))
    assert cell["per_class"]["barrier"] == pytest.approx(0.5) and cell["per_class"]["bicycle"] == pytest.approx(0.75)


def test_job_seconds_count_every_step_of_a_pretraining_resumed_mid_run():
    """A job's compute by hand: 20 epochs of 27 steps at 0.968 s, plus a 30-s read-out, even when its
    own ``seconds`` hold only the steps after a resume; older results (no ``readout_seconds``) add the
    pretraining only when their time is shorter than it."""
    history = [{"epoch": e, "steps": 27} for e in range(20)]
    resumed = {"seconds": 435.0, "pretrain_seconds_per_step": 0.968, "history": history, "readout_seconds": 30.0}
    assert job_seconds(resumed) == pytest.approx(0.968 * 540 + 30.0)
    older = {"seconds": 40.0, "pretrain_seconds_per_step": 0.968, "history": history}  # read out again only
    assert job_seconds(older) == pytest.approx(40.0 + 0.968 * 540)
    assert job_seconds({**older, "seconds": 600.0}) == 600.0  # ran in one go
    assert job_seconds({"seconds": 36.0}) == 36.0  # a row without pretraining


def test_jobs_cover_every_row_and_seed():
    plan = BenchPlan()
    assert BenchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan  # what the workers receive
    jobs = bench_jobs(plan)
    # every row on the five shared seeds; PPKT on three more and the A/A row on eight (the noise floor)
    assert len(jobs) == len(set(jobs)) == len(ROWS) * 5 + 3 + 3
    assert {r for r, _ in jobs} == set(ROWS)
    assert sorted(s for r, s in jobs if r == "PPKT") == list(range(8))
    assert sorted(s for r, s in jobs if r == "PPKT (A/A)") == list(range(100, 108))
    assert all(sorted(s for r, s in jobs if r == row) == list(range(5)) for row in ROWS if not row.startswith("PPKT"))
    # longest first, by job times per row measured on one kind of machine (AMD EPYC model 17): its
    # from-scratch bench, and for the ceiling's current recipe its ceiling_recipes jobs (PPKT and its
    # A/A twin are one method, so they count as one): the short read-outs come last and the two
    # workers end together. (The committed bench's rows ran on two kinds of machine.)
    results = REPO_ROOT / "experiments" / "results"
    report = load_report("bench", results / "cross_machine_runs" / "amd_epyc_17_from_scratch")
    minutes = {}
    for run in report["runs"]:
        if run["row"] != "supervised ceiling":
            minutes.setdefault(run["row"].replace(" (A/A)", ""), []).append(run["seconds"] / 60)
    recipe = recipe_folder(plan.ceiling, plan.ceiling_epochs)
    minutes["supervised ceiling"] = [json.loads(p.read_text())["seconds"] / 60
                                     for p in (results / "ceiling_recipes_amd_epyc_17" / recipe).glob("*.json")]
    assert len(minutes["supervised ceiling"]) >= 2, recipe
    cost = [np.mean(minutes[row.replace(" (A/A)", "")]) for row, _ in jobs]
    assert cost == sorted(cost, reverse=True), [row for row, _ in jobs]


def test_bench_md_says_where_the_jobs_ran_when_machines_differ():
    """bench.md names the machines only when the jobs ran on more than one kind, with each kind's rows."""
    from experiments.report import machine_label, machines_sentence

    amd = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cores": 2, "blas_kernels": None}
    intel = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "cores": 2, "blas_kernels": "SkylakeX"}
    assert machine_label(amd) == "AMD EPYC, AVX2" and machine_label(None) == "not recorded"
    assert machine_label(intel) == "Intel Xeon, AVX512, OpenBLAS SkylakeX"
    one = {"PPKT": {"machines": ["AMD EPYC, AVX2"]}, "CMCR": {"machines": ["AMD EPYC, AVX2"]}}
    assert machines_sentence(one) == ""
    two = {"PPKT": {"machines": ["not recorded"]}, "supervised ceiling": {"machines": ["AMD EPYC, AVX2"]},
           "CMCR": {"machines": ["AMD EPYC, AVX2", "not recorded"]}}
    assert machines_sentence(two) == (
        "The jobs ran on 2 kinds of machine, so their times add up compute of different speeds (rows by "
        "machine: AMD EPYC, AVX2: supervised ceiling, CMCR; not recorded: PPKT, CMCR).")


def test_bench_command_refuses_overlapping_seed_sets(capsys):
    """The noise floor needs seed sets that share no seed; the command line says which overlap."""
    for args in (["--seeds", "0", "1", "--noise-floor-seeds", "1", "2"], ["--noise-floor-seeds", "5", "--aa-seeds", "5"]):
        with pytest.raises(SystemExit) as stop:
            experiments_main(["bench", "--smoke", *args])
        assert stop.value.code == 2
    assert "must be disjoint" in capsys.readouterr().err


def test_noise_floor_compares_all_seeds_and_reports_the_shared_five():
    """The A/A difference is Welch's over every seed of both rows (8 against 8), and again over the
    first five of each side; CMCR - PPKT is paired over the seeds both rows have (the five shared)."""
    from experiments.report import summarize

    plan = BenchPlan()
    g = np.random.default_rng(3)
    ppkt, aa, cmcr = g.normal(0.65, 0.01, 8), g.normal(0.66, 0.01, 8), g.normal(0.64, 0.01, 5)
    results = ([{"row": "PPKT", "seed": s, "miou": v} for s, v in zip(range(8), ppkt)]
               + [{"row": "PPKT (A/A)", "seed": s, "miou": v} for s, v in zip(range(100, 108), aa)]
               + [{"row": "CMCR", "seed": s, "miou": v} for s, v in zip(range(5), cmcr)])
    for r in results:  # every column the bench reports, here all equal to the mIoU
        r.update(per_class={"car": r["miou"]}, **{c: r["miou"] for c in COLUMNS})
    diffs = summarize(results, plan)["differences"]
    ref = stats.ttest_ind(aa, ppkt, equal_var=False).confidence_interval(0.95)
    d = diffs["PPKT (A/A) - PPKT"]["miou"]
    assert np.isclose(d["mean"], aa.mean() - ppkt.mean()) and np.isclose(d["low"], ref.low)
    first = diffs["PPKT (A/A) - PPKT, first 5 seeds"]["miou"]
    ref5 = stats.ttest_ind(aa[:5], ppkt[:5], equal_var=False).confidence_interval(0.95)
    assert np.isclose(first["mean"], aa[:5].mean() - ppkt[:5].mean()) and np.isclose(first["high"], ref5.high)
    paired = diffs["CMCR - PPKT"]["miou"]
    assert np.isclose(paired["mean"], (cmcr - ppkt[:5]).mean())
    assert np.isclose(paired["high"] - paired["mean"],
                      stats.t.ppf(0.975, 4) * np.std(cmcr - ppkt[:5], ddof=1) / np.sqrt(5))


def test_bench_end_to_end_at_toy_size(tmp_path, synthetic_root):
    tiny = {"num_matches": 64, "backbone": {"layers": [1] * 8, "planes": [8] * 8, "init_dim": 8},
            "pipeline": {"crop_size": [56, 104], "crop_min_pairs": 50, "occupancy_queries": 64}}
    plan = BenchPlan.smoke(seeds=(0,), aa_seeds=(100,), ceiling_epochs=1, workers=1, dataroot=str(synthetic_root),
                           output_root=str(tmp_path / "runs"), results_name="toy", pretrain=tiny)
    # the command line, as the README prints it, with toy sizes
    report = experiments_main(["bench", "--smoke", "--seeds", "0", "--aa-seeds", "100", "--ceiling-epochs", "1",
                               "--workers", "1", "--dataroot", str(synthetic_root), "--output-root",
                               str(tmp_path / "runs"), "--results-dir", str(tmp_path), "--name", "toy", "--set"]
                              + [f"{k}={json.dumps(v)}" for k, v in tiny.items()])
    assert report["plan"] == plan.to_dict()
    written = json.loads((tmp_path / "toy.json").read_text())
    assert set(written["summary"]["rows"]) == set(ROWS)
    for row in ROWS:
        r = written["summary"]["rows"][row]
        assert r["seeds"] == ([100] if row == "PPKT (A/A)" else [0])
        assert 0 <= r["miou"]["mean"] <= 1 and 0 <= r["geometry twins in features (MLP)"]["mean"] <= 1
    for row in ("PPKT", "CMCR", "occupancy only"):
        run = next(x for x in written["runs"] if x["row"] == row)
        assert len(run["history"]) == 1 and run["pretrain_seconds_per_step"] > 0
        # run in one go, its compute is its own time: every step at the measured rate, plus the read-out
        assert 0 < run["readout_seconds"] < run["seconds"] and job_seconds(run) == pytest.approx(run["seconds"], abs=0.05)
    occupancy = next(x for x in written["runs"] if x["row"] == "occupancy only")
    assert {"occupancy", "intensity"} <= set(occupancy["history"][0]) and "nce" not in occupancy["history"][0]
    md = (tmp_path / "toy.md").read_text()
    assert all(f"| {row} |" in md for row in ROWS) and "CMCR - PPKT" in md
    assert (tmp_path / "toy.png").stat().st_size > 10_000
    assert all(r["machine"] == machine() for r in written["runs"])  # every job says where it was timed
    # the first call ran every job: its wall time is the from-scratch measure bench.md reports
    wall = written["wall_from_scratch"]
    assert wall == {"minutes": written["minutes_this_call"], "workers": 1, "data_made": False, "machine": machine()}
    assert (f"{wall['minutes']:.0f} min of wall time measured from scratch, every job in one call on 1 worker (CPU: "
            f"{machine()['cpu']}, {machine()['cpu_capability']}).") in md
    verdict = bench_verdict(written["summary"])
    ppkt_std = written["summary"]["rows"]["PPKT"]["miou"]["std"]
    assert "noise floor" in verdict and f"{100 * ppkt_std:.1f} points" in verdict and "CMCR vs PPKT" in verdict
    # a rerun reuses every job's result
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "toy_runs").glob("*.json")}
    assert len(stamps) == len(ROWS)
    again = bench(plan, progress=False, results_dir=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["summary"]["rows"]["CMCR"]["miou"]["values"] == report["summary"]["rows"]["CMCR"]["miou"]["values"]
    assert again["wall_from_scratch"] == wall and again["minutes_this_call"] != wall["minutes"]  # kept, not re-measured
    # more pretraining epochs: under the bench's cosine schedule they change every rate, so the
    # pretrained rows start over (a 2-epoch cosine begins its first epoch at higher rates than a
    # 1-epoch one); the other rows are reused
    assert plan.pretrain_schedule == "cosine"
    longer = bench(replace(plan, pretrain_epochs=2), progress=False, results_dir=tmp_path)
    cmcr = next(x for x in longer["runs"] if x["row"] == "CMCR")
    assert [h["epoch"] for h in cmcr["history"]] == [0, 1]
    assert cmcr["history"][0]["lr"] > next(x for x in report["runs"] if x["row"] == "CMCR")["history"][0]["lr"]
    assert longer["wall_from_scratch"] is None and "an estimate: no call has run every job" in (tmp_path / "toy.md").read_text()
    changed = {p.name for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed == {"ppkt_seed0.json", "ppkt__a_a_seed100.json", "occupancy_only_seed0.json", "cmcr_seed0.json"}
    # a result read out by another probe is read out again, without pretraining again: the history
    # stays and the step time measured when the pretraining ran is kept
    path = tmp_path / "toy_runs" / "ppkt_seed0.json"
    old = json.loads(path.read_text())
    old["sizes"]["probe"] = "another probe"
    path.write_text(json.dumps(old))
    reread = bench(replace(plan, pretrain_epochs=2), progress=False, results_dir=tmp_path)
    ppkt = next(x for x in reread["runs"] if x["row"] == "PPKT")
    assert ppkt["sizes"]["probe"] == PROBE and ppkt["history"] == old["history"]
    assert ppkt["pretrain_seconds_per_step"] == old["pretrain_seconds_per_step"] > 0


def test_label_efficiency_at_toy_size(tmp_path, synthetic_root):
    """Every pretraining x mode x fraction x seed, through the command line; the 1/3 fraction keeps one
    of the three training scenes (its three scans), fine-tuning gets the same steps at each fraction."""
    tiny = {"num_matches": 64, "backbone": {"layers": [1] * 8, "planes": [8] * 8, "init_dim": 8},
            "pipeline": {"crop_size": [56, 104], "crop_min_pairs": 50, "occupancy_queries": 64}}
    # two workers: spawned processes on one OpenMP thread each, as the real command runs (in this
    # process MinkowskiEngine's OpenMP pool keeps the threads it started with, so a rerun here would
    # agree only to float precision, not bit for bit)
    args = (["label-efficiency", "--smoke", "--seeds", "0", "--finetune-steps", "2", "--workers", "2",
             "--dataroot", str(synthetic_root), "--output-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path),
             "--set"] + [f"{k}={json.dumps(v)}" for k, v in tiny.items()])
    report = experiments_main(args)
    runs = report["runs"]
    assert len(runs) == 3 * 2 * 2
    assert {(r["pretraining"], r["mode"]) for r in runs} == {(p, m) for p in ("random init", "PPKT", "CMCR")
                                                               for m in ("finetune", "linear_probe")}
    few = [r for r in runs if r["fraction"] < 0.5]
    assert {r["train_scans"] for r in few} == {3} and {r["train_scans"] for r in runs if r["fraction"] == 1} == {9}
    ft = {r["fraction"]: r["epochs"] for r in runs if r["mode"] == "finetune" and r["pretraining"] == "PPKT"}
    assert ft[1.0] == 1 and ft[min(ft)] == 2  # 2 steps: one epoch of 4 batches, or two of 1
    md = (tmp_path / "label_efficiency_smoke.md").read_text()
    assert "| CMCR | finetune |" in md and "(3 scans)" in md
    # a fresh clone holds the committed job results but no checkpoints: label efficiency pretrains the
    # missing trunk again instead of failing, and the run is bit-identical, so its bench result stays
    import shutil

    checkpoint = tmp_path / "runs" / "cmcr_seed0" / "pretrain" / "checkpoint.pt"
    bench_result = tmp_path / "bench_smoke_runs" / "cmcr_seed0.json"
    before = json.loads(bench_result.read_text())
    checkpoint.unlink()
    shutil.rmtree(tmp_path / "label_efficiency_smoke_runs")
    again = experiments_main(args)
    assert checkpoint.is_file()
    after = json.loads(bench_result.read_text())
    assert after["miou"] == before["miou"] and after["confusion"] == before["confusion"]
    assert after["history"] == before["history"]
    assert [r["miou"] for r in again["runs"]] == [r["miou"] for r in runs]

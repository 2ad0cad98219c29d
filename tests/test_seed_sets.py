"""experiments.stats against independent references: scipy's one-way ANOVA, an exhaustive count
of every split, numpy's covariance, and the sigma / sqrt(n) law on simulated seeds."""
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from experiments.stats import chance_of_gap, spread_of_set_means, variance_shares


def test_spread_of_set_means_is_scipys_anova():
    rng = np.random.default_rng(3)
    sets = {f"s{i}": rng.normal(i * 0.3, 1.0, 8) for i in range(4)}
    out = spread_of_set_means(sets)
    ref = stats.f_oneway(*sets.values())
    assert out["F"] == pytest.approx(ref.statistic, rel=1e-10)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-8)
    means = np.array([v.mean() for v in sets.values()])
    assert out["std_of_means"] == pytest.approx(means.std(ddof=1))
    assert out["pooled_std"] == pytest.approx(np.sqrt(np.mean([v.var(ddof=1) for v in sets.values()])))
    assert out["pairs"]["s0 - s3"] == pytest.approx(sets["s0"].mean() - sets["s3"].mean())
    assert len(out["pairs"]) == 6


def test_set_means_of_independent_seeds_scatter_as_sigma_over_sqrt_n():
    rng = np.random.default_rng(0)
    out = spread_of_set_means({i: rng.normal(65.0, 1.0, 8) for i in range(2000)})
    assert out["pooled_std"] == pytest.approx(1.0, abs=0.02)
    assert out["std_of_means"] == pytest.approx(1 / np.sqrt(8), rel=0.04)
    assert out["predicted_std_of_means"] == pytest.approx(1 / np.sqrt(8), rel=0.02)


def test_spread_of_set_means_rejects_uneven_sets():
    with pytest.raises(ValueError, match="one size"):
        spread_of_set_means({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0]})


def test_chance_of_gap_matches_every_split_counted():
    values = np.array([62.9, 63.2, 64.5, 65.2, 65.9, 66.3, 66.8])
    n, gap = 2, 1.5
    hits = total = 0
    for a in combinations(range(len(values)), n):
        rest = [i for i in range(len(values)) if i not in a]
        for b in combinations(rest, n):
            total += 1
            hits += abs(values[list(a)].mean() - values[list(b)].mean()) >= gap
    assert chance_of_gap(values, n, gap, draws=200_000) == pytest.approx(hits / total, abs=0.005)
    assert chance_of_gap(values, n, 0.0) == 1.0
    with pytest.raises(ValueError, match="2 \\* n"):
        chance_of_gap(values, 4, 1.0)


def test_variance_shares_split_the_variance_of_the_mean():
    rng = np.random.default_rng(1)
    per_class = {"steady": np.full(10, 80.0) + rng.normal(0, 0.1, 10), "noisy": rng.normal(55, 6.0, 10),
                 "middle": rng.normal(70, 2.0, 10)}
    shares = variance_shares(per_class)
    assert sum(shares.values()) == pytest.approx(1.0)
    miou = np.mean(list(per_class.values()), axis=0)
    for c, iou in per_class.items():
        assert shares[c] == pytest.approx(np.cov(iou, miou)[0, 1] / (3 * miou.var(ddof=1)))
    assert max(shares, key=shares.get) == "noisy"
    only = variance_shares({"a": [1.0, 2.0, 4.0], "b": [5.0, 5.0, 5.0]})
    assert only == pytest.approx({"a": 1.0, "b": 0.0})


# ------------------------------------------------------------------ experiments/noise_floor_sets.py
def _script():
    from experiments import noise_floor_sets

    return noise_floor_sets


def test_noise_floor_sets_script_at_toy_size(tmp_path, synthetic_root):
    """The command its docstring prints, at toy size: two sets of two tiny PPKT jobs on the embedded set."""
    import json

    script = _script()
    tiny = {"num_matches": 64, "backbone": {"layers": [1] * 8, "planes": [8] * 8, "init_dim": 8},
            "pipeline": {"crop_size": [56, 104], "crop_min_pairs": 50}}
    out = tmp_path / "sets"
    summary = script.main(["--sets", "0-1", "100-101", "--smoke", "--workers", "1", "--dataroot", str(synthetic_root),
                           "--output-root", str(tmp_path / "runs"), "--out", str(out), "--set"]
                          + [f"{k}={json.dumps(v)}" for k, v in tiny.items()])
    jobs = {s: json.loads((out / f"ppkt__a_a_seed{s}.json").read_text()) for s in (0, 1, 100, 101)}
    assert summary["miou"] == {"0–1": [100 * jobs[0]["miou"], 100 * jobs[1]["miou"]],
                               "100–101": [100 * jobs[100]["miou"], 100 * jobs[101]["miou"]]}
    ref = stats.f_oneway(*summary["miou"].values())
    assert summary["spread"]["F"] == pytest.approx(ref.statistic, rel=1e-9)
    written = json.loads((out / "noise_floor_sets.json").read_text())
    assert written["spread"] == summary["spread"] and written["job_seeds"] == {"0–1": [0, 1], "100–101": [100, 101]}
    md = (out / "noise_floor_sets.md").read_text()
    assert f"| 0–1 | {summary['spread']['sets']['0–1']['mean']:.2f} ±" in md and "| 0–1 - 100–101 |" in md
    assert sum(summary["variance_shares"].values()) == pytest.approx(1.0)
    assert (out / "noise_floor_sets.png").stat().st_size > 10_000
    # a report's PPKT and A/A rows join as the first two sets; overlapping sets and mixed machines are refused
    plan = script.BenchPlan.smoke(workers=1, dataroot=str(synthetic_root), output_root=str(tmp_path / "runs"),
                                  pretrain=tiny)
    report = {"plan": plan.to_dict(), "runs": [{**jobs[s], "row": "PPKT"} for s in (1, 0)]
              + [{**jobs[s], "row": "PPKT (A/A)"} for s in (100, 101)]}
    by_set = script.gather_sets(report, [], [], plan)
    assert list(by_set) == ["0–1", "100–101"] and [r["seed"] for r in by_set["0–1"]] == [0, 1]
    with pytest.raises(ValueError, match="overlap"):
        script.gather_sets(report, [[1, 2]], [jobs[1], {**jobs[0], "seed": 2}], plan)
    other = {**jobs[100], "seed": 7, "machine": {**jobs[100]["machine"], "cpu": "another CPU"}}
    with pytest.raises(ValueError, match="kinds of machine"):
        script.gather_sets(report, [[7, 8]], [other, {**jobs[101], "seed": 8}], plan)
    with pytest.raises(ValueError, match="plan"):
        script.gather_sets(report, [], [], script.BenchPlan())

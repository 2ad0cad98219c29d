"""The ablation ladder and the mechanism report on the bench, at toy size; the BatchNorm recalibration."""
import json

import numpy as np
import pytest
import torch

from cmcr_lite.analysis.readout import frozen_trunk
from experiments.plan import BenchPlan, diagnostic_row, is_pretrained, pretrain_fields, row_slug
from experiments.report import paired_differences
from experiments.stats import t_interval
from cmcr_lite.cmcr import ABLATION_STEPS
from experiments.cli import main as experiments_main
from experiments.ladder import batchnorm_control, batchnorm_sentences, RUNGS, LadderPlan, ladder, ladder_jobs

TINY = {"num_matches": 64, "backbone": {"layers": [1] * 8, "planes": [8] * 8, "init_dim": 8},
        "pipeline": {"crop_size": [56, 104], "crop_min_pairs": 50, "occupancy_queries": 64}}


def test_rows_are_the_papers_ladder_and_the_diagnostics_are_named():
    assert RUNGS == ("PPKT", "+ decoupling", "+ codebook", "+ MIM", "+ GeoMIM", "CMCR")
    for rung in RUNGS[1:-1]:
        assert pretrain_fields(rung)["cmcr"] == ABLATION_STEPS[rung]
    occ = pretrain_fields("PPKT + occupancy")["cmcr"]
    assert occ.nce and occ.occupancy and not (occ.decouple or occ.codebook or occ.mim)
    heavy = pretrain_fields(diagnostic_row(12.5))["cmcr"]
    assert diagnostic_row(12.5) == "CMCR (occupancy ×12.5)" and row_slug(diagnostic_row(12.5)) == "cmcr__occupancy_x12.5"
    assert heavy.occupancy_weight == heavy.intensity_weight == 12.5 and heavy.mim_weight == 1.0 and heavy.codebook
    assert row_slug("+ MIM") == "plus_mim" and row_slug("PPKT (A/A)") == "ppkt__a_a"
    assert not is_pretrained("random init") and not is_pretrained("supervised ceiling")
    with pytest.raises(ValueError, match="not a pretrained row"):
        pretrain_fields("CMCR (occupancy ×)")
    plan = LadderPlan(bench=BenchPlan(seeds=(0, 1)), diagnostic_weights=(3,))
    assert len(ladder_jobs(plan)) == 2 * (1 + len(RUNGS) + 2 + 1)  # random init, the rungs, two controls, one diagnostic
    pairs = plan.differences()
    assert ("+ codebook", "+ decoupling") in pairs and ("CMCR", "+ GeoMIM") in pairs
    assert ("CMCR (occupancy ×3)", "CMCR") in pairs and ("PPKT + occupancy", "PPKT") in pairs


def test_paired_differences_are_student_t_over_common_seeds():
    rows = {"a": [{"seed": s, "miou": v} for s, v in ((0, 0.5), (1, 0.6), (2, 0.7))],
            "b": [{"seed": s, "miou": v} for s, v in ((1, 0.55), (2, 0.6), (3, 0.9))]}
    d = paired_differences(rows, [("a", "b"), ("a", "missing")], columns=("miou",))
    assert list(d) == ["a - b"]
    expected = t_interval([0.6 - 0.55, 0.7 - 0.6])
    assert [d["a - b"]["miou"][k] for k in ("mean", "low", "high")] == pytest.approx(expected)
    assert d["a - b"]["miou"]["mean"] == pytest.approx(0.075)


def test_ladder_end_to_end_at_toy_size_reuses_the_bench_rows(tmp_path, synthetic_root):
    common = ["--seeds", "0", "--workers", "1", "--dataroot", str(synthetic_root), "--output-root",
              str(tmp_path / "runs"), "--results-dir", str(tmp_path)]
    sets = ["--set"] + [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    experiments_main(["bench", "--smoke", "--aa-seeds", "100", "--ceiling-epochs", "1", "--name", "toy", *common, *sets])
    bench_cmcr = json.loads((tmp_path / "toy_runs" / "cmcr_seed0.json").read_text())
    plan = LadderPlan(bench=BenchPlan.smoke(seeds=(0,), workers=1, dataroot=str(synthetic_root), pretrain=TINY,
                                            output_root=str(tmp_path / "runs"), results_name="toy"),
                      diagnostic_weights=(10,), results_name="ladder_toy")
    # the README's command at toy size (its bench folder named like the toy bench's, so its rows are reused)
    report = experiments_main(["ladder", "--smoke", "--diagnostic-weights", "10", "--name", "ladder_toy", *common, *sets,
                               "--bench-name", "toy"])
    assert report["plan"] == plan.to_dict()
    # the bench's rows come from its results, untouched; the new rows sit beside them
    assert json.loads((tmp_path / "toy_runs" / "cmcr_seed0.json").read_text()) == bench_cmcr
    assert len(list((tmp_path / "toy_runs").glob("*.json"))) == 7  # the bench's rows only
    names = {p.name for p in (tmp_path / "ladder_toy_runs").glob("*.json")}
    assert names == {"plus_decoupling_seed0.json", "plus_codebook_seed0.json", "plus_mim_seed0.json",
                     "plus_geomim_seed0.json", "ppkt_plus_occupancy_seed0.json", "cmcr__occupancy_x10_seed0.json"}
    rows = report["summary"]["rows"]
    assert set(rows) == set(plan.rows())
    history = {r["row"]: r["history"][0] for r in report["runs"] if "history" in r}
    assert "orth" in history["+ decoupling"] and "cmcm" not in history["+ decoupling"]
    assert "geomim_pixels" in history["+ GeoMIM"] and "geomim_pixels" not in history["+ MIM"]
    assert {"nce", "occupancy", "intensity"} <= set(history["PPKT + occupancy"]) and "orth" not in history["PPKT + occupancy"]
    md = (tmp_path / "ladder_toy.md").read_text()
    assert "| + MIM - + codebook |" in md and "| CMCR (occupancy ×10) - CMCR |" in md
    assert (tmp_path / "ladder_toy.png").stat().st_size > 10_000
    # resumable: a second call reruns nothing
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*_runs/*.json")}
    ladder(plan, progress=False, results_dir=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # the BatchNorm control: the same checkpoints read out again (no pretraining), results apart
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/pretrain/checkpoint.pt")}
    recal = experiments_main(["ladder", "--smoke", "--diagnostic-weights", "10", "--name", "ladder_toy", *common, *sets,
                              "--bench-name", "toy", "--batchnorm", "recalibrated"])
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert (tmp_path / "ladder_toy_recalibrated.md").is_file() and len(list(tmp_path.glob("*recalibrated_runs/*.json"))) == 10
    control = batchnorm_control(report, recal)
    assert control["seeds"] == [0] and set(control["rows"]) == set(plan.rows())
    for col, c in control["columns"].items():
        assert c["running"] == {r: rows[r][col]["mean"] for r in control["rows"]}  # one seed: the runs themselves
        assert c["recalibrated"] == {r: recal["summary"]["rows"][r][col]["mean"] for r in control["rows"]}
        ranks = lambda v: [sorted(v.values()).index(v[r]) for r in control["rows"]]  # noqa: E731
        assert c["same_order"] == (ranks(c["running"]) == ranks(c["recalibrated"]))
    assert "Kendall's τ" in batchnorm_sentences(control)


def test_mechanism_at_toy_size(tmp_path, synthetic_root):
    from experiments.mechanism import MechanismPlan, mechanism

    plan = MechanismPlan.smoke(bench=BenchPlan.smoke(dataroot=str(synthetic_root), pretrain=TINY,
                                                     output_root=str(tmp_path / "runs")), full_points=2_000)
    report = experiments_main(["mechanism", "--smoke", "--full-points", "2000", "--dataroot", str(synthetic_root),
                               "--output-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path), "--set"]
                              + [f"{k}={json.dumps(v)}" for k, v in TINY.items()])
    assert report["plan"] == plan.to_dict()
    assert set(report["full"]["shares"]) == {"nce", "orth", "cmcm", "commit_points", "commit_pixels", "mim",
                                             "occupancy", "intensity", "total"}
    again = mechanism(plan, progress=False, results_dir=tmp_path)  # resumes: the full step is kept, not redone
    assert again["full"] == report["full"]
    lite = report["lite"]
    assert [r["step"] for r in lite["records"]] == list(range(0, 4, 2))  # 4 steps on 9 scans at batch 2
    for record in lite["records"]:
        assert sum(v["share"] for k, v in record.items() if k not in ("step", "total")) == pytest.approx(1.0)
    from experiments.mechanism import CONTROL_ROWS

    assert set(report["latent_control"]) == set(CONTROL_ROWS)
    for row in CONTROL_ROWS:
        v = report["latent_control"][row]
        assert set(v) == {"own", "shuffled", "mean", "prior"} and 0 < v["prior"]["occupancy"] <= np.log(2)
    c = report["codebook"]
    assert c["entropy"] <= c["log_k"] + 1e-6 and c["log_m"] == pytest.approx(np.log(c["m"]))
    assert "CMCM" in (tmp_path / "mechanism_smoke.md").read_text()


def test_recalibrated_batchnorm_holds_the_statistics_of_one_pass(synthetic_root):
    """After the recalibration each BatchNorm's running mean is the average of the per-scan means of
    its input over the pass: checked on the first BatchNorm against its input, captured by a hook."""
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import DownstreamConfig, recalibrate_batchnorm

    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="train")
    cfg = DownstreamConfig.lite("linear_probe")
    model = frozen_trunk(cfg, None, seed=0)
    bn = next(m for m in model.trunk.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().mean(0)))
    momentum = bn.momentum
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, kf, cfg, indices=[0, 1, 2])
    hook.remove()
    assert len(seen) == 3 and not model.training and bn.momentum == momentum
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # no weight changed

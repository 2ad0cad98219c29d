"""The converged trunks the notebooks load (``experiments/results/trunks/``): each is the bench's
committed job to the last bit of its loss history, loads into the read-out and into the pretraining
model, and the export refuses a checkpoint whose losses are not the committed job's."""
from dataclasses import replace

import pytest
import torch

from cmcr_lite.analysis.readout import frozen_trunk
from cmcr_lite.downstream import DownstreamConfig
from cmcr_lite.pretrain import PretrainConfig, load_pretrained_model
from cmcr_lite.teacher import init_teacher
from experiments import RESULTS_DIR
from experiments.plan import BenchPlan, job_result, pretrain_checkpoint
from experiments.trunks import ROWS, export, trunk_file
from experiments.wording import load


@pytest.mark.parametrize("row", ROWS)
def test_a_committed_trunk_is_the_benchs_job(row):
    state = torch.load(trunk_file(row), map_location="cpu", weights_only=True)
    committed = load(job_result(RESULTS_DIR / "bench_runs", row, 0))
    assert state["history"] == committed["history"]
    config = PretrainConfig.from_dict(state["config"])
    assert config.seed == 0 and config.epochs == BenchPlan().pretrain_epochs
    assert not any(k.startswith("optimizer") for k in state)  # weights only


@pytest.mark.parametrize("row", ROWS)
def test_a_committed_trunk_loads_into_the_readout_and_the_pretraining_model(row):
    state = torch.load(trunk_file(row), map_location="cpu", weights_only=True)
    readout = frozen_trunk(DownstreamConfig(mode="linear_probe", backbone=PretrainConfig.from_dict(state["config"]).backbone),
                           trunk_file(row), seed=0)
    for key, value in readout.trunk.state_dict().items():
        assert torch.equal(value, state["model"][f"backbone.{key}"]), key
    config = PretrainConfig.from_dict(state["config"])
    assert config.image_encoder == "small_teacher"
    torch.manual_seed(123)
    teacher = init_teacher()  # weights of its own: the file's replace them
    model, loaded_config = load_pretrained_model(trunk_file(row), teacher)
    assert loaded_config == config and not model.training
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())


def test_the_export_refuses_other_bits(tmp_path):
    plan = replace(BenchPlan(), output_root=str(tmp_path / "out"))
    ckpt = pretrain_checkpoint(plan, "PPKT", 0)
    ckpt.parent.mkdir(parents=True)
    history = load(job_result(RESULTS_DIR / "bench_runs", "PPKT", 0))["history"]
    history[-1] = {**history[-1], "loss": history[-1]["loss"] + 1e-7}  # the last bits differ
    torch.save({"history": history, "model": {}, "config": {}}, ckpt)
    with pytest.raises(SystemExit, match=r"losses differ from the committed job's \(results/bench_runs/ppkt_seed0.json\)"):
        export("PPKT", plan, out=tmp_path / "trunks")
    assert not (tmp_path / "trunks").exists()  # nothing written

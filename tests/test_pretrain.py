"""Pretraining: config validation, losses on real batches, atomic checkpoints, exact resume."""
import copy
import json

import numpy as np
import pytest
import torch

from cmcr_lite.data.pipeline import PipelineConfig
from cmcr_lite.data.superpixels import SlicParams
from cmcr_lite.models.image_encoder import SmallImageTeacher
from cmcr_lite.models.minkunet import MinkUNetConfig
from cmcr_lite.pretrain import PretrainConfig, config_from_args, pretrain


def tiny_config(tmp_path, superpixels=False, **kw):
    base = dict(epochs=2, batch_size=1, num_matches=64, output_dir=str(tmp_path),
                backbone=MinkUNetConfig.lite(planes=(8, 8, 8, 8, 8, 8, 8, 8), init_dim=8),
                pipeline=PipelineConfig.lite(crop_size=(56, 104), superpixels=superpixels, crop_min_pairs=50,
                                             slic=SlicParams(n_segments=30)))
    return PretrainConfig.lite(**{**base, **kw})


@pytest.fixture(scope="module")
def two_keyframes(synthetic_root):
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="train")
    kf = copy.copy(kf)
    kf.sample_tokens = kf.sample_tokens[:2]
    return kf


def _teacher():
    torch.manual_seed(123)
    return SmallImageTeacher(width=8, stride=4)


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="tau"):
        PretrainConfig.lite(tau=0)
    with pytest.raises(ValueError, match="method"):
        PretrainConfig.lite(method="moco")
    with pytest.raises(ValueError, match="batch_size"):
        PretrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        PretrainConfig.lite(lr_schedule="step")


def test_config_round_trips_through_json():
    cfg = PretrainConfig.lite(method="slidr")
    again = PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        PretrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1})


def test_cli_overrides(tmp_path):
    class A:
        config, output_dir = "lite", str(tmp_path)
        set = ["method=slidr", "epochs=3", "backbone.bn_momentum=0.02", "pipeline.mask_prob=0.5"]
    cfg = config_from_args(A)
    assert (cfg.method, cfg.epochs, cfg.backbone.bn_momentum, cfg.pipeline.mask_prob) == ("slidr", 3, 0.02, 0.5)
    assert cfg.pipeline.superpixels and not cfg.pipeline.mim_masks  # SLidR reads superpixels, not masks
    A.set = ["no_such_field=1"]
    with pytest.raises(SystemExit, match="no_such_field"):
        config_from_args(A)


@pytest.mark.parametrize("method", ["ppkt", "slidr"])
def test_loss_decreases_and_teacher_stays_frozen(tmp_path, two_keyframes, method):
    teacher = _teacher()
    frozen_before = {k: v.clone() for k, v in teacher.trunk.state_dict().items()}
    cfg = tiny_config(tmp_path, superpixels=(method == "slidr"), method=method, epochs=6, lr=5e-3)
    result = pretrain(cfg, progress=False, keyframes=two_keyframes, image_trunk=teacher)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    for k, v in result["model"].image_encoder.trunk.state_dict().items():
        assert torch.equal(v, frozen_before[k]), f"frozen teacher tensor {k} changed"


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_reaches_the_same_weights(tmp_path, two_keyframes, schedule):
    straight = pretrain(tiny_config(tmp_path / "a", lr_schedule=schedule), progress=False, keyframes=two_keyframes,
                        image_trunk=_teacher())
    # interrupted after the first epoch, then resumed in a fresh call (new model, new optimizer)
    pretrain(tiny_config(tmp_path / "b", lr_schedule=schedule), progress=False, keyframes=two_keyframes,
             image_trunk=_teacher(), stop_after_epoch=0)
    torch.manual_seed(999)  # a resumed run must not depend on the RNG state of the new process
    resumed = pretrain(tiny_config(tmp_path / "b", lr_schedule=schedule), resume=True, progress=False,
                       keyframes=two_keyframes, image_trunk=_teacher())
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    # Bit-identical on one thread; with several, parallel float reductions (MinkowskiEngine's OpenMP
    # kernels, PyTorch) may differ in the last bits, so compare at float32 precision after Adam steps.
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    assert [h["loss"] for h in straight["history"]] == pytest.approx([h["loss"] for h in resumed["history"]], abs=1e-4)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and "model3d" in state
    assert not list((tmp_path / "b").glob(".*tmp*"))  # nothing half-written left


def test_cosine_schedule_takes_the_closed_form_rates(tmp_path, two_keyframes):
    """2 scans at batch 1: 2 steps per epoch, T = 4 steps over 2 epochs; each epoch records the rate
    of its last step, lr (1 + cos(pi t / T)) / 2 at t = 1 and t = 3."""
    lr = 4e-3
    out = pretrain(tiny_config(tmp_path, lr=lr, lr_schedule="cosine"), progress=False, keyframes=two_keyframes,
                   image_trunk=_teacher())
    assert [h["steps"] for h in out["history"]] == [2, 2]
    expected = [lr * (1 + np.sqrt(0.5)) / 2, lr * (1 - np.sqrt(0.5)) / 2]
    assert [h["lr"] for h in out["history"]] == pytest.approx(expected, rel=1e-9)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1], rel=1e-9)
    constant = pretrain(tiny_config(tmp_path / "c", lr=lr, epochs=1), progress=False, keyframes=two_keyframes,
                        image_trunk=_teacher())
    assert constant["history"][0]["lr"] == lr


def test_more_epochs_continue_a_constant_run_but_not_a_scheduled_one(tmp_path, two_keyframes):
    """Under a schedule the epoch count sets every rate taken, so a resume with another count is refused."""
    pretrain(tiny_config(tmp_path / "c", epochs=1), progress=False, keyframes=two_keyframes, image_trunk=_teacher())
    longer = pretrain(tiny_config(tmp_path / "c", epochs=2), resume=True, progress=False, keyframes=two_keyframes,
                      image_trunk=_teacher())
    assert [h["epoch"] for h in longer["history"]] == [0, 1]
    pretrain(tiny_config(tmp_path / "s", epochs=1, lr_schedule="cosine"), progress=False, keyframes=two_keyframes,
             image_trunk=_teacher())
    with pytest.raises(ValueError, match="epochs"):
        pretrain(tiny_config(tmp_path / "s", epochs=2, lr_schedule="cosine"), resume=True, progress=False,
                 keyframes=two_keyframes, image_trunk=_teacher())


def test_resume_refuses_a_different_config(tmp_path, two_keyframes):
    pretrain(tiny_config(tmp_path, epochs=1), progress=False, keyframes=two_keyframes, image_trunk=_teacher())
    with pytest.raises(ValueError, match="tau"):
        pretrain(tiny_config(tmp_path, tau=0.2), resume=True, progress=False, keyframes=two_keyframes,
                 image_trunk=_teacher())


def test_torchrun_two_processes_on_cpu(tmp_path, synthetic_root):
    """The multi-GPU path (DistributedDataParallel + synchronised batch norm) with 2 CPU processes
    and the gloo backend: both ranks train, rank 0 writes one checkpoint."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cmcr_lite.pretrain",
           "--config", "lite", "--output-dir", str(tmp_path), "--set", "epochs=1", "num_matches=64",
           "backbone.planes=[8,8,8,8,8,8,8,8]", "backbone.init_dim=8", "pipeline.superpixels=false",
           "pipeline.crop_size=[56,104]"]
    env = {**os.environ, "CMCR_DATAROOT": str(synthetic_root), "OMP_WAIT_POLICY": "passive"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint:") == 1  # printed by rank 0 only
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and state["history"][0]["steps"] == 4  # 9 scans / 2 ranks, batch 1 each
    assert not any(k.startswith("module.") for k in state["model"])  # saved without the DDP wrapper


def test_from_preset_keeps_preset_values_for_none():
    cfg = PretrainConfig.from_preset("lite", method="cmcr", epochs=None, seed=3)
    assert cfg.epochs == PretrainConfig.lite().epochs and cfg.seed == 3 and cfg.pipeline.mim_masks
    assert PretrainConfig.from_preset("full", epochs=2).backbone == MinkUNetConfig.full()
    with pytest.raises(ValueError, match="preset"):
        PretrainConfig.from_preset("medium")


def test_tensorboard_logs_every_step(tmp_path, two_keyframes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, epochs=2)
    result = pretrain(cfg, progress=False, keyframes=two_keyframes, image_trunk=_teacher())
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"pretrain/loss", "pretrain/lr", "time/step_seconds", "time/data_seconds"} <= tags
    losses = [e.value for e in acc.Scalars("pretrain/loss")]
    assert [e.step for e in acc.Scalars("pretrain/loss")] == [0, 1, 2, 3]  # 2 scans, batch 1, 2 epochs
    per_epoch = [h["loss"] for h in result["history"]]
    assert np.allclose([np.mean(losses[:2]), np.mean(losses[2:])], per_epoch, rtol=1e-5)
    assert np.allclose([e.value for e in acc.Scalars("pretrain/lr")], cfg.lr)  # stored as float32


@pytest.mark.parametrize("method", ["ppkt", "cmcr"])
def test_two_runs_on_one_thread_are_bit_identical(tmp_path, method):
    """The same seed on one thread gives the same losses and weights, bit for bit (a run per core,
    single-threaded, is how the multi-seed experiments are meant to be run)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    states = []
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "cmcr_lite.pretrain", "--config", "lite", "--output-dir", str(tmp_path / name),
               "--set", f"method={method}", "epochs=1", "num_matches=64", "backbone.planes=[8,8,8,8,8,8,8,8]",
               "backbone.init_dim=8", "pipeline.crop_size=[56,104]", "pipeline.occupancy_queries=96"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        states.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True))
    a, b = states
    assert a["history"] == b["history"] and a["history"][0]["steps"] >= 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

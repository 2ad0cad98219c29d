"""`python -m cmcr_lite.downstream`: train, checkpoint, resume, evaluate, results.json and TensorBoard,
through the real command line on the embedded dataset at toy size."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmcr_lite.downstream import (DownstreamConfig, SegmentationModel, load_segmentation_checkpoint, main)
from cmcr_lite.metrics import mean_iou
from cmcr_lite.models.minkunet import MinkUNetConfig
from cmcr_lite.runtime import torch_threads

TINY = ["backbone.planes=[8,8,8,8,8,8,8,8]", "backbone.init_dim=8", "batch_size=3"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synthetic_root):
    """A pretraining-style checkpoint ({'model3d': trunk state}) of a tiny random trunk."""
    torch.manual_seed(5)
    trunk = SegmentationModel(MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8)).trunk
    path = tmp_path_factory.mktemp("pre") / "checkpoint.pt"
    torch.save({"model3d": trunk.state_dict()}, path)
    return path, trunk.state_dict()


def run(*args):
    with torch_threads(1):
        return main([str(a) for a in args])


def run_one_thread(*args):
    """The real command in a fresh process on one OpenMP thread: MinkowskiEngine's OpenMP kernels
    reduce in parallel otherwise, and two runs would differ in the last bits (seen in CI)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.downstream", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(done.stderr.strip().splitlines()[-1])
    return done


def test_finetune_writes_checkpoint_results_and_tensorboard(tmp_path, pretrained, synthetic_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, trunk_state = pretrained
    out = tmp_path / "ft"
    res = run("--pretrained", path, "--mode", "finetune", "--config", "lite", "--epochs", 2, "--output-dir", out,
              "--set", *TINY)
    saved = json.loads((out / "results.json").read_text())
    assert saved["miou"] == pytest.approx(res["miou"]) and 0 <= saved["miou"] <= 1
    assert saved["miou"] == pytest.approx(mean_iou(np.array(saved["confusion"])))  # per-class and mean agree
    assert set(saved["per_class_iou"]) >= {"car", "truck", "driveable_surface"} and "ignore" not in saved["per_class_iou"]
    assert saved["pretrained"] == str(path) and saved["train_scans"] == 9 and saved["val_scans"] == 3
    assert saved["train_scenes"] == ["scene-s0002", "scene-s0003", "scene-s0004"]
    state = load_segmentation_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["config"].epochs == 2 and state["config"].mode == "finetune"
    # fine-tuning moved the pretrained trunk away from its start
    key = next(k for k in trunk_state if k.endswith("kernel"))  # a sparse convolution's weights
    assert not torch.equal(state["model"][f"trunk.{key}"], trunk_state[key])
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/seconds", "epoch/loss", "epoch/lr", "epoch/lr_head", "val/miou"} <= tags
    assert [e.step for e in acc.Scalars("step/loss")] == [0, 1, 2, 3, 4, 5]  # 9 scans / batch 3, 2 epochs
    assert np.allclose([e.value for e in acc.Scalars("step/loss")], state["history"]["step_loss"], rtol=1e-5)
    # --evaluate on the saved model gives the same confusion matrix
    again = run("--evaluate", "--output-dir", out)
    assert again["confusion"] == res["confusion"] and again["pretrained"] == str(path)


def test_resume_reaches_the_uninterrupted_weights(tmp_path, pretrained):
    path, _ = pretrained
    run_one_thread("--pretrained", path, "--mode", "finetune", "--epochs", 2, "--output-dir", tmp_path / "straight", "--set", *TINY)
    run_one_thread("--pretrained", path, "--mode", "finetune", "--epochs", 1, "--output-dir", tmp_path / "split", "--set", *TINY)
    record = (tmp_path / "split" / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"differ.*'lr'"):  # another config cannot resume this checkpoint ...
        run_one_thread("--pretrained", path, "--mode", "finetune", "--epochs", 2, "--output-dir", tmp_path / "split", "--resume",
            "--set", *TINY, "lr=0.5")
    assert (tmp_path / "split" / "config.json").read_text() == record  # and leaves the run's record as it was
    run_one_thread("--pretrained", path, "--mode", "finetune", "--epochs", 2, "--output-dir", tmp_path / "split", "--resume",
        "--set", *TINY)             # ... but more epochs of the same one can, on the same cosine schedule
    a = load_segmentation_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_segmentation_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 1 and a["history"]["step_loss"] == b["history"]["step_loss"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_linear_probe_keeps_the_trunk(tmp_path, pretrained):
    path, trunk_state = pretrained
    out = tmp_path / "lp"
    run_one_thread("--pretrained", path, "--mode", "linear_probe", "--epochs", 1, "--output-dir", out, "--set", *TINY)
    state = load_segmentation_checkpoint(out / "checkpoint.pt")
    for k, v in trunk_state.items():
        assert torch.equal(state["model"][f"trunk.{k}"], v), k
    # resume rebuilds the feature cache and the standardisation from the same frozen trunk (epoch 0
    # trains at the full lr whatever the length, so 1 + 2 epochs equal 3 straight)
    run_one_thread("--pretrained", path, "--mode", "linear_probe", "--epochs", 3, "--output-dir", out, "--resume", "--set", *TINY)
    run_one_thread("--pretrained", path, "--mode", "linear_probe", "--epochs", 3, "--output-dir", tmp_path / "lp3", "--set", *TINY)
    a = load_segmentation_checkpoint(out / "checkpoint.pt")
    b = load_segmentation_checkpoint(tmp_path / "lp3" / "checkpoint.pt")
    assert torch.equal(a["model"]["head.weight"], b["model"]["head.weight"])


def test_full_preset_and_errors(tmp_path, pretrained):
    ft, lp = DownstreamConfig.full("finetune"), DownstreamConfig.full("linear_probe")
    assert (ft.label_fraction, ft.epochs, ft.lr_head) == (0.01, 100, 2.0) and DownstreamConfig.full(
        "finetune", label_fraction=0.1).epochs == 50
    assert (lp.label_fraction, lp.lr, lp.lr_head) == (1.0, 0.05, None)
    with pytest.raises(SystemExit, match="no_such_field"):
        run("--output-dir", tmp_path, "--set", "no_such_field=1")
    with pytest.raises(SystemExit, match="missing.pt"):
        run("--pretrained", tmp_path / "missing.pt", "--output-dir", tmp_path)
    with pytest.raises(SystemExit, match="keeps no scene"):  # 1 % of 3 embedded train scenes
        run("--label-fraction", 0.01, "--epochs", 1, "--output-dir", tmp_path, "--set", *TINY)
    with pytest.raises(SystemExit, match="not found"):
        run("--evaluate", "--output-dir", tmp_path / "nothing")
    wrong = tmp_path / "wide.pt"
    torch.save({"model3d": SegmentationModel(MinkUNetConfig.lite()).trunk.state_dict()}, wrong)
    with pytest.raises(SystemExit, match="shape mismatches"):
        run("--pretrained", wrong, "--epochs", 1, "--output-dir", tmp_path / "w", "--set", *TINY)


def test_help_exits_zero():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cmcr_lite.downstream", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--pretrained", "--mode", "--label-fraction", "--config", "--output-dir", "--set", "--resume",
                   "--evaluate", "--dataroot"):
        assert option in done.stdout


def test_random_init_linear_probe_then_evaluate_elsewhere(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "lp"
    res = run("--mode", "linear_probe", "--config", "lite", "--epochs", 1, "--output-dir", out, "--set", *TINY)
    saved = json.loads((out / "results.json").read_text())
    assert saved["pretrained"] is None and saved["config"]["mode"] == "linear_probe" and saved["config"]["epochs"] == 1
    assert len(saved["train_scenes"]) == 3 and (saved["train_scans"], saved["val_scans"]) == (9, 3)
    assert len(saved["per_class_iou"]) == 16 and np.array(saved["confusion"]).shape == (17, 17)
    run_info = json.loads((out / "config.json").read_text())
    assert run_info["dataroot"] is None and (run_info["train_split"], run_info["val_split"]) == ("train", "val")
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("val/miou")[0].value == pytest.approx(res["miou"], rel=1e-6)
    assert len(acc.Scalars("epoch/loss")) == 1 and len(acc.Scalars("step/loss")) == 3  # 9 scans / batch 3
    # --model: evaluate that checkpoint from another folder; same numbers, written there
    other = tmp_path / "eval"
    again = run("--evaluate", "--model", out / "checkpoint.pt", "--output-dir", other)
    assert again["confusion"] == res["confusion"] and (other / "results.json").is_file()

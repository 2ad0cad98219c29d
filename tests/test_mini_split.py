"""The real-nuScenes code path on a ``v1.0-mini`` stand-in: the generator writes the devkit's mini scene
names and no split file of ours, so the loader splits it with the devkit's ``create_splits_scenes``, as
it would the real download (which cannot be fetched here). One generated set (1 keyframe per scene,
written by the command line) is shared by the module; determinism and atomic writing of the generator
are tested in test_synthetic.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes

from cmcr_lite.data.nuscenes_loader import SPLITS_FILE, DatasetError, NuScenesKeyframes
from cmcr_lite.data.synthetic import generate

MINI = "v1.0-mini"
SEED = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini") / "nuscenes-mini"
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.data.synthetic", "--out", str(root), "--version", MINI,
                           "--samples-per-scene", "1", "--seed", str(SEED)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"10 scenes x 1 keyframes, version {MINI}" in done.stdout
    return root


@pytest.fixture(scope="module")
def moco_weights(tmp_path_factory):
    """A random ResNet-50 saved in the MoCo-v2 checkpoint layout: the real weights cannot be downloaded."""
    from cmcr_lite.models.image_encoder import ResNet50

    torch.manual_seed(0)
    state = {f"module.encoder_q.{k}": v for k, v in ResNet50().state_dict().items() if not k.startswith("fc.")}
    path = tmp_path_factory.mktemp("weights") / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"state_dict": state}, path)
    return path


def scenes_of(kf):
    return {kf.nusc.get("scene", kf.nusc.get("sample", t)["scene_token"])["name"] for t in kf.sample_tokens}


def test_devkit_loads_the_mini_stand_in_with_its_scene_names(mini_root):
    nusc = NuScenes(MINI, str(mini_root), verbose=False)
    splits = create_splits_scenes()
    assert sorted(s["name"] for s in nusc.scene) == sorted(splits["mini_train"] + splits["mini_val"])
    assert len(nusc.scene) == 10
    assert len(nusc.lidarseg) == len(nusc.sample) == 10
    assert (mini_root / "lidarseg" / MINI).is_dir()
    assert not (mini_root / SPLITS_FILE).exists()  # split by the devkit, not by a file of ours
    assert [p.name for p in mini_root.parent.iterdir()] == [mini_root.name]  # written atomically, no temporary left


def test_train_and_val_are_the_devkit_mini_splits(mini_root):
    assert not (mini_root / SPLITS_FILE).exists()  # so this is the devkit-split code path
    splits = create_splits_scenes()
    train = NuScenesKeyframes(mini_root, MINI, "train")
    nusc = train.nusc
    assert scenes_of(train) == set(splits["mini_train"]) and len(train) == 8
    val = NuScenesKeyframes(mini_root, MINI, "val", nusc=nusc)
    assert scenes_of(val) == set(splits["mini_val"]) and len(val) == 2
    assert scenes_of(NuScenesKeyframes(mini_root, MINI, "mini_train", nusc=nusc)) == set(splits["mini_train"])
    assert scenes_of(NuScenesKeyframes(mini_root, MINI, "mini_val", nusc=nusc)) == set(splits["mini_val"])
    assert len(NuScenesKeyframes(mini_root, MINI, "all", nusc=nusc)) == 10
    # a keyframe of the devkit split reads through: points, 16-class labels, 6 images, pairs
    kf = val[0]
    assert kf.points.shape[1] == 4 and len(kf.labels) == len(kf.points) and kf.images.shape[0] == 6
    assert len(kf.pair_points) > 0 and np.all(kf.pair_points < len(kf.points))


@pytest.mark.parametrize("split", ["teacher", "no_such_split"])
def test_an_unknown_split_is_a_clear_error(mini_root, split):
    nusc = NuScenes(MINI, str(mini_root), verbose=False)
    with pytest.raises(DatasetError, match=rf"unknown split '{split}' for v1\.0-mini; use 'all', \['train', 'val'\]"):
        NuScenesKeyframes(mini_root, MINI, split, nusc=nusc)


def test_mini_scene_count_is_fixed(tmp_path):
    with pytest.raises(ValueError, match="10 mini scenes"):
        generate(tmp_path / "x", n_scenes=4, version=MINI, progress=False)
    assert not (tmp_path / "x").exists()
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.data.synthetic", "--out", str(tmp_path / "y"),
                           "--version", MINI, "--scenes", "3"], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode != 0 and "error:" in done.stderr and "Traceback" not in done.stderr


def test_pretraining_runs_on_mini_through_the_cli(mini_root, moco_weights, tmp_path):
    """The lite preset with a ResNet-50 image branch (the small teacher needs a 'teacher' split, see
    below): one epoch of PPKT over the 8 mini_train keyframes writes a checkpoint."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.pretrain", "--config", "lite", "--output-dir", str(out),
                           "--set", f"dataroot={mini_root}", f"version={MINI}", "split=train", "epochs=1",
                           "method=ppkt", "image_encoder=resnet50", f"image_weights={moco_weights}"],
                          capture_output=True, text=True, timeout=600, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["version"], config["split"], config["method"]) == (MINI, "train", "ppkt")
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    n_train = len(create_splits_scenes()["mini_train"])  # 1 keyframe per scene
    assert state["epoch"] == 0 and state["history"][0]["steps"] == n_train // config["batch_size"]
    assert np.isfinite(state["history"][0]["loss"])


def test_pretraining_on_mini_without_a_teacher_split_says_why(mini_root, tmp_path):
    """The lite preset's small image teacher trains on a 'teacher' split, which nuScenes has not: a
    one-line error, not a traceback (the README's mini command uses the ResNet-50)."""
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.pretrain", "--config", "lite", "--output-dir",
                           str(tmp_path), "--set", f"dataroot={mini_root}", f"version={MINI}", "epochs=1",
                           "method=ppkt"], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode != 0 and "error:" in done.stderr and "teacher" in done.stderr
    assert "image_encoder=resnet50" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "config.json").exists()  # nothing half-written
    assert not (mini_root / "teachers").exists()  # nothing trained or cached in the dataset folder

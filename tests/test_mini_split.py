"""The real-nuScenes code path on a ``v1.0-mini`` stand-in: the generator writes the devkit's mini scene
names and no split file of ours, so the loader splits it with the devkit's ``create_splits_scenes``, as
it would the real download (which cannot be fetched here)."""
import subprocess
import sys

import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes

from cmcr_lite.data.nuscenes_loader import SPLITS_FILE, DatasetError, NuScenesKeyframes
from cmcr_lite.data.synthetic import generate


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("mini") / "nuscenes", seed=3, samples_per_scene=1, version="v1.0-mini",
                    progress=False)


def scenes_of(kf):
    return {kf.nusc.get("scene", kf.nusc.get("sample", t)["scene_token"])["name"] for t in kf.sample_tokens}


def test_devkit_loads_the_mini_stand_in_with_its_scene_names(mini_root):
    nusc = NuScenes("v1.0-mini", str(mini_root), verbose=False)
    splits = create_splits_scenes()
    assert sorted(s["name"] for s in nusc.scene) == sorted(splits["mini_train"] + splits["mini_val"])
    assert len(nusc.lidarseg) == len(nusc.sample) == 10
    assert not (mini_root / SPLITS_FILE).exists()  # split by the devkit, not by a file of ours


def test_train_and_val_are_the_devkit_mini_splits(mini_root):
    splits = create_splits_scenes()
    train = NuScenesKeyframes(mini_root, "v1.0-mini", "train")
    assert scenes_of(train) == set(splits["mini_train"])
    assert scenes_of(NuScenesKeyframes(mini_root, "v1.0-mini", "val", nusc=train.nusc)) == set(splits["mini_val"])
    assert scenes_of(NuScenesKeyframes(mini_root, "v1.0-mini", "mini_train", nusc=train.nusc)) == set(splits["mini_train"])
    with pytest.raises(DatasetError, match="unknown split 'teacher'"):
        NuScenesKeyframes(mini_root, "v1.0-mini", "teacher", nusc=train.nusc)


def test_mini_scene_count_is_fixed(tmp_path):
    with pytest.raises(ValueError, match="10 mini scenes"):
        generate(tmp_path / "x", n_scenes=4, version="v1.0-mini", progress=False)


def test_pretraining_on_mini_without_a_teacher_split_says_why(mini_root, tmp_path):
    """The lite preset's small image teacher trains on a 'teacher' split, which nuScenes has not: a
    one-line error, not a traceback (the README's mini command uses the ResNet-50)."""
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.pretrain", "--config", "lite", "--output-dir",
                           str(tmp_path), "--set", f"dataroot={mini_root}", "version=v1.0-mini"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "error:" in done.stderr and "teacher" in done.stderr
    assert "Traceback" not in done.stderr

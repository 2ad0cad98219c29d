"""Every bad input to the nuScenes loader raises an error that names the bad file, token or value.

Each corruption is applied to a private copy of the session dataset (``shutil.copytree``)."""
import json
import re
import shutil

import numpy as np
import pytest

from cmcr_lite.data.nuscenes_loader import (DatasetError, NuScenesKeyframes, load_image, load_points,
                                            open_nuscenes)
from cmcr_lite.paths import EMBEDDED_VERSION as VERSION


@pytest.fixture
def copy_root(synthetic_root, tmp_path):
    root = tmp_path / "nuscenes"
    shutil.copytree(synthetic_root, root)
    return root


def _first(root):
    """Loader over a copy, and the LiDAR and camera sample_data records of its first keyframe."""
    kf = NuScenesKeyframes(root, VERSION, split="all")
    token = kf.sample_tokens[0]
    return kf, kf.lidar_record(token), kf.camera_records(token)


def _edit_table(root, name, edit):
    path = root / VERSION / f"{name}.json"
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


def test_pristine_copy_loads(copy_root):
    """The control for every test below: the unmodified copy loads without error."""
    kf, _, _ = _first(copy_root)
    sample = kf[0]
    assert len(sample.points) > 1000 and sample.images.shape[0] == 6 and len(sample.pair_points) > 1000


def test_missing_root(tmp_path):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        open_nuscenes(missing, VERSION)
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        NuScenesKeyframes(missing, VERSION)


def test_wrong_version_lists_found_versions(synthetic_root):
    with pytest.raises(DatasetError) as exc:
        open_nuscenes(synthetic_root, "v1.0-mini")
    msg = str(exc.value)
    assert "v1.0-mini" in msg and VERSION in msg and str(synthetic_root) in msg


def test_truncated_pcd_bin(copy_root):
    kf, lidar, _ = _first(copy_root)
    path = copy_root / lidar["filename"]
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(DatasetError, match=re.escape(str(path))) as exc:
        kf[0]
    assert "truncated" in str(exc.value)
    # a whole number of float32 values, but not of 5-value points
    path.write_bytes(data[:-8])
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        load_points(path)


def test_empty_pcd_bin(copy_root):
    kf, lidar, _ = _first(copy_root)
    path = copy_root / lidar["filename"]
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=re.escape(str(path))) as exc:
        kf[0]
    assert "empty" in str(exc.value)


def test_missing_pcd_bin(copy_root):
    kf, lidar, _ = _first(copy_root)
    path = copy_root / lidar["filename"]
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        kf[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_points(copy_root, bad):
    kf, lidar, _ = _first(copy_root)
    path = copy_root / lidar["filename"]
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    pts[[3, 10], 0] = bad
    pts.tofile(path)
    with pytest.raises(DatasetError, match=re.escape(str(path))) as exc:
        kf[0]
    assert "2 points" in str(exc.value)


def test_missing_camera_jpeg(copy_root):
    kf, _, cams = _first(copy_root)
    path = copy_root / cams[2]["filename"]
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))) as exc:
        kf[0]
    assert cams[2]["token"] in str(exc.value)


def test_corrupt_camera_jpeg(copy_root):
    kf, _, cams = _first(copy_root)
    path = copy_root / cams[0]["filename"]
    path.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        kf[0]


def test_camera_image_of_wrong_size(copy_root):
    _, _, cams = _first(copy_root)
    path = copy_root / cams[0]["filename"]
    with pytest.raises(DatasetError, match=re.escape(cams[0]["token"])):
        load_image(path, (cams[0]["width"] + 1, cams[0]["height"]), cams[0]["token"])


def test_intrinsic_of_wrong_shape(copy_root):
    _, _, cams = _first(copy_root)
    cs_token = cams[1]["calibrated_sensor_token"]

    def edit(records):
        rec = next(r for r in records if r["token"] == cs_token)
        rec["camera_intrinsic"] = rec["camera_intrinsic"][:2]  # 2x3

    _edit_table(copy_root, "calibrated_sensor", edit)
    kf, _, _ = _first(copy_root)
    with pytest.raises(DatasetError, match=cs_token) as exc:
        kf[0]
    assert "camera_intrinsic" in str(exc.value)


def test_rotation_not_a_unit_quaternion(copy_root):
    _, lidar, _ = _first(copy_root)
    cs_token = lidar["calibrated_sensor_token"]

    def edit(records):
        rec = next(r for r in records if r["token"] == cs_token)
        rec["rotation"] = [2 * v for v in rec["rotation"]]

    _edit_table(copy_root, "calibrated_sensor", edit)
    kf, _, _ = _first(copy_root)
    with pytest.raises(DatasetError, match=cs_token):
        kf[0]


def test_camera_pointing_to_lidar_calibration(copy_root):
    """A camera sample_data whose calibrated_sensor is the LiDAR's. The devkit then files it under
    LIDAR_TOP, so the keyframe has no CAM_FRONT; the error names the sample."""
    kf, lidar, cams = _first(copy_root)
    sample_token = kf.sample_tokens[0]

    def edit(records):
        rec = next(r for r in records if r["token"] == cams[0]["token"])
        rec["calibrated_sensor_token"] = lidar["calibrated_sensor_token"]

    _edit_table(copy_root, "sample_data", edit)
    kf = NuScenesKeyframes(copy_root, VERSION, split="all")
    with pytest.raises(DatasetError, match=sample_token) as exc:
        kf[0]
    assert "CAM_FRONT" in str(exc.value) or cams[0]["token"] in str(exc.value)


@pytest.mark.parametrize("delta", [-1, +5])
def test_lidarseg_wrong_number_of_labels(copy_root, delta):
    kf, lidar, _ = _first(copy_root)
    path = copy_root / kf.nusc.get("lidarseg", lidar["token"])["filename"]
    labels = np.fromfile(path, dtype=np.uint8)
    (labels[:delta] if delta < 0 else np.concatenate([labels, labels[:delta]])).tofile(path)
    with pytest.raises(DatasetError, match=re.escape(str(path))) as exc:
        kf[0]
    assert str(len(labels) + delta) in str(exc.value)


def test_missing_lidarseg_file(copy_root):
    kf, lidar, _ = _first(copy_root)
    path = copy_root / kf.nusc.get("lidarseg", lidar["token"])["filename"]
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        kf[0]


def test_unknown_split(synthetic_root):
    with pytest.raises(DatasetError, match="'no-such-split'") as exc:
        NuScenesKeyframes(synthetic_root, VERSION, split="no-such-split")
    assert "train" in str(exc.value)


def test_split_without_scenes(copy_root):
    path = copy_root / "cmcr_splits.json"
    splits = json.loads(path.read_text())
    splits["teacher"] = []
    splits["ghost"] = ["scene-that-does-not-exist"]
    path.write_text(json.dumps(splits))
    for split in ("teacher", "ghost"):
        with pytest.raises(DatasetError, match=f"'{split}'") as exc:
            NuScenesKeyframes(copy_root, VERSION, split=split)
        assert "no keyframes" in str(exc.value)


def test_table_missing(copy_root):
    (copy_root / VERSION / "sample.json").unlink()
    with pytest.raises(DatasetError, match="sample.json"):
        open_nuscenes(copy_root, VERSION)

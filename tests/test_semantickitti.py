"""SemanticKITTI's on-disk format: the learning map against semantic-kitti.yaml, the 16/16-bit label
split, clear errors for broken files, SLidR's frame-fraction rule, and the synthetic writer."""
import numpy as np
import pytest

from cmcr_lite.data.semantickitti import (CLASS_NAMES_19, LEARNING_MAP, NUM_CLASSES_19, SemanticKittiError,
                                          SemanticKittiScans, load_scan,
                                          map_labels, select_frames_by_fraction, split_frames, write_synthetic)

# raw label -> class, copied from PRBonn/semantic-kitti-api config/semantic-kitti.yaml (learning_map)
YAML = {0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
        49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6,
        255: 8, 256: 5, 257: 5, 258: 4, 259: 5}


def test_learning_map_is_the_official_one():
    assert LEARNING_MAP == YAML
    assert NUM_CLASSES_19 == 20 and CLASS_NAMES_19[1] == "car" and CLASS_NAMES_19[19] == "traffic-sign"
    # moving classes fold onto their static class, lane markings onto road
    assert map_labels(np.array([252, 258, 254, 60])).tolist() == [1, 4, 6, 9]


def _write(tmp_path, points, words):
    scan, label = tmp_path / "000000.bin", tmp_path / "000000.label"
    np.asarray(points, np.float32).tofile(scan)
    np.asarray(words, np.uint32).tofile(label)
    return scan, label


def test_semantic_label_is_the_lower_16_bits(tmp_path):
    pts = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    # instance ids 7, 65535 and 1 in the upper half must not leak into the class
    words = [(7 << 16) | 10, (65535 << 16) | 258, (1 << 16) | 72]
    points, labels = load_scan(*_write(tmp_path, pts, words))
    np.testing.assert_array_equal(points, pts)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 4, 17]


def test_truncated_scan_and_count_mismatch_are_named(tmp_path):
    scan, label = _write(tmp_path, np.zeros((3, 4)), [10, 10, 10])
    with open(scan, "ab") as f:
        f.write(b"\0" * 6)  # a cut-off fourth point
    with pytest.raises(SemanticKittiError, match=r"000000\.bin.*truncated"):
        load_scan(scan, label)
    scan, label = _write(tmp_path, np.zeros((3, 4)), [10, 10])
    with pytest.raises(SemanticKittiError, match=r"000000\.label.*2 labels.*3 points"):
        load_scan(scan, label)
    np.array([10, 10, 12345], np.uint32).tofile(label)
    np.zeros((3, 4), np.float32).tofile(scan)
    with pytest.raises(SemanticKittiError, match="12345"):
        load_scan(scan, label)


def test_frame_fraction_keeps_every_kth_sorted_frame():
    frames = [(f"sequences/{s:02d}/velodyne/{k:06d}.bin", None) for s in (1, 0) for k in range(150)]
    one = select_frames_by_fraction(frames, 0.01)
    assert [f for f, _ in one] == ["sequences/00/velodyne/000000.bin", "sequences/00/velodyne/000100.bin",
                                   "sequences/01/velodyne/000050.bin"]
    assert len(select_frames_by_fraction(frames, 0.1)) == 30 and len(select_frames_by_fraction(frames, 1.0)) == 300
    with pytest.raises(ValueError, match="fraction"):
        select_frames_by_fraction(frames, 0)


def test_synthetic_set_loads_with_every_class_in_range(tmp_path):
    root = write_synthetic(tmp_path / "kitti", sequences=(0, 8), frames_per_sequence=1)
    train, val = split_frames(root, "train"), split_frames(root, "val")
    assert [p.parent.parent.name for p, _ in train] == ["00"] and [p.parent.parent.name for p, _ in val] == ["08"]
    points, labels = load_scan(*train[0])
    assert points.shape[1] == 4 and 0 <= points[:, 3].min() and points[:, 3].max() <= 1
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES_19
    raw = np.fromfile(train[0][1], np.uint32)
    assert (raw >> 16).max() > 0 and ((raw & 0xFFFF) == 252).any()  # instances, and moving cars
    names = {CLASS_NAMES_19[c] for c in np.unique(labels)}
    assert {"car", "truck", "road", "sidewalk", "terrain", "vegetation", "building"} <= names


def test_scans_feed_the_downstream_voxeliser_with_slidr_features(tmp_path):
    """SemanticKittiScans is what the downstream code reads: SLidR's feature reflectance + 1, labels
    per voxel, and the label fraction chosen by frame."""
    from cmcr_lite.downstream import SegmentationScans, keyframe_indices_for_fraction

    root = write_synthetic(tmp_path / "kitti", sequences=(0, 1), frames_per_sequence=3)
    scans = SemanticKittiScans(root, "train")
    assert len(scans) == 6
    raw, _ = load_scan(*scans.frames[0])
    points, labels = scans.load_scan(0)
    np.testing.assert_allclose(points[:, 3], raw[:, 3] + 1)
    assert keyframe_indices_for_fraction(scans, 0.5) == [0, 2, 4]
    item = SegmentationScans(scans, intensity_scale=1.0)[0]
    assert item["feats"].min() >= 1 and item["feats"].max() <= 2
    np.testing.assert_array_equal(item["point_labels"], labels)


def test_downstream_cli_fine_tunes_on_semantickitti(tmp_path):
    """``python -m cmcr_lite.downstream --dataset semantickitti``: a 20-logit head, results by the 19
    class names, 1 % of the frames by SLidR's rule (here 1 of the 4 training frames at 1/4)."""
    import json

    from cmcr_lite.downstream.cli import main

    root = write_synthetic(tmp_path / "kitti", sequences=(0, 1, 8), frames_per_sequence=2)
    res = main(["--dataset", "semantickitti", "--dataroot", str(root), "--mode", "finetune", "--config", "lite",
                "--label-fraction", "0.25", "--epochs", "1", "--output-dir", str(tmp_path / "run"), "--set",
                "backbone.planes=[8,8,8,8,8,8,8,8]", "backbone.init_dim=8"])
    assert res["config"]["num_classes"] == 20 and res["config"]["intensity_scale"] == 1.0
    assert res["train_scans"] == 1 and res["val_scans"] == 2
    assert {"car", "road", "vegetation"} <= set(res["per_class_iou"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "semantickitti"
    again = main(["--evaluate", "--output-dir", str(tmp_path / "run")])  # finds its dataset again
    assert again["miou"] == res["miou"]

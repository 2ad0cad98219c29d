"""``--write-predictions``: the benchmarks' submission layouts, read back by the field's own code.

nuScenes: on a generated ``v1.0-mini`` stand-in (the devkit's mini scene names, split by the devkit),
a tiny model trained for one epoch, then ``--evaluate --write-predictions``; the devkit's
``validate_submission`` accepts the folder and its ``LidarSegEval`` prints the CLI's own per-class IoU
and mIoU (nuScenes rule). SemanticKITTI: the written ``.label`` files, read as the official
``evaluate_semantics.py`` reads them (lower 16 bits, ``learning_map``), give the CLI's confusion matrix.
"""
import json
import math

import numpy as np
import pytest

from cmcr_lite.downstream.cli import main
from cmcr_lite.runtime import torch_threads

TINY = ["backbone.planes=[8,8,8,8,8,8,8,8]", "backbone.init_dim=8", "batch_size=3"]
MINI = "v1.0-mini"


def run(*args):
    with torch_threads(1):
        return main([str(a) for a in args])


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    from cmcr_lite.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("mini") / "nuscenes-mini", seed=3, samples_per_scene=1, version=MINI,
                    progress=False)


def test_nuscenes_devkit_scores_what_the_cli_wrote(mini_root, tmp_path):
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission
    from nuscenes.nuscenes import NuScenes

    out, preds = tmp_path / "run", tmp_path / "preds"
    run("--dataroot", mini_root, "--version", MINI, "--mode", "linear_probe", "--epochs", 1, "--output-dir", out,
        "--set", *TINY, "miou_rule=nuscenes")
    res = run("--evaluate", "--output-dir", out, "--write-predictions", preds)
    assert res["miou_rule"] == "nuscenes" and res["miou"] == res["miou_by_rule"]["nuscenes"]
    assert sorted(p.name for p in preds.iterdir()) == ["lidarseg", "mini_val"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    meta = json.loads((preds / "mini_val" / "submission.json").read_text())["meta"]
    assert meta["use_lidar"] is True and not meta["use_camera"]

    nusc = NuScenes(MINI, str(mini_root), verbose=False)
    validate_submission(nusc, str(preds), "mini_val")  # raises on a bad layout, count or class range
    devkit = LidarSegEval(nusc, str(preds), "mini_val").evaluate()
    assert devkit["miou"] == pytest.approx(res["miou"], rel=1e-9)
    for name, iou in res["per_class_iou"].items():
        theirs = devkit["iou_per_class"][name]
        assert (iou is None and math.isnan(theirs)) or iou == pytest.approx(theirs, rel=1e-9), name
    # one file per val scan, one uint8 per point of the scan, 1..16
    files = sorted((preds / "lidarseg" / "mini_val").iterdir())
    assert len(files) == res["val_scans"] == 2
    for f in files:
        pred = np.fromfile(f, np.uint8)
        points = nusc.get("sample_data", f.name.removesuffix("_lidarseg.bin"))["filename"]
        assert len(pred) == (mini_root / points).stat().st_size // 20 and pred.min() >= 1 and pred.max() <= 16


def test_semantickitti_labels_read_back_as_the_official_evaluator_reads_them(tmp_path):
    from cmcr_lite.data.semantickitti import SemanticKittiScans, map_labels, write_synthetic
    from cmcr_lite.metrics import confusion_matrix

    root = write_synthetic(tmp_path / "kitti", sequences=(0, 8), frames_per_sequence=2)
    out, preds = tmp_path / "run", tmp_path / "preds"
    run("--dataset", "semantickitti", "--dataroot", root, "--mode", "linear_probe", "--epochs", 1, "--output-dir", out,
        "--set", *TINY)
    res = run("--evaluate", "--output-dir", out, "--write-predictions", preds)
    assert res["miou_rule"] == "present"  # lite; --config full scores by the SemanticKITTI rule
    val = SemanticKittiScans(root, "val")
    conf = np.zeros((20, 20), np.int64)
    for i, (velodyne, _) in enumerate(val.frames):
        words = np.fromfile(preds / "sequences" / "08" / "predictions" / f"{velodyne.stem}.label", np.uint32)
        points, labels = val.load_scan(i)
        assert len(words) == len(points)
        conf += confusion_matrix(map_labels(words), labels, 20)
    assert conf.tolist() == res["confusion"]


def test_full_semantickitti_scores_by_the_official_rule():
    from argparse import Namespace

    from cmcr_lite.downstream.cli import _config_from_args

    args = dict(label_fraction=None, epochs=None, seed=None, mode="finetune", set=None)
    assert _config_from_args(Namespace(config="full", dataset="semantickitti", **args)).miou_rule == "semantickitti"
    assert _config_from_args(Namespace(config="lite", dataset="semantickitti", **args)).miou_rule == "present"
    assert _config_from_args(Namespace(config="full", dataset="nuscenes", **args)).miou_rule == "nuscenes"


def test_a_failed_write_leaves_nothing(two_keyframes, tmp_path):
    from cmcr_lite.downstream.submission import PredictionWriter

    out = tmp_path / "preds"
    n = len(two_keyframes.load_scan(0)[0])
    with pytest.raises(RuntimeError, match="stopped"):
        with PredictionWriter(out, two_keyframes) as write:
            write(0, np.ones(n, np.int64))
            raise RuntimeError("stopped")
    with pytest.raises(ValueError, match="no predictions for 1 of the 2 scans"):
        with PredictionWriter(out, two_keyframes) as write:
            write(0, np.ones(n, np.int64))
    with pytest.raises(ValueError, match="classes 1..16"):
        with PredictionWriter(out, two_keyframes) as write:
            write(0, np.zeros(n, np.int64))  # the ignore class: the devkit refuses it
    assert list(tmp_path.iterdir()) == []

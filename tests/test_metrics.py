"""Confusion matrix, IoU and mIoU against hand-made matrices (docs/paper.md §5, "Metric")."""
import math

import numpy as np
import pytest
import torch

from cmcr_lite.classes import CLASS_NAMES_16
from cmcr_lite.metrics import (
    MIOU_RULES,
    confusion_matrix,
    format_iou_report,
    iou_by_rule,
    iou_per_class,
    iou_report,
    mean_iou,
)

# classes: 0 = ignore, 1, 2, 3 ; class 4 absent everywhere (empty union)
TARGET = [0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 1]
PRED = [1, 2, 1, 1, 1, 2, 2, 2, 3, 3, 1, 0]
# after dropping target==0: (t,p) = (1,1)x3 (1,2) (2,2)x2 (2,3) (3,3) (3,1) (1,0)
HAND = np.array([
    [0, 0, 0, 0, 0],
    [1, 3, 1, 0, 0],
    [0, 0, 2, 1, 0],
    [0, 1, 0, 1, 0],
    [0, 0, 0, 0, 0],
])
# IoU_1 = 3/(5+4-3)=1/2 ; IoU_2 = 2/(3+3-2)=1/2 ; IoU_3 = 1/(2+2-1)=1/3 ; IoU_4 empty
HAND_IOU = [0.0, 0.5, 0.5, 1 / 3]


def test_confusion_matrix_numpy_and_torch():
    conf = confusion_matrix(np.array(PRED), np.array(TARGET), 5)
    assert isinstance(conf, np.ndarray) and conf.dtype == np.int64
    np.testing.assert_array_equal(conf, HAND)
    conf_t = confusion_matrix(torch.tensor(PRED), torch.tensor(TARGET), 5)
    assert isinstance(conf_t, torch.Tensor) and conf_t.dtype == torch.int64
    np.testing.assert_array_equal(conf_t.numpy(), HAND)
    # without ignore: the two target-0 points appear in row 0
    full = confusion_matrix(PRED, TARGET, 5, ignore_index=None)
    assert full[0].tolist() == [0, 1, 1, 0, 0] and full.sum() == len(TARGET)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.array([5, 1]), np.array([1, 1]), 5)
    with pytest.raises(ValueError, match="elements"):
        confusion_matrix(np.array([1, 1, 1]), np.array([1, 1]), 5)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.tensor([1]), torch.tensor([-2]), 5)


def test_iou_and_miou_known_values():
    iou = iou_per_class(HAND)
    assert iou[1:4].tolist() == pytest.approx(HAND_IOU[1:])
    assert math.isnan(iou[4])
    assert iou[0] == 0.0  # class 0 has a union (a pred-0 point) but no TP
    # mIoU excludes ignore (0) and the empty class 4
    assert mean_iou(HAND) == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    # the official rule (empty union -> 1) counts class 4 as perfect and inflates the mean
    assert mean_iou(HAND, empty_value=1.0) == pytest.approx((0.5 + 0.5 + 1 / 3 + 1.0) / 4)
    # without an ignore index, class 0 still does not count: it has predictions but no true point
    assert mean_iou(HAND, ignore_index=None) == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert math.isnan(mean_iou(np.zeros((3, 3), dtype=np.int64)))


def test_miou_counts_the_classes_present_in_the_ground_truth():
    """One stray prediction of a class absent from the targets: the mean stays over the true classes
    (only the victim's IoU drops), while the official rule adds a 0 for the stray class."""
    stray = HAND.copy()
    stray[3, 3] -= 1
    stray[3, 4] += 1                      # one class-3 point predicted as the absent class 4
    iou3 = 0 / (1 + 1 + 1 - 0)            # TP 0, row 2, column 1
    assert iou_per_class(stray)[4] == 0.0  # class 4 now has a union, and IoU 0
    assert mean_iou(stray) == pytest.approx((0.5 + 0.5 + iou3) / 3)
    assert mean_iou(stray, empty_value=1.0) == pytest.approx((0.5 + 0.5 + iou3 + 0.0) / 4)
    assert format_iou_report(iou_report(stray, ("ignore", "a", "b", "c", "d"))).splitlines()[-1].split()[1] == \
        f"{100 * (0.5 + 0.5 + iou3) / 3:.1f}"


def test_miou_against_per_class_counting():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 17, 5000)
    pred = np.where(rng.random(5000) < 0.7, target, rng.integers(1, 17, 5000))
    conf = confusion_matrix(pred, target, 17)
    ious = []
    for c in range(1, 17):
        t, p = target[target != 0] == c, pred[target != 0] == c
        ious.append((t & p).sum() / (t | p).sum())
    assert mean_iou(conf) == pytest.approx(np.mean(ious))


def test_iou_report_rows_and_table():
    names = ("ignore", "a", "b", "c", "d")
    rows = iou_report(HAND, names)
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0] == {"index": 1, "name": "a", "iou": 0.5, "tp": 3, "fp": 1, "fn": 2,
                       "support": 5}
    assert math.isnan(rows[3]["iou"])
    table = format_iou_report(rows)
    assert "a" in table and "50.0" in table and "n/a" in table
    assert "mIoU" in table and f"{100 * (0.5 + 0.5 + 1 / 3) / 3:.1f}" in table
    with pytest.raises(ValueError):
        iou_report(HAND, CLASS_NAMES_16)


# ------------------------------------------------------------------------------------------ the three mIoU rules
# classes: 0 = ignore, 1-3 in the ground truth, 4 only predicted (a false positive), 5 absent from both
RULES = np.array([
    [0, 0, 0, 0, 0, 0],
    [1, 3, 1, 0, 0, 0],   # one class-1 point predicted ignore
    [0, 0, 2, 1, 0, 0],
    [0, 1, 0, 1, 1, 0],   # one class-3 point predicted 4
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
])
# IoU = TP / (row + column - TP). Class 1: 3 / (5 + 4 - 3) = 1/2, or 3 / (4 + 4 - 3) = 3/5 once the devkit
# drops the point predicted ignore; class 2: 2 / (3 + 3 - 2) = 1/2; class 3: 1 / (3 + 2 - 1) = 1/4;
# class 4: 0 / 1 = 0; class 5: empty union.
BY_HAND = {
    "present": (0.5 + 0.5 + 0.25) / 3,                    # 0.4167: classes 1-3
    "nuscenes": (0.6 + 0.5 + 0.25 + 0.0) / 4,             # 0.3375: classes 1-4 (4 has a prediction)
    "semantickitti": (0.5 + 0.5 + 0.25 + 0.0 + 0.0) / 5,  # 0.25: every class but ignore, 5 scores 0
}


@pytest.mark.parametrize("rule", sorted(BY_HAND))
def test_each_rule_by_hand(rule):
    assert mean_iou(RULES, rule=rule) == pytest.approx(BY_HAND[rule])
    rows = iou_report(RULES, ("ignore", "a", "b", "c", "d", "e"), rule=rule)
    counted = [r["iou"] for r in rows if not math.isnan(iou_by_rule(RULES, rule)[r["index"]])]
    assert np.mean(counted) == pytest.approx(BY_HAND[rule])
    assert format_iou_report(rows, digits=2, rule=rule).splitlines()[-1].split()[1] == f"{100 * BY_HAND[rule]:.2f}"
    # the released CMCR code's rule is not one of them: an empty class scores 1
    assert mean_iou(RULES, empty_value=1.0) == pytest.approx((0.5 + 0.5 + 0.25 + 0.0 + 1.0) / 5)


def test_rule_rows_and_names():
    nus = iou_report(RULES, ("ignore", "a", "b", "c", "d", "e"), rule="nuscenes")
    assert nus[0] == {"index": 1, "name": "a", "iou": 0.6, "tp": 3, "fp": 1, "fn": 1, "support": 4}
    assert math.isnan(nus[4]["iou"]) and nus[3]["iou"] == 0.0
    kitti = iou_report(RULES, ("ignore", "a", "b", "c", "d", "e"), rule="semantickitti")
    assert kitti[0]["iou"] == 0.5 and kitti[4]["iou"] == 0.0
    assert "nuScenes devkit rule: 4 of 5" in format_iou_report(nus, rule="nuscenes")
    assert "SemanticKITTI rule: all 5" in format_iou_report(kitti, rule="semantickitti")
    assert "(3 of 5 classes present)" in format_iou_report(iou_report(RULES, "iabcde"))
    with pytest.raises(ValueError, match="rows from iou_report"):
        format_iou_report(iou_report(RULES, "iabcde"), rule="semantickitti")
    with pytest.raises(ValueError, match="rule must be one of"):
        mean_iou(RULES, rule="kitti")
    with pytest.raises(ValueError, match="empty_value"):
        mean_iou(RULES, empty_value=1.0, rule="nuscenes")


def test_rules_agree_when_every_class_is_present_and_ignore_never_predicted():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 17, 4000)
    pred = np.where(rng.random(4000) < 0.6, np.maximum(target, 1), rng.integers(1, 17, 4000))
    conf = confusion_matrix(pred, target, 17)
    values = [mean_iou(conf, rule=rule) for rule in MIOU_RULES]
    assert values == pytest.approx([values[0]] * 3, rel=1e-12)


def test_nuscenes_rule_is_the_devkits_confusion_matrix():
    """Against nuscenes.eval.lidarseg.utils.ConfusionMatrix (what LidarSegEval uses), fed in chunks as
    it is scan by scan: ignore points, a class only predicted (7) and one absent from both (12)."""
    from nuscenes.eval.lidarseg.utils import ConfusionMatrix

    rng = np.random.default_rng(2)
    classes = np.array([c for c in range(17) if c not in (7, 12)])
    target = rng.choice(classes, 30000)                          # 0 included: ignore points
    pred = np.where(rng.random(30000) < 0.5, np.maximum(target, 1), rng.choice(classes[classes > 0], 30000))
    pred[rng.random(30000) < 0.01] = 7                           # false positives of class 7
    devkit = ConfusionMatrix(17, ignore_idx=0)
    conf = np.zeros((17, 17), np.int64)
    for chunk in np.array_split(np.arange(30000), 5):
        devkit.update(target[chunk], pred[chunk])                # the devkit asserts predictions in 1..16
        conf += confusion_matrix(pred[chunk], target[chunk], 17)
    theirs = np.asarray(devkit.get_per_class_iou(), np.float64)
    ours = iou_by_rule(conf, "nuscenes")
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.isnan(ours[[0, 12]]).all() and ours[7] == 0.0
    np.testing.assert_allclose(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)], rtol=1e-12)
    assert mean_iou(conf, rule="nuscenes") == pytest.approx(devkit.get_mean_iou(), rel=1e-12)
    # the present rule leaves class 7 out, the SemanticKITTI rule gives 7 and 12 a 0
    assert mean_iou(conf) == pytest.approx(np.mean(ours[[c for c in range(1, 17) if c not in (7, 12)]]))
    assert mean_iou(conf, rule="semantickitti") == pytest.approx(np.nansum(ours) / 16)


def test_nuscenes_rule_drops_points_predicted_ignore():
    """The devkit zeroes the ignore column too: a labelled point predicted 0 is not counted at all,
    where the other rules count it as a miss of its class."""
    conf = confusion_matrix(np.array([0, 1, 1, 2]), np.array([1, 1, 1, 2]), 3)
    assert mean_iou(conf, rule="nuscenes") == pytest.approx((2 / 2 + 1) / 2)
    assert mean_iou(conf, rule="present") == mean_iou(conf, rule="semantickitti") == pytest.approx((2 / 3 + 1) / 2)

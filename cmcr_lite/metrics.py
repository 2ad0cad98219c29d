"""Segmentation metrics: confusion matrix, per-class IoU and mIoU (docs/paper.md §5, "Metric").

Convention: ``conf[t, p]`` counts points of ground-truth class ``t`` predicted as ``p``; points
whose *target* is the ignore index (0) are dropped before counting. A prediction of the ignore
class on a labelled point stays in the matrix, as a miss of the true class.

Which classes count: three rules, named by ``rule`` (:data:`MIOU_RULES`) wherever an mIoU is computed.

* ``"present"`` (the default, this project's rule for small sets: the lite preset, the bench, the
  notebooks): the mean over the classes **present in the ground truth** (at least one evaluated
  point). On nuScenes val, where all 16 are, it is the usual 16-class mean; on a small split that
  lacks a class, one stray prediction of that class would otherwise add an IoU of 0. The released
  CMCR code (``utils/metrics.py:28``) averages over all 16 and gives IoU = 1 to a class absent from
  both targets and predictions: ``empty_value=1.0`` reproduces it.
* ``"nuscenes"``: the nuScenes-lidarseg devkit's (``nuscenes.eval.lidarseg.utils.ConfusionMatrix``,
  which ``LidarSegEval`` uses): the ignore class's row **and column** are zeroed (a point predicted
  ignore is not counted at all), IoU = TP / (TP + FP + FN), NaN where that union is empty, and the
  mIoU is the ``nanmean``: every class in the ground truth **or** the predictions counts, a class
  only predicted scores 0. The default at full scale on nuScenes.
* ``"semantickitti"``: the official SemanticKITTI evaluator's (PRBonn/semantic-kitti-api,
  ``auxiliary/np_ioueval.py``): points whose ground truth is ignore are dropped, a prediction of the
  ignore class on a labelled point is a miss of the true class (as here), IoU = TP / (TP + FP + FN +
  1e-15), and the mean is over **every** class but ignore: a class absent from both scores 0. The
  default on SemanticKITTI.

The three agree when every class is in the ground truth and ignore is never predicted (nuScenes val,
SemanticKITTI val with its 19 classes, and ``downstream.evaluate`` never predicts ignore).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from cmcr_lite.classes import (APPEARANCE_ONLY, APPEARANCE_ONLY_TWINS, BOTH_DIFFER, CLASS_NAMES_16, GEOMETRY_ONLY,
                               GEOMETRY_ONLY_TWINS, class_index)

try:  # torch is optional for this module
    import torch
except ImportError:  # pragma: no cover
    torch = None

ArrayLike = Union[np.ndarray, "torch.Tensor"]

__all__ = ["MIOU_RULES", "confusion_matrix", "iou_per_class", "present_classes", "iou_by_rule", "mean_iou",
           "iou_report", "format_iou_report"]

MIOU_RULES = ("present", "nuscenes", "semantickitti")  # see the module doc


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int,
                     ignore_index: Optional[int] = 0) -> ArrayLike:
    """Confusion matrix by ``bincount``.

    Args:
        pred: (N,) integer — predicted classes in ``[0, num_classes)``.
        target: (N,) integer — ground-truth classes in ``[0, num_classes)``.
        num_classes: K (17 for nuScenes: 16 classes + ignore 0).
        ignore_index: points whose target equals it are dropped (None = keep all).

    Returns:
        (K, K) int64, rows = target, columns = prediction. A torch tensor (on the input's device)
        if both inputs are torch tensors, else a numpy array.
    """
    on_torch = _is_torch(pred) and _is_torch(target)
    if on_torch:  # stays on the input's device
        pred_k, target_k = pred.reshape(-1).long(), target.reshape(-1).long()
    else:
        pred_k = _to_numpy(pred).reshape(-1).astype(np.int64)
        target_k = _to_numpy(target).reshape(-1).astype(np.int64)
    if pred_k.shape != target_k.shape:
        raise ValueError(f"confusion_matrix: pred has {len(pred_k)} elements, target has {len(target_k)}")
    if ignore_index is not None:
        keep = target_k != ignore_index
        pred_k, target_k = pred_k[keep], target_k[keep]
    for name, v in (("pred", pred_k), ("target", target_k)):
        if len(v) and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"confusion_matrix: {name} values must lie in [0, {num_classes}); "
                             f"got range [{int(v.min())}, {int(v.max())}]")
    if on_torch:
        flat = torch.bincount(target_k * num_classes + pred_k, minlength=num_classes ** 2)
        return flat.reshape(num_classes, num_classes).to(torch.int64)
    flat = np.bincount(target_k * num_classes + pred_k, minlength=num_classes ** 2)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(conf: ArrayLike, empty_value: float = math.nan) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN).

    Args:
        conf: (K, K) confusion matrix (rows = target, columns = prediction), numpy or torch.
        empty_value: IoU given to classes with an empty union (NaN here; 1.0 in the official code).

    Returns:
        (K,) float64 numpy array.
    """
    c = _to_numpy(conf).astype(np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"iou_per_class: conf must be square (K, K), got shape {c.shape}")
    tp = np.diag(c)
    union = c.sum(axis=0) + c.sum(axis=1) - tp
    iou = np.full(c.shape[0], empty_value, dtype=np.float64)
    nonempty = union > 0
    iou[nonempty] = tp[nonempty] / union[nonempty]
    return iou


def present_classes(conf: ArrayLike, ignore_index: Optional[int] = 0) -> np.ndarray:
    """(K,) bool: the classes with at least one ground-truth point (a row sum > 0), ``ignore_index`` off."""
    c = _to_numpy(conf)
    present = c.sum(axis=1) > 0
    if ignore_index is not None:
        present[ignore_index] = False
    return present


def _check_rule(rule: str, where: str) -> None:
    if rule not in MIOU_RULES:
        raise ValueError(f"{where}: rule must be one of {MIOU_RULES}, got {rule!r}")


def _rule_matrix(conf: ArrayLike, rule: str, ignore_index: Optional[int]) -> np.ndarray:
    """The (K, K) int64 matrix ``rule`` counts from: the ignore class's row dropped ("present",
    "semantickitti": points whose ground truth is ignore), and its column too ("nuscenes": the devkit
    also drops points *predicted* ignore)."""
    c = _to_numpy(conf).astype(np.int64).copy()
    if ignore_index is not None:
        c[ignore_index, :] = 0
        if rule == "nuscenes":
            c[:, ignore_index] = 0
    return c


def iou_by_rule(conf: ArrayLike, rule: str = "present", ignore_index: Optional[int] = 0) -> np.ndarray:
    """Per-class IoU as ``rule`` (:data:`MIOU_RULES`, see the module doc) scores it.

    Args:
        conf: (K, K) confusion matrix (rows = target, columns = prediction), numpy or torch.
        rule: ``"present"``, ``"nuscenes"`` or ``"semantickitti"``.
        ignore_index: the ignored class (never counts), or None.

    Returns:
        (K,) float64: the IoU of each class that counts in the rule's mIoU, NaN for the others
        (``ignore_index``; under "present" the classes without a ground-truth point, under "nuscenes"
        those with an empty union; under "semantickitti" every other class counts, 0 if absent).
        The rule's mIoU is the mean of the non-NaN entries.
    """
    _check_rule(rule, "iou_by_rule")
    c = _rule_matrix(conf, rule, ignore_index)
    if rule == "semantickitti":
        iou = iou_per_class(c, empty_value=0.0)  # tp / (tp + fp + fn + 1e-15): 0 when all three are 0
    else:
        iou = iou_per_class(c)
        if rule == "present":
            iou[~present_classes(c, ignore_index)] = math.nan
    if ignore_index is not None:
        iou[ignore_index] = math.nan
    return iou


def mean_iou(conf: ArrayLike, ignore_index: Optional[int] = 0,
             empty_value: float = math.nan, rule: str = "present") -> float:
    """Mean IoU by ``rule`` (:data:`MIOU_RULES`, see the module doc), ``ignore_index`` excluded.

    ``"present"`` (default): over the classes present in the ground truth. A class counts when at
    least one evaluated point belongs to it. On nuScenes val every one of the 16 classes is present, so
    this is the usual 16-class mean; on a small split that lacks a class, one stray prediction of that
    class would otherwise add an IoU of 0 and move the mean (measured once on the notebook-size set:
    1.3 points from a single point). With ``empty_value`` given (1.0: the released CMCR code's rule),
    every class but ``ignore_index`` counts instead, and a class absent from both targets and
    predictions scores ``empty_value``. ``"nuscenes"``: the devkit's number (``LidarSegEval``'s
    ``miou``); ``"semantickitti"``: the official evaluator's ``IoU avg``. Returns NaN if no class is left.
    """
    _check_rule(rule, "mean_iou")
    if not math.isnan(empty_value):
        if rule != "present":
            raise ValueError(f"mean_iou: empty_value applies to rule='present' only, got rule={rule!r}")
        iou = iou_per_class(conf, empty_value=empty_value)
        mask = np.ones(iou.shape[0], dtype=bool)
        if ignore_index is not None:
            mask[ignore_index] = False
        vals = iou[mask]
    else:
        iou = iou_by_rule(conf, rule, ignore_index)
        vals = iou[~np.isnan(iou)]
    return float(vals.mean()) if vals.size else math.nan


def iou_report(conf: ArrayLike, class_names: Sequence[str], ignore_index: Optional[int] = 0,
               empty_value: float = math.nan, rule: str = "present") -> List[Dict]:
    """Per-class IoU rows, one dict per class except ``ignore_index``.

    Args:
        conf: (K, K) confusion matrix.
        class_names: K names, e.g. ``cmcr_lite.classes.CLASS_NAMES_16``.
        rule: whose counts (:data:`MIOU_RULES`): under ``"nuscenes"`` a point predicted ignore is
            dropped (not a false negative), under ``"semantickitti"`` an empty class has IoU 0.

    Returns:
        List of ``{"index", "name", "iou", "tp", "fp", "fn", "support"}`` (``support`` = number of
        ground-truth points; ``iou`` NaN for an empty union unless ``empty_value`` is given or the
        rule is "semantickitti"). :func:`format_iou_report` with the same ``rule`` prints them.
    """
    _check_rule(rule, "iou_report")
    if rule != "present" and not math.isnan(empty_value):
        raise ValueError(f"iou_report: empty_value applies to rule='present' only, got rule={rule!r}")
    c = _to_numpy(conf).astype(np.int64)
    if len(class_names) != c.shape[0]:
        raise ValueError(f"iou_report: {len(class_names)} class names for a {c.shape[0]}-class "
                         f"confusion matrix")
    if rule != "present":
        c = _rule_matrix(c, rule, ignore_index)
        empty_value = 0.0 if rule == "semantickitti" else math.nan
    iou = iou_per_class(c, empty_value=empty_value)
    tp = np.diag(c)
    rows = []
    for k, name in enumerate(class_names):
        if ignore_index is not None and k == ignore_index:
            continue
        rows.append({
            "index": k,
            "name": name,
            "iou": float(iou[k]),
            "tp": int(tp[k]),
            "fp": int(c[:, k].sum() - tp[k]),
            "fn": int(c[k, :].sum() - tp[k]),
            "support": int(c[k, :].sum()),
        })
    return rows


def format_iou_report(rows: List[Dict], digits: int = 1, rule: str = "present") -> str:
    """Small fixed-width table (IoU in %) of ``iou_report`` rows (made with the same ``rule``), with
    the mIoU by ``rule`` on the last line, which names the rule."""
    _check_rule(rule, "format_iou_report")
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'class':<{width}}  {'IoU %':>6}  {'support':>9}"]
    for r in rows:
        iou = "n/a" if math.isnan(r["iou"]) else f"{100 * r['iou']:.{digits}f}"
        lines.append(f"{r['name']:<{width}}  {iou:>6}  {r['support']:>9d}")
    if rule == "present":
        vals = [r["iou"] for r in rows if r["support"] > 0]
        counted = f"({len(vals)} of {len(rows)} classes present)"
    elif rule == "nuscenes":  # the devkit's nanmean: classes in the ground truth or predicted
        vals = [r["iou"] for r in rows if not math.isnan(r["iou"])]
        counted = f"(nuScenes devkit rule: {len(vals)} of {len(rows)} classes in the ground truth or predicted)"
    else:
        if any(math.isnan(r["iou"]) for r in rows):
            raise ValueError("format_iou_report: rule='semantickitti' needs rows from iou_report(..., "
                             "rule='semantickitti') (an absent class has IoU 0 there, not NaN)")
        vals = [r["iou"] for r in rows]
        counted = f"(SemanticKITTI rule: all {len(rows)} classes, an absent one scores 0)"
    miou = f"{100 * sum(vals) / len(vals):.{digits}f}" if vals else "n/a"
    lines.append(f"{'mIoU':<{width}}  {miou:>6}  {counted}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ twin summaries
# The embedded dataset's twin groups (cmcr_lite.classes): mean IoU per group, and how well the
# predictions tell each twin from its twin.
GROUPS = {"geometry-only": GEOMETRY_ONLY, "appearance-only": APPEARANCE_ONLY, "both": BOTH_DIFFER}
TWIN_METRICS = {"geometry twins told apart": GEOMETRY_ONLY_TWINS, "appearance twins told apart": APPEARANCE_ONLY_TWINS}


def twin_separation(conf: np.ndarray, a: str, b: str) -> float:
    """How well predictions tell twin ``a`` from twin ``b``: the balanced accuracy of the 2x2 block of
    the confusion matrix (rows = truth) restricted to the two classes; 0.5 = chance. NaN if either
    class has no point predicted as one of the two."""
    i, j = class_index(a), class_index(b)
    row_i, row_j = conf[i, i] + conf[i, j], conf[j, j] + conf[j, i]
    if row_i == 0 or row_j == 0:
        return float("nan")
    return 0.5 * (conf[i, i] / row_i + conf[j, j] / row_j)


def summarize_confusion(conf: np.ndarray) -> dict:
    """mIoU over the classes present in the ground truth (:func:`mean_iou`'s rule), their per-class
    IoU, and the mean IoU of each twin group over its present classes. A class only predicted, never
    true, is left out of every mean (its false positives still lower the IoU of the true classes)."""
    iou = iou_per_class(conf)
    present = present_classes(conf)
    per_class = {CLASS_NAMES_16[k]: float(iou[k]) for k in range(1, len(iou)) if present[k]}
    out = {"miou": float(np.mean(list(per_class.values()))), "per_class": per_class}
    for group, names in GROUPS.items():
        vals = [per_class[n] for n in names if n in per_class]
        out[group] = float(np.mean(vals)) if vals else float("nan")
    for metric, pairs in TWIN_METRICS.items():
        out[metric] = float(np.nanmean([twin_separation(conf, a, b) for a, b in pairs]))
    out["confusion"] = np.asarray(conf).tolist()
    return out

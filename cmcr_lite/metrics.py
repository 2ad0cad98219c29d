"""Segmentation metrics: confusion matrix, per-class IoU and mIoU (docs/paper.md §5, "Metric").

Convention: ``conf[t, p]`` counts points of ground-truth class ``t`` predicted as ``p``; points
whose *target* is the ignore index (0) are dropped before counting. A prediction of the ignore
class on a labelled point stays in the matrix, as a miss of the true class.

Which classes count. The mIoU averages over the classes **present in the ground truth** (at least
one evaluated point), as on nuScenes val where all 16 are. The official code (``utils/metrics.py:28``)
averages over all 16 and gives IoU = 1 to a class whose union is empty (absent from both targets and
predictions), which inflates the mean when classes are missing from a small validation subset, and
a class predicted but absent scores 0. Pass ``empty_value=1.0`` to reproduce the official rule.
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

__all__ = ["confusion_matrix", "iou_per_class", "present_classes", "mean_iou", "iou_report", "format_iou_report"]


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


def mean_iou(conf: ArrayLike, ignore_index: Optional[int] = 0,
             empty_value: float = math.nan) -> float:
    """Mean IoU over the classes present in the ground truth, ``ignore_index`` excluded.

    The rule: a class counts when at least one evaluated point belongs to it. On nuScenes val every
    one of the 16 classes is present, so this is the usual 16-class mean; on a small split that lacks
    a class, one stray prediction of that class would otherwise add an IoU of 0 and move the mean
    (measured once on the notebook-size set: 1.3 points from a single point). With ``empty_value``
    given (1.0: the official code's rule), every class but ``ignore_index`` counts instead, and a
    class absent from both targets and predictions scores ``empty_value``. Returns NaN if no class
    is left.
    """
    if not math.isnan(empty_value):
        iou = iou_per_class(conf, empty_value=empty_value)
        mask = np.ones(iou.shape[0], dtype=bool)
        if ignore_index is not None:
            mask[ignore_index] = False
    else:
        iou = iou_per_class(conf)
        mask = present_classes(conf, ignore_index)
    vals = iou[mask]
    return float(vals.mean()) if vals.size else math.nan


def iou_report(conf: ArrayLike, class_names: Sequence[str], ignore_index: Optional[int] = 0,
               empty_value: float = math.nan) -> List[Dict]:
    """Per-class IoU rows, one dict per class except ``ignore_index``.

    Args:
        conf: (K, K) confusion matrix.
        class_names: K names, e.g. ``cmcr_lite.classes.CLASS_NAMES_16``.

    Returns:
        List of ``{"index", "name", "iou", "tp", "fp", "fn", "support"}`` (``support`` = number of
        ground-truth points; ``iou`` NaN for an empty union unless ``empty_value`` is given).
    """
    c = _to_numpy(conf).astype(np.int64)
    if len(class_names) != c.shape[0]:
        raise ValueError(f"iou_report: {len(class_names)} class names for a {c.shape[0]}-class "
                         f"confusion matrix")
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


def format_iou_report(rows: List[Dict], digits: int = 1) -> str:
    """Small fixed-width table (IoU in %) of ``iou_report`` rows, with the mIoU on the last line."""
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'class':<{width}}  {'IoU %':>6}  {'support':>9}"]
    for r in rows:
        iou = "n/a" if math.isnan(r["iou"]) else f"{100 * r['iou']:.{digits}f}"
        lines.append(f"{r['name']:<{width}}  {iou:>6}  {r['support']:>9d}")
    vals = [r["iou"] for r in rows if r["support"] > 0]  # mean_iou's rule: classes in the ground truth
    miou = f"{100 * sum(vals) / len(vals):.{digits}f}" if vals else "n/a"
    lines.append(f"{'mIoU':<{width}}  {miou:>6}  ({len(vals)} of {len(rows)} classes present)")
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

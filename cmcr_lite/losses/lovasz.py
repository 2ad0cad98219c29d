"""Lovász-softmax and the downstream segmentation loss (docs/paper.md §5, "Loss").

Berman, Triki & Blaschko, "The Lovász-Softmax loss: a tractable surrogate for the optimization of
the intersection-over-union measure in neural networks", CVPR 2018.

For one class c, the Jaccard loss of a set of mispredicted points M is
``Δ_J(M) = |M| / |y_c ∪ M|`` with y_c the ground-truth points of class c; it is submodular, so its
Lovász extension is a tight convex surrogate. With per-point errors ``m_i = |1[y_i = c] - p_i(c)|``
sorted in decreasing order (permutation π), the extension is

    lovasz(m) = Σ_i m_π(i) · g_i,    g_i = Δ_J({π(1..i)}) - Δ_J({π(1..i-1)}),

i.e. the errors weighted by the increments of the Jaccard loss along the sorted order. Lovász-softmax
averages this over classes (``classes='present'``: only classes that occur in the labels). On hard
(0/1) predictions it equals the mean over classes of ``1 - IoU_c`` exactly.

The downstream loss of the official code is ``CE + Lovász-softmax`` after removing the points
labelled with the ignore index (``segmentation_loss``).
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["lovasz_grad", "lovasz_softmax", "segmentation_loss"]


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss along a sorted order.

    Args:
        fg_sorted: (N,) float in {0, 1} — ground-truth membership of the points, sorted by
            decreasing error.

    Returns:
        (N,) float — ``g_i = Δ_J(first i points) - Δ_J(first i-1 points)``, with
        ``Δ_J(first i) = 1 - (G - fg_cum_i) / (G + bg_cum_i)`` where G = number of ground-truth
        points, fg_cum/bg_cum the running counts of fore/background points among the first i.
    """
    total_fg = fg_sorted.sum()
    intersection = total_fg - fg_sorted.cumsum(0)  # ground truth still correctly covered
    union = total_fg + (1.0 - fg_sorted).cumsum(0)  # ground truth plus false positives so far
    jaccard_loss = 1.0 - intersection / union  # union >= 1 whenever N >= 1
    grad = jaccard_loss.clone()
    if grad.numel() > 1:
        grad[1:] = jaccard_loss[1:] - jaccard_loss[:-1]
    return grad


def _kept_points(where: str, name: str, scores: torch.Tensor, labels: torch.Tensor, ignore_index):
    """Check ``scores`` (N, C) against ``labels`` (N,) and drop the points labelled ``ignore_index``."""
    if scores.dim() != 2 or labels.dim() != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: expected {name} (N, C) and labels (N,); got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    if ignore_index is not None:
        keep = labels != ignore_index
        scores, labels = scores[keep], labels[keep]
    return scores, labels


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor,
                   classes: Union[str, Iterable[int]] = "present",
                   ignore_index: Optional[int] = None) -> torch.Tensor:
    """Flat Lovász-softmax loss.

    Args:
        probs: (N, C) float — class probabilities (softmax output), one row per point.
        labels: (N,) int64 in ``[0, C)`` — ground-truth classes.
        classes: ``'present'`` (average over classes present in ``labels``), ``'all'`` (all C
            classes) or an iterable of class indices.
        ignore_index: label value whose points are removed first (None = keep all).

    Returns:
        Scalar tensor. Zero (with grad) when no point or no class is left.
    """
    probs, labels = _kept_points("lovasz_softmax", "probs", probs, labels, ignore_index)
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    num_classes = probs.shape[1]
    if classes == "present":
        class_list = torch.unique(labels).tolist()
    elif classes == "all":
        class_list = list(range(num_classes))
    elif isinstance(classes, str):
        raise ValueError(f"lovasz_softmax: classes must be 'present', 'all' or indices, got {classes!r}")
    else:
        class_list = list(classes)
    losses = []
    for c in class_list:
        if not 0 <= c < num_classes:
            raise ValueError(f"lovasz_softmax: class {c} outside [0, {num_classes})")
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: Optional[int] = 0) -> torch.Tensor:
    """Downstream semantic-segmentation loss: cross-entropy + Lovász-softmax (docs/paper.md §5).

    Args:
        logits: (N, C) float — per-point (or per-voxel) class scores, C = 17 for nuScenes
            (16 classes + ignore 0).
        labels: (N,) int64 in ``[0, C)``.
        ignore_index: points with this label are removed before both terms (None = keep all).

    Returns:
        Scalar tensor ``CE(logits, labels) + lovasz_softmax(softmax(logits), labels, 'present')``
        over the kept points; zero (with grad) if none is kept.
    """
    logits, labels = _kept_points("segmentation_loss", "logits", logits, labels, ignore_index)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, labels)
    return ce + lovasz_softmax(F.softmax(logits, dim=1), labels, classes="present")

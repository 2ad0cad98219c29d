"""Contrastive distillation losses (docs/paper.md §4.1): point–pixel and superpoint–superpixel InfoNCE.

CMCR's ``L_NCE`` is the PPKT point–pixel InfoNCE: every LiDAR point that projects into a camera
image forms a *pair* with the pixel it lands on. A set of pairs is sampled, and for each sampled
point the paired pixel is the positive while the *other sampled pixels* are the negatives.

SLidR's superpoint–superpixel variant (used by the SLidR configs, not by CMCR's default) first
average-pools features inside image superpixels (2D) and inside the sets of points that project
into each superpixel (the "superpoints", 3D), and contrasts the pooled vectors instead.

Both losses take *already gathered* features: the caller indexes the 3D features with the paired
voxel/point indices and the 2D features with the paired pixel indices, so row ``i`` of
``point_feats`` and row ``i`` of ``pixel_feats`` form a positive pair.

Direction. The official code computes ``cross_entropy(k @ q.T / tau, arange)`` with ``k`` the 3D
features (rows) and ``q`` the 2D features (columns): for each point, classify its pixel among the
sampled pixels ("point→pixel"). This is the default here. ``symmetric=True`` averages it with the
pixel→point direction (columns as anchors), which the official code does not do.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "info_nce",
    "sample_matches",
    "point_pixel_infonce",
    "scatter_mean",
    "superpixel_infonce",
]


def _check_pair(point_feats: torch.Tensor, pixel_feats: torch.Tensor, where: str) -> None:
    if point_feats.dim() != 2 or pixel_feats.dim() != 2:
        raise ValueError(
            f"{where}: point_feats and pixel_feats must be 2-D (M, C); got shapes "
            f"{tuple(point_feats.shape)} and {tuple(pixel_feats.shape)}"
        )


def infonce_from_logits(logits: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE of a square score matrix whose diagonal holds the positives: the one implementation
    every contrastive loss of the package calls (PPKT/SLidR, the teacher, CMCM, notebook 01's theory).

    Args:
        logits: (N, N) float, ``logits[i, j]`` = score of candidate j for anchor i (temperature
            already applied); entries set to ``-inf`` are excluded candidates.
        symmetric: if True, average the row (anchor -> candidates) and column directions.

    Returns:
        Scalar tensor ``mean_i -log softmax_j(logits[i])[i]`` (nats), computed with log-sum-exp.
    """
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), target))
    return loss


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, tau: float = 0.07,
             symmetric: bool = False) -> torch.Tensor:
    """InfoNCE with diagonal positives on L2-normalised features.

    Args:
        anchors: (N, C) float — row ``i`` is the anchor of pair ``i`` (3D features).
        positives: (N, C) float — row ``i`` is the positive of anchor ``i``; the other rows are its
            negatives (2D features).
        tau: temperature (> 0).
        symmetric: if True, average the anchors→positives and positives→anchors directions.

    Returns:
        Scalar tensor: ``mean_i -log softmax_j(<a_i, p_j> / tau)[i]`` (anchors as rows).
    """
    if anchors.shape != positives.shape:
        raise ValueError(
            f"info_nce: anchors and positives must have the same shape (N, C); got "
            f"{tuple(anchors.shape)} and {tuple(positives.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"info_nce: tau must be > 0, got {tau}")
    n = anchors.shape[0]
    if n == 0:
        return anchors.sum() * 0.0 + positives.sum() * 0.0
    k = F.normalize(anchors, dim=1)
    q = F.normalize(positives, dim=1)
    return infonce_from_logits(k @ q.t() / tau, symmetric)  # (N, N): rows = anchors, columns = candidates


def sample_matches(num_pairs: int, num_matches: int = 2048,
                   generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """Indices of ``min(num_pairs, num_matches)`` pairs drawn without replacement.

    Args:
        num_pairs: M, the number of available pairs.
        num_matches: how many to keep (paper: 2048).
        generator: optional ``torch.Generator`` for reproducible draws (its device is used for the
            permutation, the result is moved to ``device``).
        device: device of the returned tensor.

    Returns:
        (min(M, num_matches),) int64 — distinct indices in ``[0, M)``, in random order.
    """
    if num_matches < 1:
        raise ValueError(f"sample_matches: num_matches must be >= 1, got {num_matches}")
    if num_pairs < 0:
        raise ValueError(f"sample_matches: num_pairs must be >= 0, got {num_pairs}")
    perm_device = generator.device if generator is not None else device
    perm = torch.randperm(num_pairs, generator=generator, device=perm_device)
    return perm[:num_matches].to(device) if device is not None else perm[:num_matches]


def point_pixel_infonce(point_feats: torch.Tensor, pixel_feats: torch.Tensor, tau: float = 0.07,
                        num_matches: int = 2048, generator: Optional[torch.Generator] = None,
                        symmetric: bool = False) -> torch.Tensor:
    """PPKT point–pixel InfoNCE (CMCR's ``L_NCE``, docs/paper.md §4.1).

    Args:
        point_feats: (M, C) float — 3D (shared) features of the paired points/voxels.
        pixel_feats: (M, C) float — 2D (shared) features at the paired pixels; row ``i`` is the
            positive of ``point_feats[i]``.
        tau: temperature (paper: 0.07).
        num_matches: pairs sampled without replacement (paper: 2048); all M are used if M is
            smaller. The other sampled pixels are the negatives of each point.
        generator: optional ``torch.Generator`` making the draw reproducible.
        symmetric: False (default, as the official code) = point→pixel only: rows are points and
            the softmax runs over the sampled pixels. True averages with pixel→point.

    Returns:
        Scalar tensor, the mean cross-entropy on the diagonal of ``k qᵀ / tau`` where k, q are
        the L2-normalised sampled point and pixel features.
    """
    _check_pair(point_feats, pixel_feats, "point_pixel_infonce")
    if point_feats.shape != pixel_feats.shape:
        raise ValueError(
            "point_pixel_infonce: point_feats and pixel_feats must both be (M, C) with row i a "
            f"positive pair; got {tuple(point_feats.shape)} and {tuple(pixel_feats.shape)}"
        )
    idx = sample_matches(point_feats.shape[0], num_matches, generator=generator,
                         device=point_feats.device)
    return info_nce(point_feats[idx], pixel_feats[idx], tau=tau, symmetric=symmetric)


def scatter_mean(feats: torch.Tensor, index: torch.Tensor,
                 num_segments: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average the rows of ``feats`` that share a segment index (``index_add_`` + ``bincount``).

    Args:
        feats: (N, C) float.
        index: (N,) int64 in ``[0, num_segments)``.
        num_segments: S.

    Returns:
        means: (S, C) float — mean of the rows of each segment, zeros for empty segments.
        counts: (S,) int64 — number of rows in each segment.
    """
    if index.dim() != 1 or feats.dim() != 2 or index.shape[0] != feats.shape[0]:
        raise ValueError(
            f"scatter_mean: expected feats (N, C) and index (N,); got {tuple(feats.shape)} and "
            f"{tuple(index.shape)}"
        )
    sums = feats.new_zeros(num_segments, feats.shape[1]).index_add_(0, index, feats)
    counts = torch.bincount(index, minlength=num_segments)
    means = sums / counts.clamp(min=1).unsqueeze(1).to(feats.dtype)
    return means, counts


def superpixel_infonce(point_feats: torch.Tensor, pixel_feats: torch.Tensor,
                       point_superpixel: torch.Tensor, pixel_superpixel: torch.Tensor,
                       tau: float = 0.07, symmetric: bool = False) -> torch.Tensor:
    """SLidR superpoint–superpixel InfoNCE with average pooling (docs/paper.md §4.1, "Alternative").

    Superpixel ids are *global*: int64, unique across all images of the batch (e.g.
    ``image_index * max_superpixels_per_image + local_id``). Negative ids mean "no superpixel" and
    are dropped. Ids need not be contiguous.

    Args:
        point_feats: (M, C) float — 3D features of the paired points (one row per point–pixel pair;
            a point seen by two cameras may appear twice).
        pixel_feats: (P, C) float — 2D features of *all* pixels of the batch's images, flattened.
        point_superpixel: (M,) int64 — global id of the superpixel containing the pixel paired
            with ``point_feats[i]``.
        pixel_superpixel: (P,) int64 — global superpixel id of each pixel.
        tau: temperature.
        symmetric: False (default, as SLidR) = superpoint→superpixel rows only.

    Returns:
        Scalar tensor. The 3D features are averaged over the pairs falling in each superpixel (the
        superpoint), the 2D features over all pixels of the superpixel; superpixels present in both
        are kept, the pooled vectors L2-normalised, and InfoNCE is applied with matching
        superpixels as positives and the other superpixels of the batch as negatives. Returns a
        zero (with grad) when no superpixel is present in both.
    """
    _check_pair(point_feats, pixel_feats, "superpixel_infonce")
    if point_feats.shape[1] != pixel_feats.shape[1]:
        raise ValueError(
            f"superpixel_infonce: feature widths differ: point_feats has C={point_feats.shape[1]}, "
            f"pixel_feats has C={pixel_feats.shape[1]}"
        )
    if point_superpixel.dim() != 1 or point_superpixel.shape[0] != point_feats.shape[0]:
        raise ValueError(
            f"superpixel_infonce: point_superpixel must be (M,) with M={point_feats.shape[0]} "
            f"(rows of point_feats); got shape {tuple(point_superpixel.shape)}"
        )
    if pixel_superpixel.dim() != 1 or pixel_superpixel.shape[0] != pixel_feats.shape[0]:
        raise ValueError(
            f"superpixel_infonce: pixel_superpixel must be (P,) with P={pixel_feats.shape[0]} "
            f"(rows of pixel_feats); got shape {tuple(pixel_superpixel.shape)}"
        )
    if point_superpixel.dtype.is_floating_point or pixel_superpixel.dtype.is_floating_point:
        raise ValueError("superpixel_infonce: superpixel ids must be integer (int64) tensors")

    keep_p = point_superpixel >= 0
    keep_i = pixel_superpixel >= 0
    pf, ps = point_feats[keep_p], point_superpixel[keep_p].long()
    xf, xs = pixel_feats[keep_i], pixel_superpixel[keep_i].long()

    # Compact the global ids to 0..S-1 so that pooling buffers stay small.
    ids, inverse = torch.unique(torch.cat([ps, xs]), return_inverse=True)
    s = ids.shape[0]
    k, count_3d = scatter_mean(pf, inverse[: ps.shape[0]], s)
    q, count_2d = scatter_mean(xf, inverse[ps.shape[0]:], s)
    both = (count_3d > 0) & (count_2d > 0)
    if not bool(both.any()):
        return point_feats.sum() * 0.0 + pixel_feats.sum() * 0.0
    return info_nce(k[both], q[both], tau=tau, symmetric=symmetric)


def dense_infonce(f1: torch.Tensor, f2: torch.Tensor, tau: float,
                  exclude: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric pixel InfoNCE: row ``i`` of ``f1`` and row ``i`` of ``f2`` (N, C) are a positive
    pair, the other rows of the other set are its negatives, except where ``exclude`` says not.

    Args:
        f1, f2: (N, C) float features (L2-normalised here).
        tau: temperature.
        exclude: optional (N, N) bool, True where column j is neither positive nor negative for
            row i (here: pixels of the same image too close to the anchor); the diagonal is kept.

    Returns:
        (loss scalar = mean of the f1->f2 and f2->f1 cross-entropies of ``f1 f2^T / tau``,
        top-1 accuracy: fraction of rows of f1 whose best column is its own pair, no grad).
    """
    f1, f2 = F.normalize(f1, dim=1), F.normalize(f2, dim=1)
    logits = f1 @ f2.t() / tau
    target = torch.arange(len(f1), device=f1.device)
    if exclude is not None:
        exclude = exclude.clone()
        exclude[target, target] = False
        logits = logits.masked_fill(exclude, float("-inf"))
    loss = infonce_from_logits(logits, symmetric=True)
    with torch.no_grad():
        acc = (logits.argmax(1) == target).float().mean()
    return loss, acc

"""Occupancy and intensity estimation (docs/paper.md §2 "Occupancy query points", §3.3, §4.5): ``L_occ``.

CMCR borrows ALSO's self-supervised surface reconstruction. Every LiDAR return ``p`` tells us that
the ray from the sensor to ``p`` is *empty* and that the space just behind ``p`` is *occupied*.
Per scan, query points are drawn along these rays (before augmentation, in the LiDAR frame whose
origin is the sensor):

* **in** (1/3): ``p + band * u * p_hat`` -- up to ``band`` (0.1 m) behind the surface: occupied,
  intensity target = intensity of ``p``;
* **out** (1/3): ``p - band * u * p_hat`` -- up to ``band`` in front of the surface: free,
  intensity target = intensity of ``p``;
* **out-far** (1/3): ``u * p`` -- anywhere between the sensor and the surface: free, no intensity
  target (``-1``);

with ``u ~ U(0, 1)`` drawn per query and ``p_hat = (p - origin) / |p - origin|``.

Each query is decoded from the LiDAR points around it: the points within ``radius`` = 1 m (same
scan) are its *neighbours*, at most 32 of them (the official code's ``torch_geometric.nn.radius``
call keeps PyG's default ``max_num_neighbors=32``: the first 32 points in index order; the data
pipeline searches them in its loader workers, ``cmcr_lite.data.occupancy_queries.neighbourhood_pairs``); the pair (query, neighbour) is fed to a small MLP with input
``[latent of the neighbour's voxel || query - neighbour]`` (``OccupancyDecoder``), which outputs an
occupancy logit and an intensity. ``L_occ`` is the binary cross-entropy of *every pair* against its
query's label (ALSO's formulation, no aggregation over neighbours) and the intensity loss is an L1
on pairs whose query has an intensity target.

The query points themselves are data: ``cmcr_lite.data.occupancy_queries`` draws them (and moves
them with the point augmentation); they are re-exported here.

Units: positions in metres, intensities in raw sensor units (nuScenes 0..255) until the loss, which
divides targets by ``intensity_scale`` (255, as the official loader).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

__all__ = [
    "KIND_IN",
    "KIND_OUT",
    "KIND_OUT_FAR",
    "sample_query_points",
    "transform_queries",
    "neighbourhood_pairs",
    "OccupancyDecoder",
    "occupancy_losses",
    "occupancy_accuracy",
    "grid_centres",
    "occupancy_grid",
]

from cmcr_lite.data.occupancy_queries import (KIND_IN, KIND_OUT, KIND_OUT_FAR,  # noqa: F401 (re-exported)
                                              _ball_pairs, _cap_neighbours, _to_numpy, neighbourhood_pairs,
                                              sample_query_points, transform_queries)


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------
class OccupancyDecoder(nn.Module):
    """ALSO-style per-(query, neighbour) MLP (docs/paper.md §3.3).

    ``Linear(D+3, h), [ReLU, Linear(h, h)] x n_hidden, ReLU, Linear(h, 2)``; CMCR: D = 64, h = 128,
    n_hidden = 2. Output column 0 is the occupancy logit, column 1 the intensity (in units of
    ``intensity_scale``, i.e. ~[0, 1]).
    """

    def __init__(self, latent_dim: int = 64, hidden: int = 128, n_hidden: int = 2):
        super().__init__()
        layers = [nn.Linear(latent_dim + 3, hidden)]
        for _ in range(n_hidden):
            layers += [nn.ReLU(), nn.Linear(hidden, hidden)]
        layers += [nn.ReLU(), nn.Linear(hidden, 2)]
        self.mlp = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, latents: torch.Tensor, rel_pos: torch.Tensor) -> torch.Tensor:
        """latents (E, D) of each pair's neighbour, rel_pos (E, 3) = query - neighbour (metres) -> (E, 2)."""
        if latents.dim() != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"OccupancyDecoder: latents must be (E, {self.latent_dim}); got {tuple(latents.shape)}")
        if rel_pos.shape != (latents.shape[0], 3):
            raise ValueError(f"OccupancyDecoder: rel_pos must be ({latents.shape[0]}, 3); got {tuple(rel_pos.shape)}")
        return self.mlp(torch.cat([latents, rel_pos.to(latents.dtype)], 1))

    def forward_pairs(self, point_latents: torch.Tensor, queries: torch.Tensor, points: torch.Tensor,
                      query_index: torch.Tensor, point_index: torch.Tensor) -> torch.Tensor:
        """Gather and decode: point_latents (N, D) per point (e.g. ``voxel_feats[voxel_of_point]``),
        queries (Q, 3), points (N, 3), pair indices (E,) -> (E, 2)."""
        rel = queries[query_index] - points[point_index]
        return self(point_latents[point_index], rel)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def _scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean of rows of ``values`` (E, C) per ``index`` (E,) into (size, C); also the counts (size,)."""
    sums = values.new_zeros((size,) + values.shape[1:]).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=size).to(values.dtype)
    return sums / counts.clamp(min=1).view(-1, *([1] * (values.dim() - 1))), counts


def occupancy_losses(pred: torch.Tensor, occupied_per_query: torch.Tensor, intensity_per_query: torch.Tensor,
                     query_index: torch.Tensor, aggregate: Optional[str] = None,
                     intensity_scale: float = 255.0) -> dict:
    """``L_occ`` and the intensity loss (docs/paper.md §4.5).

    Args:
        pred: (E, 2) decoder output per (query, neighbour) pair: occupancy logit, intensity.
        occupied_per_query: (Q,) float {0, 1}.
        intensity_per_query: (Q,) float, raw units; < 0 = no target (out-far queries).
        query_index: (E,) int64 query of each pair.
        aggregate: ``None`` (default, CMCR/ALSO) — BCE-with-logits of every pair against its query's
            label, averaged over pairs; L1 averaged over pairs whose query has intensity >= 0.
            ``"mean"`` (our addition, not in the paper) — first average both output channels over
            each query's neighbours, then one BCE / L1 per query (queries without neighbours skipped).
        intensity_scale: targets are ``intensity / intensity_scale`` (255 as the official code).

    Returns:
        dict(occupancy=scalar tensor, intensity=scalar tensor); 0 (with a graph) when nothing counts.
    """
    if pred.dim() != 2 or pred.shape[1] != 2:
        raise ValueError(f"occupancy_losses: pred must be (E, 2); got {tuple(pred.shape)}")
    if query_index.shape != (pred.shape[0],):
        raise ValueError(f"occupancy_losses: query_index must be ({pred.shape[0]},); got {tuple(query_index.shape)}")
    occ = occupied_per_query.to(pred.dtype).reshape(-1)
    inten = intensity_per_query.to(pred.dtype).reshape(-1)
    query_index = query_index.long()
    if aggregate is None:
        logits, out_int, q = pred[:, 0], pred[:, 1], query_index
    elif aggregate == "mean":
        means, counts = _scatter_mean(pred, query_index, len(occ))
        q = torch.nonzero(counts > 0).flatten()
        logits, out_int = means[q, 0], means[q, 1]
    else:
        raise ValueError(f"occupancy_losses: aggregate must be None or 'mean'; got {aggregate!r}")
    zero = pred.sum() * 0.0
    l_occ = F.binary_cross_entropy_with_logits(logits, occ[q]) if len(q) else zero
    has_int = inten[q] >= 0
    if bool(has_int.any()):
        l_int = F.l1_loss(out_int[has_int], inten[q][has_int] / intensity_scale)
    else:
        l_int = zero
    return {"occupancy": l_occ, "intensity": l_int}


@torch.no_grad()
def occupancy_accuracy(pred: torch.Tensor, occupied_per_query: torch.Tensor, query_index: torch.Tensor,
                       aggregate: Optional[str] = None) -> float:
    """Fraction of pairs (``aggregate=None``) or of queries with neighbours (``"mean"``) whose
    occupancy logit has the sign of the label (logit > 0 <=> occupied)."""
    occ = occupied_per_query.reshape(-1).to(pred.dtype)
    if aggregate is None:
        logits, labels = pred[:, 0], occ[query_index]
    else:
        means, counts = _scatter_mean(pred[:, :1], query_index.long(), len(occ))
        has = counts > 0
        logits, labels = means[has, 0], occ[has]
    if len(logits) == 0:
        return float("nan")
    return float(((logits > 0).to(pred.dtype) == labels).to(torch.float64).mean())


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def grid_centres(bounds, resolution: float) -> list:
    """Cell centres per axis: for bounds ((lo, hi), ...) a list of arrays ``lo + (i + 0.5) * resolution``,
    ``i < round((hi - lo) / resolution)``."""
    out = []
    for lo, hi in bounds:
        n = int(round((hi - lo) / resolution))
        if n < 1:
            raise ValueError(f"grid_centres: bound ({lo}, {hi}) is shorter than one cell of {resolution} m")
        out.append(lo + (np.arange(n) + 0.5) * resolution)
    return out


@torch.no_grad()
def occupancy_grid(decoder: OccupancyDecoder, point_latents: torch.Tensor, points, bounds, resolution: float,
                   z: float = 0.0, radius: float = 1.0, chunk: int = 8192,
                   max_neighbours: Optional[int] = None) -> np.ndarray:
    """Predicted occupancy probability on a regular grid, for figures.

    Each grid cell centre is a query; its neighbours within ``radius`` are decoded and their logits
    averaged (mean over neighbours, then sigmoid). Queries are processed ``chunk`` at a time.

    Args:
        decoder: a trained ``OccupancyDecoder`` (put in eval mode for the call).
        point_latents: (N, D) latent of each point (one sample).
        points: (N, 3) metres.
        bounds: ((x0, x1), (y0, y1)) for a horizontal slice at height ``z`` -> (nx, ny), or
            ((x0, x1), (y0, y1), (z0, z1)) for a volume -> (nx, ny, nz). Cell centres: ``grid_centres``.
        resolution: cell size, metres.

    Returns:
        float32 array of probabilities indexed [ix, iy(, iz)]; NaN where no point is within ``radius``.
        For ``imshow`` of a slice use ``prob.T`` with ``origin="lower"``.
    """
    if len(bounds) not in (2, 3):
        raise ValueError(f"occupancy_grid: bounds must hold 2 or 3 (lo, hi) pairs; got {len(bounds)}")
    axes = grid_centres(bounds, resolution)
    if len(axes) == 2:
        axes.append(np.array([float(z)]))
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    p = _to_numpy(points, np.float64).reshape(-1, 3)
    tree = cKDTree(p)
    dev = point_latents.device
    pts_t = torch.as_tensor(p, dtype=point_latents.dtype, device=dev)
    was_training = decoder.training
    decoder.eval()
    prob = np.full(len(mesh), np.nan, np.float32)
    for start in range(0, len(mesh), chunk):
        qc = mesh[start:start + chunk]
        qi, pi = _ball_pairs(tree, qc, radius)
        if max_neighbours is not None:
            qi, pi = _cap_neighbours(qi, pi, int(max_neighbours))  # the first k by index, as in training
        if len(qi) == 0:
            continue
        qi_t, pi_t = torch.from_numpy(qi).to(dev), torch.from_numpy(pi).to(dev)
        q_t = torch.as_tensor(qc, dtype=point_latents.dtype, device=dev)
        logits = decoder.forward_pairs(point_latents, q_t, pts_t, qi_t, pi_t)[:, :1]
        mean, counts = _scatter_mean(logits, qi_t, len(qc))
        has = (counts > 0).cpu().numpy()
        prob[start:start + chunk][has] = torch.sigmoid(mean[:, 0]).cpu().numpy()[has]
    decoder.train(was_training)
    shape = tuple(len(a) for a in axes)
    return prob.reshape(shape if len(bounds) == 3 else shape[:2])

"""Occupancy query points along LiDAR rays (CMCR's ALSO-style occupancy estimation, docs/paper.md section 2).

Every LiDAR return ``p`` tells us that the ray from the sensor to ``p`` is *empty* and that the space
just behind ``p`` is *occupied*. Per scan, query points are drawn along these rays, before
augmentation, in the LiDAR frame whose origin is the sensor:

* **in** (1/3): ``p + band * u * p_hat`` -- up to ``band`` (0.1 m) behind the surface: occupied,
  intensity target = intensity of ``p``;
* **out** (1/3): ``p - band * u * p_hat`` -- up to ``band`` in front of the surface: free,
  intensity target = intensity of ``p``;
* **out-far** (1/3): ``u * p`` -- anywhere between the sensor and the surface: free, no intensity
  target (``-1``);

with ``u ~ U(0, 1)`` per query and ``p_hat = (p - origin) / |p - origin|``. The queries must then move
with exactly the same rotation/flips as the points: ``transform_queries`` pushes both through one
call of the augmentation. The decoder and the losses are in ``cmcr_lite.losses.occupancy``.
"""
from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.spatial import cKDTree

KIND_IN, KIND_OUT, KIND_OUT_FAR = 0, 1, 2


def sample_query_points(points_xyz, intensity, rng=None, n_queries: int = 2048, band: float = 0.1,
                        origin: Sequence[float] = (0.0, 0.0, 0.0)) -> dict:
    """Ray-based occupancy queries for one scan (docs/paper.md §2).

    Call this on the *un-augmented* points (sensor frame), then move the queries with the points
    (``transform_queries``).

    Args:
        points_xyz: (N, 3) float — LiDAR points, metres, in a frame where the sensor is at ``origin``.
        intensity: (N,) float — intensity of each point (raw units; copied to the in/out targets).
        rng: ``numpy.random.Generator`` (or a seed); the result is a deterministic function of it.
        n_queries: Q, total number of queries. Split as ``Q - 2*(Q//3)`` in, ``Q//3`` out,
            ``Q//3`` out-far (2048 -> 684 / 682 / 682, as the official code).
        band: metres; maximal distance along the ray behind (in) / in front of (out) the surface.
        origin: (3,) sensor position in the frame of ``points_xyz``.

    Source points are drawn uniformly per kind, without replacement when the scan has enough
    points. Points closer than 1e-6 m to the origin define no ray and are never chosen.

    Returns:
        dict with
            queries (Q, 3) float32 metres, ordered [in..., out..., out-far...];
            occupied (Q,) float32 — 1 for in, 0 for out and out-far;
            intensity (Q,) float32 — the source point's intensity for in/out, -1 (ignore) for out-far;
            kind (Q,) int8 — ``KIND_IN`` 0, ``KIND_OUT`` 1, ``KIND_OUT_FAR`` 2;
            source_index (Q,) int64 — index of the point whose ray the query lies on.
    """
    rng = np.random.default_rng(rng)
    xyz = np.asarray(points_xyz, dtype=np.float64)
    inten = np.asarray(intensity, dtype=np.float64).reshape(-1)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"sample_query_points: points_xyz must be (N, 3); got {xyz.shape}")
    if len(inten) != len(xyz):
        raise ValueError(f"sample_query_points: intensity must be (N,) with N={len(xyz)}; got {inten.shape}")
    if n_queries < 0 or band < 0:
        raise ValueError(f"sample_query_points: need n_queries >= 0 and band >= 0; got {n_queries}, {band}")
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    ray = xyz - o
    norm = np.linalg.norm(ray, axis=1)
    valid = np.nonzero(norm > 1e-6)[0]
    if len(valid) == 0 and n_queries > 0:
        raise ValueError("sample_query_points: no point is away from the sensor origin; cannot draw rays")

    n_out = n_far = n_queries // 3
    n_in = n_queries - n_out - n_far
    counts = {KIND_IN: n_in, KIND_OUT: n_out, KIND_OUT_FAR: n_far}

    queries, occupied, target, kinds, sources = [], [], [], [], []
    for kind in (KIND_IN, KIND_OUT, KIND_OUT_FAR):
        n = counts[kind]
        src = valid[rng.choice(len(valid), size=n, replace=n > len(valid))]
        u = rng.random(n)
        unit = ray[src] / norm[src, None]
        if kind == KIND_IN:
            q = xyz[src] + band * u[:, None] * unit
        elif kind == KIND_OUT:
            q = xyz[src] - band * u[:, None] * unit
        else:
            q = o + u[:, None] * ray[src]
        queries.append(q)
        occupied.append(np.full(n, 1.0 if kind == KIND_IN else 0.0))
        target.append(inten[src] if kind != KIND_OUT_FAR else np.full(n, -1.0))
        kinds.append(np.full(n, kind, np.int8))
        sources.append(src.astype(np.int64))
    return {
        "queries": np.concatenate(queries).astype(np.float32).reshape(-1, 3),
        "occupied": np.concatenate(occupied).astype(np.float32),
        "intensity": np.concatenate(target).astype(np.float32),
        "kind": np.concatenate(kinds).astype(np.int8),
        "source_index": np.concatenate(sources).astype(np.int64),
    }


def transform_queries(points_xyz: np.ndarray, queries: np.ndarray,
                      transform: Callable[[np.ndarray], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Apply one (random) rigid augmentation to points and queries together.

    ``transform`` is called **once** on the stacked (N + Q, 3) array, so whatever it draws from its
    generator (rotation angle, flips) is the same for both, e.g.
    ``transform_queries(xyz, q, lambda a: random_point_augmentation(a, rng))``.

    Returns (points (N, 3), queries (Q, 3)) with the dtypes of the inputs.
    """
    points_xyz, queries = np.asarray(points_xyz), np.asarray(queries)
    n = len(points_xyz)
    both = np.concatenate([points_xyz.astype(np.float64), queries.astype(np.float64)], 0)
    out = np.asarray(transform(both))
    if out.shape != both.shape:
        raise ValueError(f"transform_queries: transform must keep the shape {both.shape}; got {out.shape}")
    return out[:n].astype(points_xyz.dtype), out[n:].astype(queries.dtype)


def _to_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _ball_pairs(tree: cKDTree, queries: np.ndarray, radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """All (query, point) with |query - point| <= radius, sorted by query then point (local indices)."""
    if len(queries) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lists = tree.query_ball_point(queries, radius, return_sorted=True)
    lengths = np.fromiter((len(l) for l in lists), dtype=np.int64, count=len(lists))
    total = int(lengths.sum())
    pidx = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=total)
    qidx = np.repeat(np.arange(len(queries), dtype=np.int64), lengths)
    return qidx, pidx


def _cap_neighbours(qidx: np.ndarray, pidx: np.ndarray, k: int, rng: Optional[np.random.Generator] = None):
    """Keep at most ``k`` pairs per query (pairs sorted by query, then point index).

    ``rng`` None: the first ``k`` points of each query in point-index order, which is what
    torch_cluster's ``radius(..., max_num_neighbors=k)`` returns (the official code's search);
    a generator: a uniformly random subset of ``k``."""
    if len(qidx) == 0:
        return qidx, pidx
    tie = np.arange(len(qidx)) if rng is None else rng.random(len(qidx))
    order = np.lexsort((tie, qidx))                          # within each query: index order, or random
    q_sorted = qidx[order]
    starts = np.searchsorted(q_sorted, q_sorted, side="left")
    keep = order[(np.arange(len(order)) - starts) < k]
    keep.sort()                                              # back to (query, point) order
    return qidx[keep], pidx[keep]


def neighbourhood_pairs(queries, points, radius: float = 1.0, batch_q=None, batch_p=None,
                        max_neighbours: Optional[int] = None, rng=None,
                        pick: str = "first") -> Tuple[torch.Tensor, torch.Tensor]:
    """Every point within ``radius`` metres of each query, in the same sample (docs/paper.md §4.5).

    A k-d tree per sample (``scipy.spatial.cKDTree.query_ball_point``, distance <= radius), not a
    quadratic loop.

    Args:
        queries: (Q, 3) float metres (numpy or torch).
        points: (N, 3) float metres — the raw augmented LiDAR points (not voxels).
        radius: metres (CMCR / ALSO: 1.0).
        batch_q, batch_p: (Q,) and (N,) int sample index of each query / point; ``None`` = one sample.
        max_neighbours: optional cap K (None = every neighbour). The official code calls
            ``torch_geometric.nn.radius`` without ``max_num_neighbors``, so PyG's default K = 32 applies
            there; the cap also bounds memory to Q*K pairs.
        rng: ``numpy.random.Generator`` or seed for ``pick="random"`` (default seed 0).
        pick: which K neighbours a query with more than K keeps: ``"first"`` (lowest point indices, as
            torch_cluster's search returns them) or ``"random"`` (a uniform subset, deterministic for ``rng``).

    Returns:
        (query_index (E,) int64, point_index (E,) int64) torch tensors of *global* row indices into
        ``queries`` and ``points``, sorted by query then point. Map ``point_index`` to voxels with the
        pipeline's ``voxel_of_point`` to gather the neighbours' latents.
    """
    q = _to_numpy(queries, np.float64).reshape(-1, 3)
    p = _to_numpy(points, np.float64).reshape(-1, 3)
    if radius <= 0:
        raise ValueError(f"neighbourhood_pairs: radius must be > 0 metres; got {radius}")
    if (batch_q is None) != (batch_p is None):
        raise ValueError("neighbourhood_pairs: give both batch_q and batch_p, or neither")
    bq = np.zeros(len(q), np.int64) if batch_q is None else _to_numpy(batch_q, np.int64).reshape(-1)
    bp = np.zeros(len(p), np.int64) if batch_p is None else _to_numpy(batch_p, np.int64).reshape(-1)
    if len(bq) != len(q) or len(bp) != len(p):
        raise ValueError(f"neighbourhood_pairs: batch_q must be ({len(q)},) and batch_p ({len(p)},); "
                         f"got {bq.shape} and {bp.shape}")
    qs, ps = [], []
    for b in np.unique(bq):
        q_rows = np.nonzero(bq == b)[0]
        p_rows = np.nonzero(bp == b)[0]
        if len(p_rows) == 0:
            continue
        qi, pi = _ball_pairs(cKDTree(p[p_rows]), q[q_rows], radius)
        qs.append(q_rows[qi])
        ps.append(p_rows[pi])
    qidx = np.concatenate(qs) if qs else np.zeros(0, np.int64)
    pidx = np.concatenate(ps) if ps else np.zeros(0, np.int64)
    if len(qidx):
        order = np.lexsort((pidx, qidx))
        qidx, pidx = qidx[order], pidx[order]
    if pick not in ("first", "random"):
        raise ValueError(f"neighbourhood_pairs: pick must be 'first' or 'random'; got {pick!r}")
    if max_neighbours is not None:
        if max_neighbours < 1:
            raise ValueError(f"neighbourhood_pairs: max_neighbours must be >= 1; got {max_neighbours}")
        generator = np.random.default_rng(0 if rng is None else rng) if pick == "random" else None
        qidx, pidx = _cap_neighbours(qidx, pidx, int(max_neighbours), generator)
    device = queries.device if isinstance(queries, torch.Tensor) else "cpu"
    return torch.from_numpy(qidx).to(device), torch.from_numpy(pidx).to(device)

"""The twins' evidence in the data (notebook 00 §7), none of it part of the method: how well one
threshold on a scalar separates two classes, the largest object of a class in a scan, the profile of
the side a box-shaped object turns to the sensor, and the rib bands in that profile."""
from __future__ import annotations

import numpy as np


def separability(a, b) -> dict:
    """How well one threshold on a scalar (a LiDAR intensity, say) tells samples ``a`` from ``b``.

    * ``d_prime``: |mean_a − mean_b| / sqrt((var_a + var_b) / 2), the shift in pooled spreads;
    * ``gaussian_accuracy``: Φ(d′ / 2), the balanced accuracy of the best single threshold if both were
      Gaussians of equal spread (the threshold halfway between the means; each class is on the wrong
      side of it with probability Φ(−d′ / 2));
    * ``best_accuracy``: the balanced accuracy of the best single threshold on the samples themselves,
      0.5 + half the largest gap between their empirical distribution functions (the Kolmogorov–Smirnov
      distance), which assumes no shape: the control for the Gaussian reading of d′.
    """
    from math import erf, sqrt

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    d_prime = abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2)
    cuts = np.unique(np.concatenate([a, b]))
    gap = np.abs(np.searchsorted(np.sort(a), cuts, side="right") / len(a)
                 - np.searchsorted(np.sort(b), cuts, side="right") / len(b)).max()
    return {"d_prime": float(d_prime), "gaussian_accuracy": 0.5 * (1 + erf(d_prime / 2 / sqrt(2))),
            "best_accuracy": float(0.5 + gap / 2)}


def largest_object(points: np.ndarray, labels: np.ndarray, class_index: int, link: float = 1.0) -> np.ndarray:
    """Points (n, 3) of the largest object of class ``class_index`` in a scan ``points`` (N, >=3) with
    ``labels`` (N,): the biggest group of its points joined by gaps under ``link`` metres ((0, 3) when
    the class is absent). Two objects of the class closer than ``link`` count as one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    xyz = np.asarray(points, dtype=np.float64)[np.asarray(labels) == class_index, :3]
    if len(xyz) < 2:
        return xyz
    pairs = cKDTree(xyz).query_pairs(link, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xyz), len(xyz)))
    _, component = connected_components(graph, directed=False)
    return xyz[component == np.bincount(component).argmax()]


def panel_profile(obj: np.ndarray, band: float = 0.8, end_margin: float = 0.3) -> dict:
    """The long side panel of a box-shaped object that faces the sensor, as a profile.

    ``obj``: the object's points (n, >=3), metres, in the sensor's frame (sensor at the origin, z up).
    The panel's direction is that of the rectangle around the object's footprint whose edges the points
    lie closest to (least mean distance to the nearest edge, 1° steps: the smallest-area rectangle would
    lie along the hypotenuse of an L-shaped view); its outermost plane lies at the 98th percentile of
    the points' offsets towards the sensor (robust to range noise). Returns ``along`` (m from the panel's first kept point), ``depth`` (m behind
    the outermost plane: about 0 on a flat panel, the rib depth in a ribbed panel's grooves) and
    ``height`` (z, m) of the panel's points, those within ``band`` m of the plane and more than
    ``end_margin`` m from the panel's ends, ``index``, their rows in ``obj``, and ``range``, the object's
    distance from the sensor (m)."""
    xyz = np.asarray(obj, dtype=np.float64)
    xy = xyz[:, :2]
    best = None
    for degrees in range(90):
        a = np.radians(degrees)
        uv = xy @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        low, high = uv.min(0), uv.max(0)
        spread = np.minimum(uv - low, high - uv).min(1).mean()   # mean distance to the nearest edge
        if best is None or spread < best[0]:
            best = (spread, uv, high - low)
    _, uv, extent = best
    if extent[1] > extent[0]:                              # u along the long side
        uv = uv[:, ::-1]
    u, v = uv[:, 0], uv[:, 1]
    offset = v if abs(v.max()) < abs(v.min()) else -v      # grows towards the sensor (v = 0)
    depth = np.percentile(offset, 98) - offset
    keep = (depth < band) & (u > u.min() + end_margin) & (u < u.max() - end_margin)
    return {"along": u[keep] - (u[keep].min() if keep.any() else 0.0), "depth": depth[keep], "height": xyz[keep, 2],
            "index": np.nonzero(keep)[0], "range": float(np.linalg.norm(xy.mean(0)))}


def rib_bands(profile: dict, deep: float = 0.2) -> dict:
    """The grooves of a :func:`panel_profile`: its points more than ``deep`` m behind the outer plane.

    Returns ``deep`` (their share), ``points`` (the profile's), ``edges`` (how often a point's neighbour
    along the panel switches between groove and face), ``step`` (median depth of the grooves minus that
    of the faces, m; 0 when either is empty) and ``period`` (m, twice the median distance between
    successive switches; NaN with two switches or fewer): a ribbed side has grooves of ``step`` every
    ``period``, a flat one next to none."""
    along, depth = np.asarray(profile["along"]), np.asarray(profile["depth"])
    grooved = depth > deep
    order = np.argsort(along)
    flips = np.nonzero(grooved[order][1:] != grooved[order][:-1])[0]
    edges = (along[order][flips] + along[order][flips + 1]) / 2
    step = (float(np.median(depth[grooved]) - np.median(depth[~grooved])) if 0 < grooved.sum() < len(grooved)
            else 0.0)
    return {"deep": float(grooved.mean()) if len(grooved) else 0.0, "points": int(len(grooved)), "edges": int(len(edges)),
            "step": step, "period": float(2 * np.median(np.diff(edges))) if len(edges) > 2 else float("nan")}

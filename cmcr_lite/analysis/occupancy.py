"""Evaluating and rendering CMCR's occupancy head (notebook 06; docs/paper.md §2, §3.3, §4.5).

"Occupancy" in CMCR (as in ALSO and the released code) is **implicit point-query occupancy along
LiDAR rays**: query points just behind a surface ("in", occupied), just in front of it ("out", free)
or anywhere between the sensor and the surface ("out-far", free) are classified by a small decoder
from the latents of the LiDAR points within 1 m. There is **no voxel occupancy grid** in the
objective. The regular grids below exist only to draw the trained implicit function
(``cmcr_lite.losses.occupancy.occupancy_grid``).

    pred = predict_queries(model, batch)                       # every (query, neighbour) pair
    table = accuracy_per_kind(pred["pred"], batch["query_occupied"], batch["query_kind"], pred["query_index"])
"""
from __future__ import annotations

import numpy as np
import torch

from cmcr_lite.data.occupancy_queries import KIND_IN, KIND_OUT, KIND_OUT_FAR
from cmcr_lite.data.pipeline import batch_to_sparse_tensor, collate_pairs
from cmcr_lite.losses.occupancy import occupancy_accuracy, occupancy_losses

KIND_NAMES = {KIND_IN: "in", KIND_OUT: "out", KIND_OUT_FAR: "out-far"}
KIND_COLOURS = {KIND_IN: "tab:red", KIND_OUT: "tab:blue", KIND_OUT_FAR: "tab:green"}


# ------------------------------------------------------------------------------------------ predictions
@torch.no_grad()
def point_latents(model, batch: dict, device="cpu") -> torch.Tensor:
    """(N, D) float latent of every LiDAR point of a collated batch, as ``CMCRModel.forward`` feeds the
    occupancy decoder: specific G^3D + codebook-quantised shared F^3D of the point's voxel (only F^3D
    without decoupling; the continuous F^3D without a codebook). The model runs in eval mode (BN with
    running statistics); its training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        f3d, g3d = model.features_3d(batch_to_sparse_tensor(batch, device))
        q3d = model.codebook.quantize(f3d)[0] if model.codebook is not None else f3d
        latents = q3d + g3d if g3d is not None else q3d
    finally:
        model.train(was_training)
    return latents[batch["voxel_of_point"].to(latents.device)]


@torch.no_grad()
def predict_queries(model, batch: dict, device="cpu", decoder=None) -> dict:
    """Decoder output for every (query, neighbour) pair of a collated batch that carries queries.

    The pairs are the batch's own ``neighbour_query`` / ``neighbour_point``, built by the data
    pipeline with its radius and neighbour cap, exactly as in training.
    ``decoder`` replaces ``model.occupancy_decoder`` when given (e.g. the copy trained by ``fit_decoder``).
    Returns dict with pred (E, 2) float (occupancy logit, intensity / 255), query_index (E,) and
    point_index (E,) int64 (global rows of ``batch["queries"]`` / ``batch["points"]``), and
    latents (N, D) of the points."""
    decoder = model.occupancy_decoder if decoder is None else decoder
    if decoder is None:
        raise ValueError("predict_queries: the model has no occupancy decoder (CMCROptions.occupancy=False)")
    if "queries" not in batch:
        raise ValueError("predict_queries: the batch has no 'queries'; build it with PipelineConfig(occupancy=True)")
    latents = point_latents(model, batch, device)
    points = batch["points"][:, :3].to(latents.device)
    qi, pi = batch["neighbour_query"].to(latents.device), batch["neighbour_point"].to(latents.device)
    was_training = decoder.training
    decoder.eval()
    pred = decoder.forward_pairs(latents, batch["queries"].to(latents.device), points, qi, pi)
    decoder.train(was_training)
    return {"pred": pred, "query_index": qi, "point_index": pi, "latents": latents}


def accuracy_per_kind(pred: torch.Tensor, occupied, kind, query_index: torch.Tensor) -> dict:
    """Occupancy accuracy split by query kind, plus ``"all"``.

    Args:
        pred: (E, 2) decoder output per pair; query_index: (E,) int64.
        occupied: (Q,) {0, 1} label per query; kind: (Q,) int (``KIND_IN`` / ``KIND_OUT`` / ``KIND_OUT_FAR``).

    Returns ``{name: row}`` with names "in", "out", "out-far", "all" and each row holding
        queries: number of queries of that kind; with_neighbours: fraction that has >= 1 point within
        the radius (the others get no prediction and no loss); pairs: number of pairs;
        pair_accuracy: fraction of pairs whose logit has the label's sign (the quantity trained, ALSO);
        query_accuracy: the same after averaging each query's logits over its neighbours;
        predicted_occupied: fraction of pairs predicted occupied (logit > 0);
        all_free_accuracy: pair accuracy of the trivial answer "everything is free" (label-0 fraction).
    Accuracies are NaN for a kind without pairs.
    """
    occ = torch.as_tensor(np.asarray(occupied), dtype=pred.dtype).reshape(-1)
    kinds = torch.as_tensor(np.asarray(kind).astype(np.int64)).reshape(-1)
    if len(kinds) != len(occ):
        raise ValueError(f"accuracy_per_kind: occupied ({len(occ)},) and kind ({len(kinds)},) must match")
    qi = query_index.long().cpu()
    pred = pred.detach().cpu()
    has = torch.bincount(qi, minlength=len(occ)) > 0
    out = {}
    for name, sel_q in [(KIND_NAMES[k], kinds == k) for k in KIND_NAMES] + [("all", torch.ones_like(kinds, dtype=torch.bool))]:
        m = sel_q[qi]
        n_q = int(sel_q.sum())
        out[name] = {
            "queries": n_q,
            "with_neighbours": float(has[sel_q].float().mean()) if n_q else float("nan"),
            "pairs": int(m.sum()),
            "pair_accuracy": occupancy_accuracy(pred[m], occ, qi[m]),
            "query_accuracy": occupancy_accuracy(pred[m], occ, qi[m], aggregate="mean"),
            "predicted_occupied": float((pred[m, 0] > 0).float().mean()) if bool(m.any()) else float("nan"),
            "all_free_accuracy": float((occ[qi[m]] == 0).float().mean()) if bool(m.any()) else float("nan"),
        }
    return out


# ------------------------------------------------------------------------------------------ decoder-only fit
def frozen_query_scans(model, dataset) -> list:
    """Per item of a ``PairedScanDataset`` built with ``occupancy=True``: the model's frozen point
    latents (``point_latents``, no gradient) and the pipeline's query/neighbour pairs, ready for
    ``fit_decoder``.

    Each entry: latents (N, D), queries (Q, 3), points (N, 3), query_index / point_index (E,) int64,
    occupied (Q,), intensity (Q,) (raw units, -1 = no target)."""
    scans = []
    for i in range(len(dataset)):
        b = collate_pairs([dataset[i]])
        if "queries" not in b:
            raise ValueError("frozen_query_scans: the dataset has no queries; use PipelineConfig(occupancy=True)")
        scans.append({"latents": point_latents(model, b), "queries": b["queries"], "points": b["points"][:, :3],
                      "query_index": b["neighbour_query"], "point_index": b["neighbour_point"],
                      "occupied": b["query_occupied"], "intensity": b["query_intensity"]})
    return scans


def fit_decoder(decoder, scans: list, steps: int, lr: float = 2e-3, intensity_weight: float = 1.0):
    """Train a *copy* of an occupancy decoder on frozen latents (a diagnostic, not part of CMCR).

    One scan per step, in order, cycling; loss = L_occ + intensity_weight * L_int (``occupancy_losses``,
    per pair as in pretraining), AdamW at ``lr``. The 3D network is untouched, so what the copy
    learns says what the frozen features + this small head can express.

    Returns (trained copy in eval mode, history: list of {"occupancy", "intensity"} per step)."""
    import copy

    if steps < 0 or not scans:
        raise ValueError(f"fit_decoder: need steps >= 0 and at least one scan; got {steps}, {len(scans)} scans")
    dec = copy.deepcopy(decoder).train()
    opt = torch.optim.AdamW(dec.parameters(), lr=lr)
    history = []
    for step in range(steps):
        s = scans[step % len(scans)]
        pred = dec.forward_pairs(s["latents"], s["queries"], s["points"], s["query_index"], s["point_index"])
        terms = occupancy_losses(pred, s["occupied"], s["intensity"], s["query_index"])
        opt.zero_grad(set_to_none=True)
        (terms["occupancy"] + intensity_weight * terms["intensity"]).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    return dec.eval(), history


# ------------------------------------------------------------------------------------------ figures
def bev_crop(xyz: np.ndarray, centre=(0.0, 0.0), half_size: float = 12.0) -> np.ndarray:
    """(N,) bool: points whose x and y lie within ``half_size`` metres of ``centre`` (a square crop)."""
    xyz = np.asarray(xyz)
    return (np.abs(xyz[:, 0] - centre[0]) <= half_size) & (np.abs(xyz[:, 1] - centre[1]) <= half_size)


def _square(ax, centre, half_size):
    ax.set_xlim(centre[0] - half_size, centre[0] + half_size)
    ax.set_ylim(centre[1] - half_size, centre[1] + half_size)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")


def queries_bev_figure(points: np.ndarray, queries: np.ndarray, kind: np.ndarray, centre=(0.0, 0.0),
                       half_size: float = 12.0, zoom_centre=None, zoom_half: float = 0.6):
    """Bird's-eye view of a scan's occupancy queries: a crop (left) and a zoom on one surface (right).

    points (N, >=3) and queries (Q, 3) in metres (same frame, sensor at the origin), kind (Q,) int.
    Without ``zoom_centre`` the zoom is centred on the in-crop "in" query nearest to ``centre``."""
    import matplotlib.pyplot as plt

    points, queries, kind = np.asarray(points), np.asarray(queries), np.asarray(kind)
    if zoom_centre is None:
        cand = np.nonzero((kind == KIND_IN) & bev_crop(queries, centre, half_size))[0]
        if len(cand) == 0:
            cand = np.nonzero(kind == KIND_IN)[0]
        d = np.linalg.norm(queries[cand, :2] - np.asarray(centre)[None], axis=1)
        zoom_centre = tuple(queries[cand[np.argmin(d)], :2]) if len(cand) else tuple(centre)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    for ax, c, h, s in ((axes[0], centre, half_size, (1.0, 6.0)), (axes[1], zoom_centre, zoom_half, (14.0, 40.0))):
        m = bev_crop(points, c, h)
        ax.scatter(points[m, 0], points[m, 1], s=s[0], c="0.35", linewidths=0, label="LiDAR points")
        for k, name in KIND_NAMES.items():
            q = (kind == k) & bev_crop(queries, c, h)
            ax.scatter(queries[q, 0], queries[q, 1], s=s[1] / 4, c=KIND_COLOURS[k], linewidths=0,
                       label=f"{name} ({int(q.sum())})")
        ax.plot([0], [0], "k^", ms=9, label="sensor")
        if c is zoom_centre:  # the ray from the sensor through the zoom centre, extended past it
            ray = np.asarray(zoom_centre) * (1 + 2 * zoom_half / max(np.linalg.norm(zoom_centre), 1e-6))
            ax.plot([0, ray[0]], [0, ray[1]], "k--", lw=0.8, label="ray")
        _square(ax, c, h)
        ax.legend(fontsize=8, loc="upper right", markerscale=2)
    axes[0].add_patch(plt.Rectangle((zoom_centre[0] - zoom_half, zoom_centre[1] - zoom_half), 2 * zoom_half,
                                    2 * zoom_half, fill=False, ec="k", lw=1))
    axes[0].set_title(f"occupancy queries, {2 * half_size:.0f} m crop")
    axes[1].set_title(f"zoom ({2 * zoom_half:.1f} m x {2 * zoom_half:.1f} m) on one surface")
    fig.tight_layout()
    return fig


def occupancy_bev_figure(points: np.ndarray, labels: np.ndarray, probs: dict, bounds, z: float,
                         dz: float = 0.25, title: str = ""):
    """Ground truth next to predictions, seen from above, at height ``z`` metres.

    First panel: the LiDAR points with |point z - z| <= dz, coloured by class (devkit colours). Then one
    panel per entry of ``probs`` ({name: (nx, ny) probabilities from ``occupancy_grid`` over ``bounds``
    ((x0, x1), (y0, y1))}) with the same points drawn as black dots; grey = no point within the radius."""
    import matplotlib.pyplot as plt

    from cmcr_lite.classes import CLASS_NAMES_16
    from cmcr_lite.viz import class_colours

    points, labels = np.asarray(points), np.asarray(labels)
    (x0, x1), (y0, y1) = bounds
    m = (np.abs(points[:, 2] - z) <= dz) & (points[:, 0] >= x0) & (points[:, 0] <= x1) & \
        (points[:, 1] >= y0) & (points[:, 1] <= y1)
    colours = class_colours()
    fig, axes = plt.subplots(1, 1 + len(probs), figsize=(5.2 * (1 + len(probs)) + 1, 5.4), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    for k in np.unique(labels[m]):
        s = m & (labels == k)
        axes[0].scatter(points[s, 0], points[s, 1], s=5, color=colours[k], linewidths=0, label=CLASS_NAMES_16[k])
    axes[0].legend(fontsize=7, markerscale=3, loc="upper right")
    axes[0].set_title(f"ground truth: points at z = {z:.1f} ± {dz:.2f} m", fontsize=10)
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("0.85")
    for ax, (name, prob) in zip(axes[1:], probs.items()):
        im = ax.imshow(np.ma.masked_invalid(np.asarray(prob).T), origin="lower", extent=(x0, x1, y0, y1),
                       cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.scatter(points[m, 0], points[m, 1], s=1.5, c="k", linewidths=0)
        ax.set_title(f"{name}: P(occupied) at z = {z:.1f} m", fontsize=10)
    for ax in axes:
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    if probs:
        fig.colorbar(im, ax=list(axes[1:]), label="P(occupied)", shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


def occupancy_slice_3d_figure(points: np.ndarray, labels: np.ndarray, prob: np.ndarray, xs: np.ndarray,
                              zs: np.ndarray, y: float, bounds_xy=None, max_points: int = 15000,
                              title: str = ""):
    """Interactive plotly 3D view: the LiDAR points coloured by class (ground truth) and, in the same
    scene, a vertical slice at ``y`` metres coloured by predicted P(occupied).

    prob (nx, nz) on cell centres xs (nx,), zs (nz,) metres (NaN = no neighbour, drawn transparent);
    points are cropped to ``bounds_xy`` ((x0, x1), (y0, y1)) when given."""
    import plotly.graph_objects as go

    from cmcr_lite.classes import CLASS_NAMES_16
    from cmcr_lite.viz import class_colours

    points, labels = np.asarray(points), np.asarray(labels)
    keep = np.ones(len(points), bool)
    if bounds_xy is not None:
        (x0, x1), (y0, y1) = bounds_xy
        keep = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
    idx = np.nonzero(keep)[0]
    idx = np.random.default_rng(0).permutation(idx)[:max_points]
    colours = (class_colours() * 255).astype(int)
    fig = go.Figure()
    for k in np.unique(labels[idx]):
        s = idx[labels[idx] == k]
        fig.add_trace(go.Scatter3d(x=points[s, 0], y=points[s, 1], z=points[s, 2], mode="markers",
                                   name=CLASS_NAMES_16[k], marker=dict(size=1.6, color=f"rgb{tuple(colours[k])}")))
    X, Z = np.meshgrid(xs, zs, indexing="ij")
    Z = np.where(np.isnan(prob), np.nan, Z)          # holes where no point is within the radius
    fig.add_trace(go.Surface(x=X, y=np.full_like(X, y), z=Z, surfacecolor=prob, cmin=0, cmax=1,
                             colorscale="RdBu_r", opacity=0.85, name=f"P(occupied), y = {y:.1f} m",
                             colorbar=dict(title="P(occ.)", len=0.6, x=0.0, xanchor="right"), showlegend=True))  # left: the legend is right
    fig.update_layout(title=title, height=600, margin=dict(l=0, r=0, t=40, b=0), legend=dict(itemsizing="constant"),
                      scene=dict(aspectmode="data", xaxis_title="x (m)", yaxis_title="y (m)", zaxis_title="z (m)"))
    return fig

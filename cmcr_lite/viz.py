"""Figures used by the notebooks: matplotlib for static plots, plotly for interactive point clouds.

Colours are the devkit's nuScenes-lidarseg challenge colours (``LidarsegClassMapper``), so a class
looks the same here as in the devkit's own renderings.
"""
from __future__ import annotations

import numpy as np

from cmcr_lite.analysis.twins import separability
from cmcr_lite.classes import APPEARANCE_ONLY_TWINS, CLASS_NAMES_16, GEOMETRY_ONLY_TWINS, class_index

CAMERA_GRID = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")

# JupyterLab's output column on a 1366-pixel-wide laptop screen with the file browser open (833 px at a
# 1280-pixel window, 993 at 1440): JupyterLab shrinks a wider image to fit, its text with it.
JUPYTERLAB_WIDTH_PX = 900
# The widest a figure is laid out: drawn 900 px wide, its 10-point text is 11 px high, still readable.
MAX_FIGURE_WIDTH_IN = 11.0


def fit_to_jupyterlab(fig):
    """A pyplot figure hook (``rcParams["figure.hooks"]``, set by the project's kernel) that runs when a figure
    is created, before anything is laid out on it. A figure wider than JupyterLab's column is drawn exactly
    that wide (a lower dpi) instead of being shrunk by the browser, and one wider than ``MAX_FIGURE_WIDTH_IN``
    is first scaled down whole, so that its text, which keeps its point size, stays readable."""
    width, height = fig.get_size_inches()
    if width * fig.dpi > JUPYTERLAB_WIDTH_PX:
        scale = min(1.0, MAX_FIGURE_WIDTH_IN / width)
        fig.set_size_inches(width * scale, height * scale)
        fig.set_dpi(JUPYTERLAB_WIDTH_PX / (width * scale))


def save_figure(fig, path, dpi: int = 80):
    """The notebooks' figure ending: tight layout, a PNG at ``path`` next to the executed notebook, show."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.show()


def class_colours() -> np.ndarray:
    """(17, 3) float in [0, 1]: the devkit's colour of each 16-class index (0 = ignore, black)."""
    from types import SimpleNamespace

    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    # get_coarse2color only reads self.ignore_class, so no NuScenes object is needed to call it
    table = LidarsegClassMapper.get_coarse2color(SimpleNamespace(ignore_class=LidarsegClassMapper.get_ignore_class()))
    return np.array([table[name] for name in CLASS_NAMES_16], np.float32) / 255.0


def points_3d_figure(points: np.ndarray, labels: np.ndarray, max_points: int = 20000, seed: int = 0,
                     title: str = "LiDAR sweep coloured by class"):
    """Interactive plotly 3D scatter of points (N, >=3) metres, one trace per class (click to hide)."""
    import plotly.graph_objects as go

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(points))[:max_points]
    pts, lab = points[idx], labels[idx]
    colours = (class_colours() * 255).astype(int)
    fig = go.Figure()
    for k in np.unique(lab):
        sel = lab == k
        fig.add_trace(go.Scatter3d(x=pts[sel, 0], y=pts[sel, 1], z=pts[sel, 2], mode="markers",
                                   name=CLASS_NAMES_16[k],
                                   marker=dict(size=1.5, color=f"rgb{tuple(colours[k])}")))
    fig.update_layout(title=title, height=600, margin=dict(l=0, r=0, t=40, b=0), legend=dict(itemsizing="constant"),
                      scene=dict(aspectmode="data", xaxis_title="x (m)", yaxis_title="y (m)", zaxis_title="z (m)"))
    return fig


def projections_figure(images: np.ndarray, pair_pixels: np.ndarray, values: np.ndarray, camera_names,
                       colours: np.ndarray | None = None, point_size: float = 1.0, title: str = ""):
    """Six camera images with their paired points drawn on top (matplotlib).

    ``values`` (M,) are class indices when ``colours`` (K, 3) is given, else depths in metres."""
    import matplotlib.pyplot as plt

    order = [list(camera_names).index(c) for c in CAMERA_GRID if c in camera_names]
    fig, axes = plt.subplots(2, 3, figsize=(15, 6.2), layout="constrained")
    for ax, c in zip(axes.ravel(), order):
        ax.imshow(images[c])
        sel = pair_pixels[:, 0] == c
        if colours is not None:
            ax.scatter(pair_pixels[sel, 2], pair_pixels[sel, 1], c=colours[values[sel]], s=point_size, linewidths=0)
        else:
            sc = ax.scatter(pair_pixels[sel, 2], pair_pixels[sel, 1], c=values[sel], s=point_size, cmap="viridis",
                            linewidths=0, vmin=0, vmax=40)
        ax.set_title(f"{camera_names[c]} ({sel.sum()} points)", fontsize=9)
        ax.set_xlabel("column (px)", fontsize=8)
        ax.set_ylabel("row (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    if colours is None:
        fig.colorbar(sc, ax=axes, label="depth (m)", shrink=0.8)
    else:  # one shared key for the classes drawn
        from matplotlib.patches import Patch

        present = np.unique(values)
        names = CLASS_NAMES_16 if len(colours) == len(CLASS_NAMES_16) else [str(k) for k in range(len(colours))]
        fig.legend([Patch(color=colours[k]) for k in present], [names[k] for k in present], loc="outside right center",
                   fontsize=8, title="class")
    fig.suptitle(title)
    return fig


def superpixels_figure(images: np.ndarray, segments: np.ndarray, titles):
    """Images with superpixel boundaries (skimage ``mark_boundaries``), one panel each."""
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 3.6))
    for ax, im, seg, t in zip(np.atleast_1d(axes), images, segments, titles):
        ax.imshow(mark_boundaries(im, seg, color=(1, 1, 0)))
        ax.set_title(f"{t}: {len(np.unique(seg))} superpixels", fontsize=10)
        ax.set_xlabel("column (px)")
        ax.set_ylabel("row (px)")
    fig.tight_layout()
    return fig


def local_roughness(points: np.ndarray, k: int = 12) -> np.ndarray:
    """Roughness (N,) metres of each point of a scan ``points`` (N,3): the spread off the best plane
    through its ``k`` nearest neighbours (square root of the smallest eigenvalue of their covariance).
    About the range noise (1.5 cm) on a flat panel; more on ribs, shrubs, and edges."""
    from scipy.spatial import cKDTree

    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    _, nn = cKDTree(xyz).query(xyz, k=k)
    nb = xyz[nn]                                      # (N, k, 3)
    centred = nb - nb.mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred) / k
    return np.sqrt(np.clip(np.linalg.eigvalsh(cov)[:, 0], 0, None))


def twin_statistics(keyframes, n_keyframes: int = 4) -> dict:
    """Per 16-class index: colour of paired pixels ``rgb`` (n,3) 0..255, and of its points the LiDAR
    ``intensity`` (0..255) and :func:`local_roughness` ``roughness`` (metres), over the first
    ``n_keyframes`` keyframes."""
    stats = {}
    for i in range(min(n_keyframes, len(keyframes))):
        kf = keyframes[i]
        rough = local_roughness(kf.points)
        rgb = kf.images[kf.pair_pixels[:, 0], kf.pair_pixels[:, 1], kf.pair_pixels[:, 2]].astype(np.float32)
        lab_pairs = kf.labels[kf.pair_points]
        for k in np.unique(kf.labels):
            s = stats.setdefault(int(k), {"rgb": [], "roughness": [], "intensity": []})
            s["rgb"].append(rgb[lab_pairs == k])
            s["roughness"].append(rough[kf.labels == k])
            s["intensity"].append(kf.points[kf.labels == k, 3])
    return {k: {f: np.concatenate(v) for f, v in s.items()} for k, s in stats.items()}


def twins_figure(stats: dict, rough_threshold: float = 0.05, rough_max: float = 0.5, intensity_max: float = 255.0):
    """One row per twin pair, one column per thing a sensor reports: the mean paired-pixel colour of
    each twin (camera), and histograms of point roughness and intensity (LiDAR). Geometry-only twins
    differ in roughness only; appearance-only twins in colour, and in intensity by the d′ in the panel's
    title (:func:`cmcr_lite.analysis.twins.separability`).

    Nothing is clipped into an end bin: each histogram spans its two twins' values up to the largest
    (at most ``rough_max`` m and ``intensity_max``; a share beyond that is not drawn and the legend says
    how much). Roughness densities are on a log scale, so the few rough points (a truck's ribs) show,
    and each twin's legend entry gives the share of its points at ``rough_threshold`` m or more."""
    import matplotlib.pyplot as plt

    pairs = [("geometry-only", p) for p in GEOMETRY_ONLY_TWINS] + [("appearance-only", p) for p in APPEARANCE_ONLY_TWINS]
    fig, axes = plt.subplots(len(pairs), 3, figsize=(13, 2.2 * len(pairs)), gridspec_kw={"width_ratios": [1, 2, 2]})
    # (field, the most that is drawn, bin width, bins rounded up to, x label)
    columns = (("roughness", rough_max, 0.005, 0.05, "LiDAR: roughness (m)"),
               ("intensity", intensity_max, 3.0, 10.0, "LiDAR: intensity (0..255)"))
    for row, (group, (a, b)) in enumerate(pairs):
        ka, kb = class_index(a), class_index(b)
        sw = np.ones((20, 45, 3))
        for j, k in enumerate((ka, kb)):
            if k in stats and len(stats[k]["rgb"]):
                mean_rgb = stats[k]["rgb"].mean(0)
                sw[:, j * 25:j * 25 + 20] = mean_rgb / 255.0
                axes[row, 0].text(j * 25 + 10, 23, "RGB " + " ".join(f"{v:.0f}" for v in mean_rgb), ha="center",
                                  va="top", fontsize=7)
        axes[row, 0].imshow(sw)
        axes[row, 0].set_title(f"camera colour, {group}:\n{a} | {b}", fontsize=9)
        axes[row, 0].axis("off")
        present = [(k, name) for k, name in ((ka, a), (kb, b)) if k in stats and len(stats[k][columns[0][0]])]
        for col, (field_name, cap, width, step, xlabel) in enumerate(columns, start=1):
            ax = axes[row, col]
            if not present:
                ax.set_axis_off()
                continue
            top = max(float(stats[k][field_name].max()) for k, _ in present)
            high = min(cap, step * np.ceil(max(top, step) / step))
            bins = np.arange(0.0, high + width / 2, width)
            for k, name in present:
                values = stats[k][field_name]
                label = name
                if field_name == "roughness":
                    label += f": {100 * np.mean(values >= rough_threshold):.1f} % ≥ {100 * rough_threshold:g} cm"
                beyond = int(np.sum(values > bins[-1]))
                if beyond:
                    label += f" ({beyond} of {len(values)} beyond {bins[-1]:g}, not drawn)"
                ax.hist(values[values <= bins[-1]], bins=bins, alpha=0.55, density=True, label=label,
                        log=field_name == "roughness")
            if field_name == "roughness":
                ax.axvline(rough_threshold, color="k", lw=0.8, ls="--")
            elif len(present) == 2:
                ax.set_title(f"intensity d′ = {separability(stats[ka][field_name], stats[kb][field_name])['d_prime']:.1f}",
                             fontsize=9)
            ax.set_xlim(0, bins[-1])
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("density (share per unit)" + (", log" if field_name == "roughness" else ""), fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def panel_profiles_figure(profiles: dict, title: str = ""):
    """One row per object's :func:`cmcr_lite.analysis.twins.panel_profile`: left, seen from above (position along the panel against
    the offset from its outer plane, 0 = the outer surface); right, face-on (position along the panel
    against height, coloured by depth behind the outer plane). Every row has the same axes and colours."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(profiles), 2, figsize=(10, 2.1 * len(profiles) + 0.5), sharex=True, squeeze=False,
                             layout="constrained")
    drawn_profiles = [p for p in profiles.values() if len(p["depth"])]
    deepest = max([0.1] + [float(p["depth"].max()) for p in drawn_profiles])
    low = min([0.0] + [float(p["height"].min()) for p in drawn_profiles])
    high = max([0.0] + [float(p["height"].max()) for p in drawn_profiles])
    for (above, face), (name, p) in zip(axes, profiles.items()):
        above.scatter(p["along"], -p["depth"], s=2, color="k", alpha=0.4, linewidths=0)
        above.set_ylim(-deepest - 0.05, 0.05)
        above.set_ylabel("offset from the\nouter plane (m)", fontsize=8)
        above.set_title(f"{name}, {p['range']:.1f} m away: {len(p['along'])} points of its side facing the sensor, "
                        "seen from above", fontsize=8)
        drawn = face.scatter(p["along"], p["height"], c=p["depth"], s=3, cmap="viridis_r", vmin=0, vmax=deepest,
                             linewidths=0)
        face.set_ylim(low - 0.05, high + 0.05)
        face.set_ylabel("height z (m)", fontsize=8)
        face.set_title(f"{name}, the same points face-on", fontsize=8)
        for ax in (above, face):
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("position along the panel (m)", fontsize=8)
    fig.colorbar(drawn, ax=axes[:, 1], label="depth behind the outer plane (m)", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pca_rgb(features: np.ndarray, basis: np.ndarray | None = None, seed: int = 0):
    """Map features (N, C) to colours (N, 3) in [0, 1] through their first three principal components.

    Returns (colours, basis) with basis = (mean (C,), components (3, C), low (3,), high (3,)), so
    other features can be coloured in the *same* PCA space (pass ``basis``)."""
    f = np.asarray(features, dtype=np.float64)
    if basis is None:
        rng = np.random.default_rng(seed)
        sample = f[rng.permutation(len(f))[:20000]]
        mean = sample.mean(0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        comps = vt[:3]
        proj = (sample - mean) @ comps.T
        basis = (mean, comps, np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0))
    mean, comps, low, high = basis
    rgb = ((f - mean) @ comps.T - low) / np.maximum(high - low, 1e-9)
    return np.clip(rgb, 0, 1), basis


def points_rgb_figure(points: np.ndarray, rgb: np.ndarray, max_points: int = 20000, seed: int = 0, title: str = ""):
    """Interactive plotly 3D scatter of points (N, >=3) metres with per-point colours (N, 3) in [0, 1]."""
    import plotly.graph_objects as go

    idx = np.random.default_rng(seed).permutation(len(points))[:max_points]
    colours = [f"rgb({r},{g},{b})" for r, g, b in (rgb[idx] * 255).astype(int)]
    fig = go.Figure(go.Scatter3d(x=points[idx, 0], y=points[idx, 1], z=points[idx, 2], mode="markers",
                                 marker=dict(size=1.5, color=colours)))
    fig.update_layout(title=title, height=550, margin=dict(l=0, r=0, t=40, b=0),
                      scene=dict(aspectmode="data", xaxis_title="x (m)", yaxis_title="y (m)", zaxis_title="z (m)"))
    return fig


def group_iou_figure(rows: dict, title: str = ""):
    """Bar chart of IoU per twin group; ``rows`` maps a method name to
    {'geometry-only': (mean, std), 'appearance-only': ..., 'both': ..., 'miou': ...} (fractions, or
    plain floats for a single run, drawn without error bars). When every row also has 'geometry twins in features' and 'appearance twins in
    features' (``experiments.feature_twin_probes``), a second panel shows them against chance (50 %)."""
    import matplotlib.pyplot as plt

    def mean_std(value):
        # a plain float is one run: no error bar (a zero-width bar would suggest a measured spread)
        return (100 * value[0], 100 * value[1]) if isinstance(value, (tuple, list)) else (100 * value, np.nan)

    panels = [(["miou", "geometry-only", "appearance-only", "both"],
               ["mIoU (all)", "geometry-only twins", "appearance-only twins", "both"], "IoU (%)")]
    twin_keys = ["geometry twins in features", "appearance twins in features"]
    if all(k in r for r in rows.values() for k in twin_keys):
        panels.append((twin_keys, ["geometry twins", "appearance twins"], "told apart by a 2-class probe (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(9 + 4 * (len(panels) - 1), 3.6),
                             gridspec_kw={"width_ratios": [2, 1][:len(panels)]}, squeeze=False)
    width = 0.8 / len(rows)
    for ax, (keys, labels, ylabel) in zip(axes[0], panels):
        for i, (method, r) in enumerate(rows.items()):
            means, stds = zip(*(mean_std(r[k]) for k in keys))
            spread = None if all(np.isnan(stds)) else [0 if np.isnan(v) else v for v in stds]
            ax.bar(np.arange(len(keys)) + i * width, means, width, yerr=spread, capsize=3, label=method)
        ax.set_xticks(np.arange(len(keys)) + width * (len(rows) - 1) / 2)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(ylabel)
        if keys is twin_keys:
            ax.axhline(50, color="k", lw=0.8, ls="--")
            ax.set_ylim(40, 100)
            ax.set_title("what the frozen features carry", fontsize=9)
    axes[0, 0].set_title(title)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def label_efficiency_figure(table: dict, title: str = ""):
    """mIoU (%) against the labelled fraction of the training scenes (log x), one panel per mode
    (fine-tuning, linear probe), one line per pretraining; error bars = sample std over seeds, drawn
    only where there are two seeds or more. ``table``: ``experiments.label_efficiency.label_efficiency_summary``."""
    import matplotlib.pyplot as plt

    modes = [m for m in ("finetune", "linear_probe") if any(m in t for t in table.values())]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.6), squeeze=False, sharey=True)
    names = {"finetune": "fine-tuning (every weight)", "linear_probe": "linear probe (frozen trunk)"}
    for ax, mode in zip(axes[0], modes):
        for pretraining, by_mode in table.items():
            cells = sorted(by_mode.get(mode, {}).values(), key=lambda c: c["fraction"])
            if not cells:
                continue
            x = [c["fraction"] for c in cells]
            y = [100 * c["mean"] for c in cells]
            err = [100 * c["std"] if len(c["values"]) > 1 else 0.0 for c in cells]
            ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=pretraining)
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"1/{round(1 / f)}" if f < 1 else "all" for f in x])
        ax.minorticks_off()
        ax.set_xlabel("labelled fraction of the training scenes")
        ax.set_title(names[mode], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("val mIoU (%)")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bev_prediction_figure(points: np.ndarray, truth: np.ndarray, predicted: np.ndarray, titles=("ground truth", "prediction"),
                          extent: float = 40.0, max_points: int = 40000, seed: int = 0):
    """Bird's-eye view of one scan twice, coloured by ``truth`` and by ``predicted`` (N,) 16-class
    indices, with one shared class legend; points (N, >=2) metres, within ``extent`` of the sensor."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(points))[:max_points]
    xy, colours = points[idx, :2], class_colours()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), sharex=True, sharey=True)
    for ax, labels, title in zip(axes, (truth[idx], predicted[idx]), titles):
        ax.scatter(xy[:, 0], xy[:, 1], s=0.4, c=colours[labels], linewidths=0)
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xlim(-extent, extent), ax.set_ylim(-extent, extent)
        ax.set_xlabel("x (m)")
    axes[0].set_ylabel("y (m)")
    present = np.unique(np.concatenate([truth, predicted]))
    fig.legend([Patch(color=colours[k]) for k in present], [CLASS_NAMES_16[k] for k in present],
               loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig


def cmcr_terms_figure(history: list, num_matches: int, title: str = ""):
    """CMCR's loss terms per epoch in a 2 x 4 grid grouped by objective, each with its unit. The two
    InfoNCE terms are drawn as log M − L (nats; the notebook-01 bound, 0 = chance, M pairs), since
    their raw values sit near log M and hide their change; occupancy has its log 2 chance line.
    ``history``: ``pretrain``'s per-epoch records (terms absent from a run are left blank)."""
    import matplotlib.pyplot as plt

    log_m = float(np.log(num_matches))
    panels = [  # (title, [(key, label)], y label, transform)
        ("contrastive: $\\log M - \\mathcal{L}_{NCE}$", [("nce", None)], "nats", lambda v: log_m - v),
        ("code matching: $\\log M - \\mathcal{L}_{CMCM}$", [("cmcm", None)], "nats", lambda v: log_m - v),
        ("decoupling: $\\mathcal{L}_{orth}$", [("orth", None)], "$N\\|C\\|_F/D^2$", None),
        ("codebook commitment", [("commit_points", "points"), ("commit_pixels", "pixels")], "squared distance", None),
        ("codebook perplexity", [("perplexity_points", "points"), ("perplexity_pixels", "pixels")], "codes in use", None),
        ("masked image modelling: $\\mathcal{L}_{MIM}$", [("mim", None)], "MSE (RGB in [0, 1])", None),
        ("occupancy: $\\mathcal{L}_{occ}$", [("occupancy", None)], "BCE (nats)", None),
        ("intensity: $\\mathcal{L}_{int}$", [("intensity", None)], "L1 (intensity / 255)", None),
    ]
    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(2, 4, figsize=(15, 5.6))
    for ax, (name, keys, unit, transform) in zip(axes.flat, panels):
        for key, label in keys:
            if key in history[0]:
                values = [h[key] for h in history]
                ax.plot(epochs, [transform(v) for v in values] if transform else values, "o-", ms=3, label=label)
        if key == "occupancy" and key in history[0]:
            ax.axhline(np.log(2), color="0.5", ls="--", lw=0.8, label="log 2 (chance)")
        if transform is not None:
            ax.axhline(0, color="0.5", ls="--", lw=0.8, label="chance")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def paired_differences_figure(runs: dict, reference: str, noise_row: str | None = None,
                              metrics=("miou", "geometry twins in features", "appearance twins in features"),
                              title: str = ""):
    """Dot plot of per-seed paired differences to ``reference`` (percentage points), one panel per
    metric, one row per method, a dot per seed and a bar at the mean. ``runs`` maps a method to its
    per-seed result dicts, seeds in the same order for every method. ``noise_row``: a method that runs
    the reference's own objective (an A/A pair); the range of its differences is shaded as the noise band."""
    import matplotlib.pyplot as plt

    methods = [m for m in runs if m != reference]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 0.45 * len(methods) + 1.6), sharey=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for y, method in enumerate(methods):
            diffs = [100 * (a[metric] - b[metric]) for a, b in zip(runs[method], runs[reference])]
            ax.scatter(diffs, [y] * len(diffs), s=16, color="C0" if method != noise_row else "0.4", zorder=3)
            ax.plot([np.mean(diffs)] * 2, [y - 0.3, y + 0.3], color="k", lw=2, zorder=4)
            if method == noise_row:
                ax.axvspan(min(diffs), max(diffs), color="0.85", zorder=1, label=f"A/A range ({noise_row})")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(f"− {reference} (points)", fontsize=8)
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods, fontsize=8)
        ax.invert_yaxis()
    if noise_row is not None:
        axes[0, 0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def box_corners_xy(boxes: np.ndarray) -> np.ndarray:
    """The four ground corners (K, 4, 2) metres of boxes (K, >=7): x, y, z, length, width, height, yaw."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    half = np.stack([boxes[:, 3], boxes[:, 4]], 1)[:, None, :] / 2 * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    rot = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)  # (K, 2, 2)
    return boxes[:, None, :2] + np.einsum("kij,kpj->kpi", rot, half)


def instances_bev_figure(points: np.ndarray, panels: list, extent: float = 35.0, max_points: int = 40000, seed: int = 0):
    """Bird's-eye views of one scan side by side. ``panels``: dicts with ``title``, ``instance`` (N,)
    int (0 = no instance: grey; each id its own colour), ``boxes`` (K, 7) LiDAR frame and optional
    ``scores`` (K,) (the outline's opacity). Points (N, >=2) metres, within ``extent`` of the sensor."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(points))[:max_points]
    xy = points[idx, :2]
    palette = plt.get_cmap("tab20")(np.arange(20))[:, :3]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.6), sharex=True, sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        inst = panel["instance"][idx]
        stuff = inst == 0
        ax.scatter(xy[stuff, 0], xy[stuff, 1], s=0.4, c="0.78", linewidths=0)
        ax.scatter(xy[~stuff, 0], xy[~stuff, 1], s=2.0, c=palette[inst[~stuff] % 20], linewidths=0)
        boxes = np.asarray(panel["boxes"], np.float32).reshape(-1, 7)
        scores = panel.get("scores", np.ones(len(boxes)))
        for corners, score in zip(box_corners_xy(boxes), scores):
            loop = np.vstack([corners, corners[:1]])
            ax.plot(loop[:, 0], loop[:, 1], color="crimson", lw=1.0, alpha=float(np.clip(score, 0.15, 1.0)))
        ax.set_title(panel["title"], fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-extent, extent), ax.set_ylim(-extent, extent)
        ax.set_xlabel("x (m, LiDAR frame)")
    axes[0, 0].set_ylabel("y (m)")
    return fig


def instances_results_figure(summary: dict, fractions: list, labels: list):
    """PQ, mAP and NDS (%) per pretraining (bars) and label fraction (groups), error bars = sample std
    over seeds. ``summary``: ``experiments.instances.instances_summary``; ``labels``: one per fraction."""
    import matplotlib.pyplot as plt

    metrics = ("PQ", "mAP", "NDS")
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 3.4), sharey=False)
    names = list(summary)
    width = 0.8 / len(names)
    for ax, m in zip(axes, metrics):
        for k, name in enumerate(names):
            cells = [summary[name][f"{f:.4f}"][m] for f in fractions]
            ax.bar(np.arange(len(fractions)) + k * width, [100 * c["mean"] for c in cells], width,
                   yerr=[100 * c["std"] if len(c["values"]) > 1 else 0 for c in cells], capsize=3, label=name)
        ax.set_xticks(np.arange(len(fractions)) + width * (len(names) - 1) / 2, labels)
        ax.set_title(f"{m} (%)", fontsize=10)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the legend above the bars
    axes[0].legend(fontsize=8, ncol=len(names), loc="upper left")
    return fig

"""Linear probes of frozen per-point features: what does a head carry? (notebook 03)

    feats = point_features(model, val_keyframes)            # per point: shared F, specific G, trunk
    acc = twin_probe(train["shared"], train["labels"], feats["shared"], feats["labels"],
                     APPEARANCE_ONLY_TWINS)                  # {("bus", "construction_vehicle"): 0.62, ...}
    C = cross_correlation(feats["shared"], feats["specific"])  # (D, D), the matrix inside L_orth

The probe is closed-form ridge regression onto ±1 one-hot targets on standardised features, with an
unpenalised intercept, predicting the arg-max (scikit-learn's ``RidgeClassifier`` on standardised
inputs). It has no iterations and no seed, so it is cheap and deterministic.

A linear probe is blind to any invertible linear map of its input: a head that is an injective
linear function of the trunk (a 1x1 convolution from a trunk narrower than the head) lets the probe
read everything the trunk has. Compare a head with the trunk it sits on before reading a probe's
number as "what this head carries".
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cmcr_lite.classes import APPEARANCE_ONLY_TWINS, GEOMETRY_ONLY_TWINS, class_index

__all__ = ["ridge_probe", "balanced_accuracy", "twin_probe", "mlp_twin_probe", "softmax_probe", "cross_correlation",
           "point_features"]


def ridge_probe(train_x: torch.Tensor, train_y, test_x: torch.Tensor, alpha: float = 1.0) -> np.ndarray:
    """Fit a ridge classifier on (train_x, train_y) and predict the labels of test_x.

    Args:
        train_x: (N, C) float features; test_x: (M, C) float features.
        train_y: (N,) int labels (any values; at least two distinct).
        alpha: ridge penalty on the weights of the standardised features (not on the intercept).

    Returns:
        (M,) int64 predicted labels, values taken from ``train_y``.

    Each feature is standardised with the training mean and standard deviation; the targets are
    +1 for the point's class and -1 for the others; W = (XᵀX + αI)⁻¹ XᵀY on centred X and Y.
    """
    x = torch.as_tensor(train_x, dtype=torch.float64)
    t = torch.as_tensor(test_x, dtype=torch.float64)
    y = np.asarray(train_y)
    if x.dim() != 2 or t.dim() != 2 or x.shape[1] != t.shape[1] or len(y) != len(x):
        raise ValueError(f"ridge_probe: expected train_x (N, C), train_y (N,), test_x (M, C); got "
                         f"{tuple(x.shape)}, {y.shape}, {tuple(t.shape)}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"ridge_probe: train_y needs at least two classes, got {classes.tolist()}")
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x, t = (x - mean) / std, (t - mean) / std
    targets = torch.from_numpy(2.0 * (y[:, None] == classes[None, :]) - 1.0)  # (N, K) ±1
    y_mean = targets.mean(0)
    w = torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype), x.T @ (targets - y_mean))
    scores = t @ w + y_mean  # x is centred, so the intercept is the target mean
    return classes[scores.argmax(1).numpy()].astype(np.int64)


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of the per-class recall (0.5 = chance for two
    balanced or unbalanced classes)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0 or y_true.shape != y_pred.shape:
        raise ValueError(f"balanced_accuracy: need two non-empty arrays of one shape, got {y_true.shape}, "
                         f"{y_pred.shape}")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def twin_probe(train_x, train_y, test_x, test_y, pairs, alpha: float = 1.0) -> dict:
    """For each twin pair (class names), a two-class ridge probe on the points of those two classes.

    Args:
        train_x (N, C), train_y (N,) int 16-class labels: the probe's training points.
        test_x (M, C), test_y (M,): the points it is scored on.
        pairs: e.g. ``classes.GEOMETRY_ONLY_TWINS``.

    Returns:
        {(a, b): balanced accuracy on the test points of a and b}; 0.5 = chance. NaN when either
        class has no training point or no test point.
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    out = {}
    for a, b in pairs:
        ia, ib = class_index(a), class_index(b)
        tr, te = np.isin(train_y, (ia, ib)), np.isin(test_y, (ia, ib))
        if len(np.unique(train_y[tr])) < 2 or len(np.unique(test_y[te])) < 2:
            out[(a, b)] = float("nan")
            continue
        pred = ridge_probe(train_x[torch.from_numpy(tr)], train_y[tr], test_x[torch.from_numpy(te)], alpha)
        out[(a, b)] = balanced_accuracy(test_y[te], pred)
    return out


def _standardise(train_x, test_x):
    x = torch.as_tensor(train_x, dtype=torch.float32)
    t = torch.as_tensor(test_x, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x - mean) / std, (t - mean) / std


def _fit_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int,
                    lr: float, generator: torch.Generator, batch: int = 4096) -> torch.nn.Module:
    """Adam on class-balanced cross-entropy (each class weighs the same in total, so the fit aims at
    balanced accuracy), minibatches drawn with ``generator``."""
    counts = torch.bincount(y, minlength=num_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def mlp_twin_probe(train_x, train_y, test_x, test_y, pairs, hidden: int = 64, steps: int = 400, lr: float = 1e-2,
                   seed: int = 0) -> dict:
    """As :func:`twin_probe`, with a small MLP instead of a linear map: standardised features ->
    ``hidden`` ReLU units -> 2 logits, Adam on class-balanced cross-entropy for ``steps`` minibatch
    steps, initialised and sampled from ``seed``. What a *non-linear* read-out finds in the features:
    a twin pair the MLP tells apart and the ridge probe does not is there, but not linearly.

    Returns {(a, b): balanced accuracy on the test points of a and b} (NaN when a class is missing).
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    out = {}
    for k, (a, b) in enumerate(pairs):
        ia, ib = class_index(a), class_index(b)
        tr, te = np.isin(train_y, (ia, ib)), np.isin(test_y, (ia, ib))
        if len(np.unique(train_y[tr])) < 2 or len(np.unique(test_y[te])) < 2:
            out[(a, b)] = float("nan")
            continue
        x, t = _standardise(train_x[torch.from_numpy(tr)], test_x[torch.from_numpy(te)])
        y = torch.from_numpy((train_y[tr] == ib).astype(np.int64))
        g = torch.Generator().manual_seed(seed * 1009 + k)
        torch.manual_seed(seed * 1009 + k)  # the layers' initialisation
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
        _fit_classifier(net, x, y, 2, steps, lr, g)
        with torch.no_grad():
            pred = np.where(net(t).argmax(1).numpy() == 1, ib, ia)
        out[(a, b)] = balanced_accuracy(test_y[te], pred)
    return out


def softmax_probe(train_x, train_y, test_x, num_classes: int, l2: float = 1e-4, max_rows: int = 200_000,
                  max_iter: int = 300) -> np.ndarray:
    """A linear softmax classifier fitted to its optimum; returns the (M,) int64 classes of ``test_x``.

    Args:
        train_x: (N, C) float features; train_y: (N,) int labels in [0, num_classes); test_x: (M, C).
            Only the classes present in ``train_y`` can be predicted.
        l2: weight of ``l2 * ||W||^2`` (not on the bias), added to the mean cross-entropy.
        max_rows: at most this many training rows, an evenly spaced subset when N is larger (a linear
            map of C inputs needs far fewer rows than a scan set holds; this bounds the cost).
        max_iter: L-BFGS iterations (it stops earlier once the gradient is below 1e-6).

    Features are standardised with the training rows' statistics. The objective is convex, so
    full-batch L-BFGS reaches the same optimum from any start and in any data order: the probe has no
    seed and adds no noise of its own to a comparison of trunks. (An SGD probe run for a fixed number
    of epochs does: on one bench trunk, two probe seeds gave mIoU 53.3 and 49.3.) The objective is
    scikit-learn's multinomial ``LogisticRegression`` with ``C = 1 / (2 * l2 * N)`` (the test checks).
    """
    x, t = _standardise(train_x, test_x)
    # logits only for the classes the training rows hold: an absent class (the ignore label) would
    # have its bias driven to minus infinity, and the optimum would not exist
    present, y = np.unique(np.asarray(train_y), return_inverse=True)
    if present.min() < 0 or present.max() >= num_classes:
        raise ValueError(f"softmax_probe: labels must be in [0, {num_classes}), got {present.min()}..{present.max()}")
    y = torch.from_numpy(y.astype(np.int64))
    if len(x) > max_rows:
        keep = torch.from_numpy(np.linspace(0, len(x) - 1, max_rows).round().astype(np.int64))
        x, y = x[keep], y[keep]
    w = torch.zeros(x.shape[1], len(present), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(present), dtype=torch.float64, requires_grad=True)
    x64 = x.double()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x64 @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return present[(t.double() @ w + b).argmax(1).numpy()].astype(np.int64)


def cross_correlation(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """|F̂ᵀĜ| / N: the (D, D) matrix whose Frobenius norm L_orth penalises, per point.

    F̂, Ĝ are ``shared`` and ``specific`` (N, D) with rows L2-normalised, as in
    ``losses.orthogonality``. Entry (a, b) is the mean over the N rows of F̂_na Ĝ_nb, in [0, 1], so
    matrices of batches of different sizes compare; ``orthogonality_loss = N ‖C‖_F / D²``.
    """
    if shared.dim() != 2 or shared.shape != specific.shape or len(shared) == 0:
        raise ValueError(f"cross_correlation: need two non-empty (N, D) tensors of one shape, got "
                         f"{tuple(shared.shape)} and {tuple(specific.shape)}")
    f, g = F.normalize(shared, dim=1), F.normalize(specific, dim=1)
    return (f.T @ g).abs() / len(f)


@torch.no_grad()
def point_features(model, keyframes, crop_size=(112, 208)) -> dict:
    """Per-point features of a ``CMCRModel`` (eval mode) on keyframes, without augmentation.

    Args:
        model: a ``cmcr.CMCRModel`` with ``decouple=True``.
        keyframes: a ``NuScenesKeyframes`` (or a sequence of ``Keyframe``s with ``dataroot``).
        crop_size: network image size (height, width); only the 2D features depend on it.

    Returns:
        {"shared": (P, D) float32 F^3D (L2-normalised), "specific": (P, D) float32 G^3D,
         "trunk": (P, T) float32 the backbone's output, "labels": (P,) int64 16-class labels,
         "shared_2d": (Q, D), "specific_2d": (Q, D) the 2D heads at the image trunk's resolution},
        P = all points of all keyframes (each point gets its voxel's features), Q = all trunk pixels.
    """
    from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig, batch_to_sparse_tensor, collate_pairs

    if getattr(model, "head3d_specific", None) is None:
        raise ValueError("point_features: the model has no specific head (CMCROptions.decouple=False)")
    was_training = model.training
    model.eval()
    dataset = PairedScanDataset(keyframes, PipelineConfig.lite(crop_size=tuple(crop_size), augment=False,
                                                               superpixels=False))
    device = next(model.parameters()).device
    out = {k: [] for k in ("shared", "specific", "trunk", "labels", "shared_2d", "specific_2d")}
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).cpu()  # noqa: E731
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            batch = collate_pairs([item])
            x = batch_to_sparse_tensor(batch, device)
            trunk = model.backbone(x)
            shared = F.normalize(model.head3d(trunk).F, dim=1)
            specific = model.head3d_specific(trunk).F
            v = torch.from_numpy(item["voxel_of_point"]).to(device)
            out["shared"].append(shared[v].cpu()), out["specific"].append(specific[v].cpu())
            out["trunk"].append(trunk.F[v].cpu()), out["labels"].append(torch.from_numpy(item["labels"]))
            _, f2d_low, _, g2d_low = model.features_2d(batch["images"].to(device))
            out["shared_2d"].append(flat(f2d_low)), out["specific_2d"].append(flat(g2d_low))
    finally:
        model.train(was_training)
    res = {k: torch.cat(v) for k, v in out.items()}
    res["labels"] = res["labels"].numpy()
    return res


# what the frozen features carry, whatever the 16-class head makes of it: a two-class ridge probe per
# twin pair on the trunk's point features (train split -> val split)
FEATURE_METRICS = {"geometry twins in features": GEOMETRY_ONLY_TWINS,
                   "appearance twins in features": APPEARANCE_ONLY_TWINS}
MLP_FEATURE_METRICS = {"geometry twins in features (MLP)": GEOMETRY_ONLY_TWINS,
                       "appearance twins in features (MLP)": APPEARANCE_ONLY_TWINS}


def feature_twin_probes(model, train, val, config, mlp_seed: int | None = None) -> dict:
    """{metric of FEATURE_METRICS: mean over its pairs of the two-class ridge probe's balanced
    accuracy} on the trunk's per-point features (``probes.twin_probe``, fitted on ``train``, scored
    on ``val``); 0.5 = chance. With ``mlp_seed``, also MLP_FEATURE_METRICS (:func:`mlp_twin_probe`)."""
    import torch

    from cmcr_lite.downstream import extract_features

    def points(keyframes):
        scans = extract_features(model, keyframes, config, progress=False)
        return (torch.cat([s.point_features for s in scans]),
                np.concatenate([np.asarray(s.point_labels) for s in scans]))

    (xt, yt), (xv, yv) = points(train), points(val)
    return features_twin_summary(xt, yt, xv, yv, mlp_seed)


def features_twin_summary(xt, yt, xv, yv, mlp_seed: int | None = None) -> dict:
    """The FEATURE_METRICS (and with ``mlp_seed`` the MLP_FEATURE_METRICS) of per-point features
    ``xt`` (N, C) / labels ``yt`` (N,) fitted, scored on ``xv`` / ``yv``."""
    out = {metric: float(np.nanmean(list(twin_probe(xt, yt, xv, yv, pairs).values())))
           for metric, pairs in FEATURE_METRICS.items()}
    if mlp_seed is not None:
        out.update({metric: float(np.nanmean(list(mlp_twin_probe(xt, yt, xv, yv, pairs, seed=mlp_seed).values())))
                    for metric, pairs in MLP_FEATURE_METRICS.items()})
    return out

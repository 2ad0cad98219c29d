"""The read-out every trunk of the bench shares: a frozen trunk, a linear softmax probe fitted to its
optimum on the train split, scored per point on val, plus two-class probes per twin pair on the
trunk's features; and the image-only reference (the frozen 2D teacher's features at the points'
pixels, read the same way)."""
from __future__ import annotations

import numpy as np

from cmcr_lite.metrics import TWIN_METRICS, summarize_confusion, twin_separation

def per_pair(conf) -> dict:
    return {f"{a}|{b}": twin_separation(conf, a, b) for pairs in TWIN_METRICS.values() for a, b in pairs}


def frozen_trunk(config, pretrained, seed: int, recalibrate_on=None):
    """A ``SegmentationModel`` in eval mode with the trunk of ``pretrained`` (a checkpoint path), or
    a random trunk initialised from ``seed`` when it is None. ``recalibrate_on`` (keyframes): its
    BatchNorm statistics re-estimated on them (``downstream.recalibrate_batchnorm``)."""
    import torch

    from cmcr_lite.downstream import recalibrate_batchnorm
    from cmcr_lite.downstream.model import SegmentationModel, load_pretrained_trunk

    torch.manual_seed(seed)
    model = SegmentationModel(config.backbone, config.num_classes)
    if pretrained is not None:
        load_pretrained_trunk(model, str(pretrained), config)
    if recalibrate_on is not None:
        recalibrate_batchnorm(model, recalibrate_on, config)
    return model.eval()


def linear_readout(model, train, val, config, seed: int, train_indices=None, own_head: bool = False,
                   twin_probes: bool = True) -> dict:
    """The readout every trunk row shares, on the frozen trunk's per-point features.

    The 16-class prediction comes from ``model``'s own head when ``own_head`` (the supervised
    ceiling), else from a linear softmax probe fitted to its optimum on the voxel features of the
    ``train`` keyframes (``train_indices``: a label fraction's subset) and scored per point on val
    (:func:`cmcr_lite.analysis.probes.softmax_probe`: convex, no seed, so the probe adds no noise of
    its own). With ``twin_probes``, also the two-class twin probes (ridge and MLP) on the per-point
    features.
    """
    import torch

    from cmcr_lite.analysis.probes import features_twin_summary, softmax_probe
    from cmcr_lite.downstream import evaluate, extract_features
    from cmcr_lite.metrics import confusion_matrix

    tr = extract_features(model, train, config, indices=train_indices, progress=False)
    va = extract_features(model, val, config, progress=False)
    xv = torch.cat([s.point_features for s in va])
    yv = np.concatenate([np.asarray(s.point_labels) for s in va])
    if own_head:
        conf = evaluate(model, val, config, progress=False)
    else:
        xt = torch.cat([s.voxel_features for s in tr])
        yt = np.concatenate([np.asarray(s.voxel_labels) for s in tr])
        keep = yt != config.ignore_index
        pred = softmax_probe(xt[torch.from_numpy(keep)], yt[keep], xv, config.num_classes)
        conf = confusion_matrix(pred, yv, config.num_classes, ignore_index=config.ignore_index)
    out = summarize_confusion(conf)
    out["per_pair"] = per_pair(conf)
    if not twin_probes:
        return out
    xt_points = torch.cat([s.point_features for s in tr])
    yt_points = np.concatenate([np.asarray(s.point_labels) for s in tr])
    out.update(features_twin_summary(xt_points, yt_points, xv, yv, mlp_seed=seed))
    return out


def image_reference(root, version: str, train, val, seed: int) -> dict:
    """The frozen 2D teacher's features at each paired point's pixel (centre crop, lite size), read
    by a linear softmax probe (16 classes) and by the twin probes. Only points seen by a camera
    count, each once per camera that sees it."""
    import torch

    from cmcr_lite.analysis.probes import features_twin_summary, softmax_probe
    from cmcr_lite.classes import IGNORE_INDEX, NUM_CLASSES_16
    from cmcr_lite.metrics import confusion_matrix
    from cmcr_lite.teacher import keyframe_pixel_features, load_or_train_teacher

    teacher = load_or_train_teacher(root, version, progress=False)

    def rows(keyframes):
        feats, labels = [], []
        for i in range(len(keyframes)):
            f, y = keyframe_pixel_features(teacher, keyframes[i])
            feats.append(f), labels.append(np.asarray(y))
        x, y = torch.cat(feats), np.concatenate(labels).astype(np.int64)
        keep = y != IGNORE_INDEX
        return x[torch.from_numpy(keep)], y[keep]

    (xt, yt), (xv, yv) = rows(train), rows(val)
    pred = softmax_probe(xt, yt, xv, NUM_CLASSES_16)
    conf = confusion_matrix(pred, yv, NUM_CLASSES_16, ignore_index=IGNORE_INDEX)
    out = summarize_confusion(conf)
    out["per_pair"] = per_pair(conf)
    out.update(features_twin_summary(xt, yt, xv, yv, mlp_seed=seed))
    out["points"] = {"train": int(len(yt)), "val": int(len(yv))}
    return out

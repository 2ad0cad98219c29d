"""Frozen-trunk features and per-point evaluation: voxel logits un-voxelised, confusion matrices."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cmcr_lite.classes import IGNORE_INDEX, NUM_CLASSES_16
from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.downstream.data import SegmentationScans, batch_to_sparse, collate_scans
from cmcr_lite.downstream.model import SegmentationModel
from cmcr_lite.metrics import confusion_matrix


@dataclass
class ScanFeatures:
    """Frozen-trunk features of one scan (no augmentation).

    voxel_features: (V, trunk_dim) float32; voxel_labels: (V,) int64 (representative points' labels);
    voxel_of_point: (N,) int64; point_labels: (N,) int64; index: the keyframe index.
    """
    voxel_features: torch.Tensor
    voxel_labels: torch.Tensor
    voxel_of_point: torch.Tensor
    point_labels: torch.Tensor
    index: int

    @property
    def point_features(self) -> torch.Tensor:
        """(N, trunk_dim) the feature of every point (its voxel's)."""
        return self.voxel_features[self.voxel_of_point]


def iter_features(model: SegmentationModel, keyframes, config: Optional[DownstreamConfig] = None,
                  indices: Optional[Sequence[int]] = None, progress: bool = True):
    """Yield :class:`ScanFeatures` scan by scan (no augmentation, model in eval mode, no gradients)."""
    config = config or DownstreamConfig()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dataset = SegmentationScans.from_config(keyframes, config, indices, train=False)
    try:
        for i in tqdm(range(len(dataset)), desc="features", disable=not progress):
            batch = collate_scans([dataset[i]])
            with torch.no_grad():
                feats = model.features(batch_to_sparse(batch, device)).float().cpu()
            yield ScanFeatures(feats, batch["labels"], batch["voxel_of_point"][0], batch["point_labels"][0],
                               batch["indices"][0])
    finally:
        model.train(was_training)


def extract_features(model: SegmentationModel, keyframes, config: Optional[DownstreamConfig] = None,
                     indices: Optional[Sequence[int]] = None, progress: bool = True) -> list:
    """Trunk features of every scan, without augmentation, trunk in eval mode (one scan at a time).

    Returns a list of :class:`ScanFeatures` on the CPU, in ``indices`` order. Voxel features are stored
    (``point_features`` expands them per point on demand), so memory is V x trunk_dim floats per scan:
    meant for small sets (the embedded one, nuScenes-mini), not for the 28k scans of nuScenes train.
    """
    return list(iter_features(model, keyframes, config, indices, progress))


@torch.no_grad()
def recalibrate_batchnorm(model: SegmentationModel, keyframes, config: Optional[DownstreamConfig] = None,
                          indices: Optional[Sequence[int]] = None, progress: bool = False) -> SegmentationModel:
    """Re-estimate the trunk's BatchNorm running statistics from one pass over ``keyframes``.

    A read-out runs the trunk in eval mode, which normalises with the running mean and variance that
    pretraining accumulated. After a short pretraining those lag behind the weights (momentum 0.1 per
    step, and the weights moved at every step), so eval-mode features are not those the trunk was
    trained to give. Here every BatchNorm of the trunk forgets its statistics and takes the plain
    average of the per-scan ones (``momentum=None``) over the scans, one scan per batch, without
    augmentation and without gradients; no weight changes. Returns ``model`` in eval mode.
    """
    config = config or DownstreamConfig()
    device = next(model.parameters()).device
    norms = [m for m in model.trunk.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.trunk.train()
    dataset = SegmentationScans.from_config(keyframes, config, indices, train=False)
    try:
        for i in tqdm(range(len(dataset)), desc="BatchNorm statistics", disable=not progress):
            model.features(batch_to_sparse(collate_scans([dataset[i]]), device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return model.eval()


def channel_moments(feature_rows) -> tuple:
    """Per-channel mean and standard deviation ((D,) float32 each) over all rows of an iterable of
    (V_i, D) tensors, accumulated in float64."""
    n, total, total_sq = 0, None, None
    for f in feature_rows:
        f = f.detach().to(torch.float64)
        s, sq = f.sum(0), (f * f).sum(0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        n += len(f)
    if not n:
        raise ValueError("channel_moments: no feature rows")
    mean = total / n
    var = (total_sq / n - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()


def point_predictions(voxel_logits: torch.Tensor, voxel_of_point: torch.Tensor,
                      ignore_index: Optional[int] = IGNORE_INDEX) -> torch.Tensor:
    """Per-point classes from per-voxel logits.

    Args:
        voxel_logits: (V, C) logits of one scan; voxel_of_point: (N,) int64 voxel of each point.
        ignore_index: this class's logit is masked to -inf, so it is never predicted.
    Returns:
        (N,) int64 predicted class of every point (its voxel's argmax).
    """
    logits = voxel_logits.detach().clone()
    if ignore_index is not None:
        logits[:, ignore_index] = -math.inf
    return logits.argmax(1)[voxel_of_point.to(logits.device)]


def scan_confusion(voxel_logits: torch.Tensor, voxel_of_point: torch.Tensor, point_labels: torch.Tensor,
                   num_classes: int = NUM_CLASSES_16, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 confusion matrix (rows = target) of one scan's per-point
    predictions; points labelled ``ignore_index`` are dropped and that class is never predicted."""
    pred = point_predictions(voxel_logits, voxel_of_point, ignore_index).cpu().numpy()
    return confusion_matrix(pred, np.asarray(point_labels), num_classes, ignore_index=ignore_index)


@torch.no_grad()
def predict_scan(model: SegmentationModel, keyframes, index: int, config: Optional[DownstreamConfig] = None):
    """One scan's per-point prediction, for pictures: ``(points (N, 4) float32 metres + intensity,
    labels (N,) int64, predicted (N,) int64)``, the model in eval mode, without augmentation."""
    config = config or DownstreamConfig()
    was_training = model.training
    model.eval()
    item = SegmentationScans.from_config(keyframes, config, [index], train=False)[0]
    batch = collate_scans([item])
    logits = model(batch_to_sparse(batch, next(model.parameters()).device))
    predicted = point_predictions(logits, batch["voxel_of_point"][0], config.ignore_index).cpu().numpy()
    model.train(was_training)
    points, labels = keyframes.load_scan(index)
    return points, np.asarray(labels, np.int64), predicted


@torch.no_grad()
def evaluate(model: SegmentationModel, keyframes, config: Optional[DownstreamConfig] = None,
             indices: Optional[Sequence[int]] = None, progress: bool = True,
             on_scan: Optional[Callable[[int, np.ndarray], None]] = None) -> np.ndarray:
    """Confusion matrix over every point of ``keyframes`` (no augmentation, model in eval mode).

    Voxel logits are un-voxelised through each scan's inverse map (``voxel_of_point``), the ignore
    class is never predicted and points labelled ``ignore_index`` are not counted.

    Args:
        on_scan: if given, called once per scan with (keyframe index, (N,) int64 predicted class of
            every point of the scan, in the scan file's point order): e.g.
            :class:`cmcr_lite.downstream.submission.PredictionWriter`.

    Returns:
        (num_classes, num_classes) int64 numpy array, rows = target; feed it to
        :func:`cmcr_lite.metrics.mean_iou`.
    """
    config = config or DownstreamConfig()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dataset = SegmentationScans.from_config(keyframes, config, indices, train=False)
    conf = np.zeros((model.num_classes, model.num_classes), dtype=np.int64)
    for i in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        batch = collate_scans([dataset[i]])
        logits = model(batch_to_sparse(batch, device))
        pred = point_predictions(logits, batch["voxel_of_point"][0], config.ignore_index).cpu().numpy()
        conf += confusion_matrix(pred, batch["point_labels"][0].numpy(), model.num_classes,
                                 ignore_index=config.ignore_index)
        if on_scan is not None:
            on_scan(batch["indices"][0], pred)
    model.train(was_training)
    return conf

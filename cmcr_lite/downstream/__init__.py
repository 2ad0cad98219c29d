"""Downstream semantic segmentation: fine-tuning and linear probing of a (pretrained) MinkUNet (docs/paper.md §5).

The protocol is SLidR's, which CMCR keeps:

* **model**: the MinkUNet trunk (``planes[-1]`` = 96 channels for the paper) plus a 1x1 head
  ``trunk_dim -> 17`` (16 nuScenes classes + the ignore class 0; the official code calls it ``final``);
* **loss**: cross-entropy + Lovász-softmax on the voxels, ignoring label 0
  (:func:`cmcr_lite.losses.lovasz.segmentation_loss`);
* **optimizer**: SGD, momentum 0.9, dampening 0.1, weight decay 1e-4, with a separate learning rate
  for the head, and cosine annealing of both learning rates to 0 over the epochs (stepped once per epoch);
* **fine-tuning** (all parameters): lr 0.02, head lr 2.0, batch 16, 100 epochs at 1% of the labels
  (50 epochs at 5/10/25/100%), label fractions taken over **scenes** as SLidR does (walk the scene
  table, keep the k-th, 2k-th, ... training scene, k = round(1 / fraction));
* **linear probing**: every trunk parameter frozen and the trunk kept in eval mode (BatchNorm
  statistics frozen), only the head trained: lr 0.05 for the head, 50 epochs, 100% of the labels;
* **metric**: mIoU over the 16 classes on *per-point* predictions: the voxel predictions are
  un-voxelised through the inverse map, and the ignore class can never be predicted. Which classes
  the mean counts is ``DownstreamConfig.miou_rule`` (:data:`cmcr_lite.metrics.MIOU_RULES`): the
  nuScenes devkit's at the paper's scale, SemanticKITTI's official one there, the classes present in
  the ground truth for the lite preset.

Coordinates are 0.1 m Cartesian voxels, as CMCR pretrains: the official downstream code asserts that
pretraining and downstream voxelisations agree (its linear-probe config is cylindrical, which would
fail that assertion with a CMCR checkpoint; we keep Cartesian everywhere).

CPU fast path for linear probing (``cache_features=True``, used by :meth:`DownstreamConfig.lite`):
the trunk is frozen, so its features can be computed once per scan (:func:`extract_features`) and the
head trained on the cached features. This **omits the training-time augmentation** (rotation + flips)
of the paper's linear probe: the head sees every scan in one pose only. The lite preset also sets
``normalize_features=True`` (not in the paper): fixed per-channel standardisation of the frozen
features before the head. A random-init trunk in eval mode keeps BatchNorm at its initial statistics
and outputs features ~1e-3 in size; with the paper's LP (lr 0.05) its head then learns only the
majority class (measured on the embedded set: 2.8% mIoU, vs 14.7% with standardisation).

    cfg = DownstreamConfig.lite("linear_probe")
    model, history = train_segmentation(cfg, NuScenesKeyframes(root, version, "train"), pretrained="ckpt.pt")
    conf = evaluate(model, NuScenesKeyframes(root, version, "val"), cfg)   # (17, 17) int64
    print(mean_iou(conf))

Label fractions follow SLidR's loader exactly: walk ``nusc.scene`` in table order, count the scenes of
the training split from 1, keep a scene when the count is a multiple of k = round(1 / fraction). 1% of
the 700 nuScenes train scenes (k = 100) is the 100th, 200th, ..., 700th scene. A split with fewer than
k scenes keeps none: SLidR then falls back to scene-0392, we raise an error naming 1/n, the smallest
fraction that keeps one scene (on the embedded set's 3 train scenes: 1/3).

From the command line (``--config full``: :meth:`DownstreamConfig.full`, the paper's values; ``lite``:
:meth:`DownstreamConfig.lite`; no ``--dataroot``: the embedded dataset, train on ``train``, evaluate on
``val``)::

    python -m cmcr_lite.downstream --pretrained runs/cmcr/checkpoint.pt --mode finetune --label-fraction 0.01 \
        --config full --dataroot /data/sets/nuscenes --output-dir runs/cmcr_ft1
    python -m cmcr_lite.downstream --mode linear_probe --config lite --output-dir outputs/downstream/lp \
        [--set batch_size=4 backbone.bn_momentum=0.05] [--epochs N] [--seed N] [--resume] [--evaluate]

It writes ``config.json``, ``checkpoint.pt`` after every epoch (atomically; ``--resume`` continues it
and reaches the weights of an uninterrupted run), ``results.json`` (mIoU and per-class IoU by name
under ``miou_rule``, which it names, ``miou_by_rule`` with every rule's mIoU, the confusion matrix,
the config, the pretrained file, the training scenes) and TensorBoard scalars in ``tensorboard/``.
``--evaluate`` only evaluates the saved model (or ``--model PATH``); ``--write-predictions DIR`` also
writes every val point's prediction in the benchmark's submission layout (``submission``).

The package, one job per module: ``config`` (DownstreamConfig), ``data`` (label fractions, scans),
``model`` (SegmentationModel, pretrained weights), ``train`` (optimiser, schedule, loop, checkpoints),
``evaluate`` (features, per-point confusion matrices), ``submission`` (prediction files in the
benchmarks' layouts), ``cli`` (``python -m cmcr_lite.downstream``).
"""
from cmcr_lite.downstream.cli import main
from cmcr_lite.downstream.config import LOSSES, MODES, DownstreamConfig
from cmcr_lite.downstream.data import (SegmentationScans, batch_to_sparse, collate_scans, keyframe_indices_for_fraction,
                                       select_scenes_by_fraction)
from cmcr_lite.downstream.evaluate import (ScanFeatures, channel_moments, evaluate, extract_features, iter_features,
                                           point_predictions, predict_scan, recalibrate_batchnorm, scan_confusion)
from cmcr_lite.downstream.model import PretrainedWeightsError, SegmentationModel, load_pretrained_trunk
from cmcr_lite.downstream.train import (load_segmentation_checkpoint, make_optimizer, make_scheduler,
                                        train_segmentation)
from cmcr_lite.runtime import resolve_device

__all__ = [
    "DownstreamConfig", "MODES", "LOSSES", "resolve_device", "select_scenes_by_fraction",
    "keyframe_indices_for_fraction", "SegmentationScans", "collate_scans", "batch_to_sparse", "SegmentationModel",
    "PretrainedWeightsError", "load_pretrained_trunk", "make_optimizer", "make_scheduler", "train_segmentation",
    "load_segmentation_checkpoint", "ScanFeatures", "iter_features", "extract_features", "channel_moments",
    "point_predictions", "predict_scan", "scan_confusion", "evaluate", "recalibrate_batchnorm", "main",
]

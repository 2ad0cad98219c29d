"""Downstream semantic segmentation: fine-tuning and linear probing of a (pretrained) MinkUNet (paper.md §5).

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
  un-voxelised through the inverse map, and the ignore class can never be predicted.

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
and reaches the weights of an uninterrupted run), ``results.json`` (mIoU, per-class IoU by name, the
confusion matrix, the config, the pretrained file, the training scenes) and TensorBoard scalars in
``tensorboard/``. ``--evaluate`` only evaluates the saved model (or ``--model PATH``).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cmcr_lite.classes import IGNORE_INDEX, NUM_CLASSES_16
from cmcr_lite.data.augment import random_point_augmentation
from cmcr_lite.data.voxelize import voxelize
from cmcr_lite.runtime import atomic_path, resolve_device, save_checkpoint_atomic, torch_threads
from cmcr_lite.losses.lovasz import segmentation_loss
from cmcr_lite.metrics import confusion_matrix
from cmcr_lite.models.minkunet import MinkUNet, MinkUNetConfig, sparse_tensor_from_voxels

__all__ = [
    "DownstreamConfig", "resolve_device", "select_scenes_by_fraction", "keyframe_indices_for_fraction",
    "SegmentationScans", "collate_scans", "batch_to_sparse", "SegmentationModel", "PretrainedWeightsError",
    "load_pretrained_trunk", "make_optimizer", "make_scheduler", "train_segmentation", "ScanFeatures",
    "iter_features", "extract_features", "channel_moments", "point_predictions", "scan_confusion", "evaluate",
]

MODES = ("finetune", "linear_probe")
LOSSES = ("ce+lovasz", "ce")


# ------------------------------------------------------------------------------------------ config
@dataclass
class DownstreamConfig:
    """Every downstream setting. Defaults: the paper's nuScenes fine-tuning at 100% labels (§5).

    Use the presets: :meth:`finetune` (1% labels by default), :meth:`linear_probe`, :meth:`lite`.

    Attributes:
        mode: ``"finetune"`` (all parameters trained) or ``"linear_probe"`` (frozen trunk in eval mode).
        label_fraction: fraction of the training **scenes** whose labels are used, in (0, 1]; SLidR's
            rule, the k-th, 2k-th, ... scene in table order, k = ``round(1 / label_fraction)``
            (:func:`select_scenes_by_fraction`).
        epochs: training epochs; the cosine schedule reaches 0 after the last one.
        batch_size: scans per optimizer step.
        lr: SGD learning rate of the trunk (and of the head when ``lr_head`` is None).
        lr_head: SGD learning rate of the head; None = ``lr``.
        momentum, dampening, weight_decay: SGD settings (0.9, 0.1, 1e-4).
        voxel_size: metres; cylindrical: SLidR's (rho, azimuth, z) voxels instead of Cartesian.
        intensity_scale: voxel feature = intensity / intensity_scale (255: CMCR's nuScenes loader).
        num_classes: logits of the head (17 = 16 classes + ignore 0); ignore_index: the ignored label.
        loss: ``"ce+lovasz"`` (paper) or ``"ce"``.
        augment: rotation about z + x/y flips of the training scans (never at evaluation).
        cache_features: linear probe only: train the head on trunk features computed once, without
            augmentation (CPU fast path, see the module docstring).
        normalize_features: linear probe only, **not in the paper**: standardise each trunk channel
            with fixed statistics of the (un-augmented) training scans before the head. The classifier
            is still linear in the frozen features; this only preconditions SGD. Needed for a
            *random-init* trunk: in eval mode its BatchNorms hold their initial statistics and its
            features are ~1e-3 in size, so the head barely moves at lr 0.05 (see the module docstring).
        backbone: the MinkUNet configuration (its ``out_channels`` is ignored: the head is ours);
            BatchNorm momentum 0.02 downstream.
        seed: seeds ``torch.manual_seed`` (model initialisation) and the numpy generators of the data
            order and the augmentations (one per (seed, epoch, scan index)).
        device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: data-loading processes (0 = in the main process).
    """
    mode: str = "finetune"
    label_fraction: float = 1.0
    epochs: int = 50
    batch_size: int = 16
    lr: float = 0.02
    lr_head: Optional[float] = 2.0
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    voxel_size: float = 0.1
    cylindrical: bool = False
    intensity_scale: float = 255.0
    num_classes: int = NUM_CLASSES_16
    ignore_index: int = IGNORE_INDEX
    loss: str = "ce+lovasz"
    augment: bool = True
    cache_features: bool = False
    normalize_features: bool = False
    backbone: MinkUNetConfig = field(default_factory=lambda: MinkUNetConfig.full(bn_momentum=0.02))
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self):
        if isinstance(self.backbone, dict):
            self.backbone = MinkUNetConfig(**self.backbone)
        checks = {
            "mode": (self.mode in MODES, f"one of {MODES}"),
            "label_fraction": (isinstance(self.label_fraction, (int, float)) and 0 < self.label_fraction <= 1,
                               "in (0, 1]"),
            "epochs": (int(self.epochs) == self.epochs and self.epochs >= 1, "an integer >= 1"),
            "batch_size": (int(self.batch_size) == self.batch_size and self.batch_size >= 1, "an integer >= 1"),
            "lr": (self.lr > 0, "> 0"),
            "lr_head": (self.lr_head is None or self.lr_head > 0, "None or > 0"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "dampening": (0 <= self.dampening < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "voxel_size": (self.voxel_size > 0, "> 0 metres"),
            "intensity_scale": (self.intensity_scale > 0, "> 0"),
            "num_classes": (self.num_classes >= 2, ">= 2"),
            "ignore_index": (0 <= self.ignore_index < self.num_classes, f"in [0, num_classes={self.num_classes})"),
            "loss": (self.loss in LOSSES, f"one of {LOSSES}"),
            "cache_features": (not self.cache_features or self.mode == "linear_probe",
                               "False unless mode='linear_probe' (a fine-tuned trunk changes its features)"),
            "normalize_features": (not self.normalize_features or self.mode == "linear_probe",
                                   "False unless mode='linear_probe'"),
            "backbone": (isinstance(self.backbone, MinkUNetConfig), "a MinkUNetConfig"),
            "device": (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"),
                       "'auto', 'cpu', 'cuda' or 'cuda:N'"),
            "num_workers": (self.num_workers >= 0, ">= 0"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"DownstreamConfig: {name} must be {expected}, got {getattr(self, name)!r}")
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)

    @property
    def head_lr(self) -> float:
        """The learning rate actually used for the head (``lr_head``, or ``lr`` when it is None)."""
        return self.lr if self.lr_head is None else self.lr_head

    @classmethod
    def finetune(cls, label_fraction: float = 0.01, **overrides) -> "DownstreamConfig":
        """The paper's nuScenes fine-tuning: lr 0.02, head lr 2.0, batch 16, Cartesian 0.1 m voxels;
        100 epochs at 1% of the labels (``semseg_nuscenes.yaml``), 50 epochs above (5/10/25/100%)."""
        epochs = 100 if label_fraction <= 0.01 else 50
        return replace(cls(mode="finetune", label_fraction=label_fraction, epochs=epochs, lr=0.02, lr_head=2.0),
                       **overrides)

    @classmethod
    def full(cls, mode: str = "finetune", **overrides) -> "DownstreamConfig":
        """The paper's protocol for ``mode``: :meth:`finetune` (1% of the labels unless
        ``label_fraction`` is given) or :meth:`linear_probe` (100%)."""
        if mode == "finetune":
            return cls.finetune(**overrides)
        if mode == "linear_probe":
            return cls.linear_probe(**overrides)
        raise ValueError(f"DownstreamConfig.full: mode must be one of {MODES}, got {mode!r}")

    @classmethod
    def linear_probe(cls, **overrides) -> "DownstreamConfig":
        """The paper's linear probe (``semseg_nuscenes_lp.yaml``): 100% of the labels, 50 epochs,
        lr 0.05 with no separate head lr, frozen trunk in eval mode; Cartesian voxels (see module doc)."""
        return replace(cls(mode="linear_probe", label_fraction=1.0, epochs=50, lr=0.05, lr_head=None), **overrides)

    @classmethod
    def lite(cls, mode: str = "linear_probe", **overrides) -> "DownstreamConfig":
        """Small settings for the embedded dataset on a 2-core CPU: lite MinkUNet (BN momentum 0.1),
        batch 2, 100% labels.

        ``"linear_probe"``: the paper's optimiser, 20 epochs on cached, standardised features (seconds).
        ``"finetune"``: the paper's learning rates, 4 epochs with augmentation.
        """
        # BN momentum 0.1, not the paper's 0.02: a lite run makes tens of steps, after which running
        # statistics at 0.02 would still be mostly their initial values (0.98^20 = 0.67) and the
        # eval-mode network would not match the trained one. (Frozen in a linear probe anyway.)
        backbone = MinkUNetConfig.lite(bn_momentum=0.1)
        if mode == "linear_probe":
            base = cls.linear_probe(backbone=backbone, batch_size=2, epochs=20, cache_features=True,
                                    normalize_features=True)
        elif mode == "finetune":
            base = cls.finetune(1.0, backbone=backbone, batch_size=2, epochs=4)
        else:
            raise ValueError(f"DownstreamConfig.lite: mode must be one of {MODES}, got {mode!r}")
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        """JSON-compatible dict (``backbone`` as a dict); :meth:`from_dict` reverses it."""
        d = asdict(self)
        d["backbone"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["backbone"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DownstreamConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"DownstreamConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------------------------------ label fractions
def select_scenes_by_fraction(scene_names: Sequence[str], fraction: float) -> list:
    """The scenes whose labels a ``fraction`` of the training set uses, by SLidR's rule.

    SLidR's (and CMCR's) nuScenes loader walks the scene table in its order, counts the scenes of the
    split (1, 2, 3, ...) and keeps a scene when the count is a multiple of ``k = round(1 / fraction)``:
    the k-th, 2k-th, ... scene, never the first unless k = 1. 1% of the 700 nuScenes train scenes is
    k = 100: the 100th, 200th, ..., 700th scene, 7 in all; 5, 10, 25 and 100% are k = 20, 10, 4, 1. A
    fraction that is not ``1 / integer`` is rounded to the nearest such step. When the split has fewer
    than k scenes nothing is kept; the official loader then falls back to one fixed scene
    (scene-0392), we raise an error naming the smallest fraction that keeps a scene.

    Args:
        scene_names: the split's scene names **in scene-table order** (``nusc.scene``); duplicates are
            an error.
        fraction: in (0, 1].
    Returns:
        The kept names, in table order.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"select_scenes_by_fraction: fraction must be in (0, 1], got {fraction!r}")
    names = list(scene_names)
    if len(set(names)) != len(names):
        raise ValueError("select_scenes_by_fraction: duplicate scene names")
    step = max(1, int(round(1.0 / fraction)))
    kept = names[step - 1::step]
    if names and not kept:
        raise ValueError(f"label fraction {fraction:g} keeps no scene: every {step}-th of the {len(names)} training "
                         f"scenes (SLidR's rule); the smallest fraction that keeps one is 1/{len(names)} = "
                         f"{1 / len(names):.4g}")
    return kept


def keyframe_indices_for_fraction(keyframes, fraction: float) -> list:
    """Indices (into ``keyframes``) of the scans of the scenes :func:`select_scenes_by_fraction` keeps,
    the scenes taken in ``nusc.scene`` table order.

    ``keyframes`` is a :class:`~cmcr_lite.data.nuscenes_loader.NuScenesKeyframes` (it needs ``.nusc``
    and ``.sample_tokens``); with ``fraction == 1`` any sequence with ``load_scan`` is accepted.
    """
    if fraction == 1:
        return list(range(len(keyframes)))
    if not hasattr(keyframes, "nusc") or not hasattr(keyframes, "sample_tokens"):
        raise ValueError("keyframe_indices_for_fraction: a label fraction < 1 needs keyframes with .nusc and "
                         ".sample_tokens (NuScenesKeyframes) to find the scene of each scan")
    nusc = keyframes.nusc
    scene_of = [nusc.get("scene", nusc.get("sample", t)["scene_token"])["name"] for t in keyframes.sample_tokens]
    present = set(scene_of)
    table_order = [s["name"] for s in nusc.scene if s["name"] in present]
    keep = set(select_scenes_by_fraction(table_order, fraction))
    return [i for i, s in enumerate(scene_of) if s in keep]


# ------------------------------------------------------------------------------------------ data
class SegmentationScans(torch.utils.data.Dataset):
    """Labelled LiDAR scans, voxelised for segmentation (points and labels only, no images).

    Item ``i`` (keyframe ``indices[i]``) is a dict of numpy arrays:

    * ``coords``: (V, 3) int32 voxel coordinates (after augmentation if ``augment``);
    * ``feats``: (V, 1) float32 intensity / ``intensity_scale`` of each voxel's representative point;
    * ``labels``: (V,) int64 label of the representative point (0 = ignore);
    * ``voxel_of_point``: (N,) int64 voxel of every point (the inverse map, for per-point evaluation);
    * ``point_labels``: (N,) int64 label of every point;
    * ``index``: the keyframe index.

    Augmentation (training only): rotation about z in [0, 2 pi) and x/y flips with p = 0.5, drawn from
    ``numpy.random.default_rng([seed, epoch, keyframe index])``, so an epoch is reproducible; call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(self, keyframes, indices: Optional[Sequence[int]] = None, voxel_size: float = 0.1,
                 cylindrical: bool = False, augment: bool = False, seed: int = 0, intensity_scale: float = 255.0):
        self.keyframes = keyframes
        self.indices = list(range(len(keyframes))) if indices is None else [int(i) for i in indices]
        self.voxel_size, self.cylindrical, self.augment = voxel_size, cylindrical, augment
        self.seed, self.epoch, self.intensity_scale = seed, 0, intensity_scale

    @classmethod
    def from_config(cls, keyframes, config: DownstreamConfig, indices=None, train: bool = False):
        return cls(keyframes, indices, config.voxel_size, config.cylindrical, augment=train and config.augment,
                   seed=config.seed, intensity_scale=config.intensity_scale)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        points, labels = self.keyframes.load_scan(index)
        if labels is None:
            token = getattr(self.keyframes, "sample_tokens", [None] * (index + 1))[index]
            raise ValueError(f"SegmentationScans: keyframe {index} (sample {token}) has no lidarseg labels")
        xyz = points[:, :3]
        if self.augment:
            xyz = random_point_augmentation(xyz, np.random.default_rng([self.seed, self.epoch, index]))
        vox = voxelize(xyz, self.voxel_size, self.cylindrical)
        rep = vox.point_of_voxel
        return {
            "coords": vox.coords,
            "feats": (points[rep, 3:4] / self.intensity_scale).astype(np.float32),
            "labels": labels[rep].astype(np.int64),
            "voxel_of_point": vox.voxel_of_point,
            "point_labels": labels.astype(np.int64),
            "index": index,
        }


def collate_scans(items: list) -> dict:
    """Batch :class:`SegmentationScans` items.

    Returns a dict:
        coords: (sum V, 4) int32, batch index first; feats: (sum V, 1) float32; labels: (sum V,) int64;
        offsets: (B + 1,) int64, scan b owns voxel rows ``offsets[b]:offsets[b + 1]``;
        voxel_of_point: list of B (N_b,) int64 tensors (indices *within* scan b's voxels);
        point_labels: list of B (N_b,) int64 tensors; indices: list of B keyframe indices.
    """
    coords, sizes = [], [0]
    for b, it in enumerate(items):
        c = torch.from_numpy(np.ascontiguousarray(it["coords"], dtype=np.int32))
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        sizes.append(len(c))
    return {
        "coords": torch.cat(coords),
        "feats": torch.cat([torch.from_numpy(it["feats"]) for it in items]),
        "labels": torch.cat([torch.from_numpy(it["labels"]) for it in items]),
        "offsets": torch.tensor(np.cumsum(sizes), dtype=torch.int64),
        "voxel_of_point": [torch.from_numpy(it["voxel_of_point"]) for it in items],
        "point_labels": [torch.from_numpy(it["point_labels"]) for it in items],
        "indices": [it["index"] for it in items],
    }


def batch_to_sparse(batch: dict, device="cpu"):
    """The batch's voxels as a MinkowskiEngine SparseTensor (rows in ``batch['coords']`` order)."""
    return sparse_tensor_from_voxels(batch["coords"].to(device), batch["feats"].to(device))


# ------------------------------------------------------------------------------------------ model
class SegmentationModel(nn.Module):
    """MinkUNet trunk + linear 1x1 head (``trunk_dim -> num_classes``; the official code's ``final``).

    A 1x1 sparse convolution at stride 1 is a per-voxel linear map, so the head is an ``nn.Linear``
    on the trunk's feature rows; it can then also be trained on cached features.

    Forward:
        x: ``ME.SparseTensor``, V voxels, coordinates (V, 4) int32 batch first, features (V, 1).
        returns: (V, num_classes) float32 logits, one row per input voxel, in the input's row order.
    """

    def __init__(self, backbone: Optional[MinkUNetConfig] = None, num_classes: int = NUM_CLASSES_16):
        super().__init__()
        self.trunk = MinkUNet(replace(backbone or MinkUNetConfig(), out_channels=None))
        self.head = nn.Linear(self.trunk.trunk_dim, num_classes)
        self.num_classes = num_classes
        # Fixed (never trained) per-channel standardisation before the head; identity unless
        # ``set_feature_normalization`` is called (``DownstreamConfig.normalize_features``).
        self.register_buffer("feature_mean", torch.zeros(self.trunk.trunk_dim))
        self.register_buffer("feature_scale", torch.ones(self.trunk.trunk_dim))

    def features(self, x) -> torch.Tensor:
        """(V, trunk_dim) trunk features."""
        return self.trunk(x).F

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(V, num_classes) logits of (V, trunk_dim) trunk features: ``head((f - mean) / scale)``."""
        return self.head((feats - self.feature_mean) / self.feature_scale)

    def forward(self, x) -> torch.Tensor:
        return self.logits_from_features(self.features(x))

    @torch.no_grad()
    def set_feature_normalization(self, mean: torch.Tensor, std: torch.Tensor, rel_floor: float = 1e-3) -> None:
        """Standardise trunk features before the head with fixed per-channel ``mean`` and ``std``
        ((trunk_dim,) each); stds below ``rel_floor * max(std)`` are floored (dead channels stay ~0).
        The model stays a linear classifier of the frozen features (an affine map folded into the head)."""
        std = std.to(self.feature_scale)
        self.feature_mean.copy_(mean.to(self.feature_mean))
        self.feature_scale.copy_(std.clamp_min(max(float(std.max()) * rel_floor, 1e-12)))

    def freeze_trunk(self) -> None:
        """Linear probing: no trunk parameter is trained. Call :meth:`train` afterwards as usual;
        it keeps the trunk in eval mode (BatchNorm statistics frozen) while frozen."""
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self._trunk_frozen = True
        self.trunk.eval()

    @property
    def trunk_frozen(self) -> bool:
        return getattr(self, "_trunk_frozen", False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trunk_frozen:
            self.trunk.eval()
        return self


class PretrainedWeightsError(ValueError):
    """Pretrained weights do not fit the trunk; the message names the file and the keys."""


_PREFIXES = ("module.", "model_points.", "model3d.", "backbone.", "trunk.")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _read_checkpoint(path_or_state):
    """(state_dict, config or None, source description) from a path or an in-memory dict."""
    if isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — report any unpickling problem with the file name
            raise PretrainedWeightsError(f"cannot read pretrained checkpoint {path}: {type(e).__name__}: {e}") from None
        source = str(path)
    else:
        obj, source = path_or_state, "the given state dict"
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{source}: expected a dict (checkpoint or state_dict), got {type(obj).__name__}")
    config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    for key in ("model3d", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key], config, f"{source} ['{key}']"
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedWeightsError(f"{source}: no weights found; expected key 'model3d' (a MinkUNet trunk "
                                     f"state_dict) or a plain state_dict, got keys {sorted(obj)[:10]}")
    return tensors, config, source


def _find_key(d, name):
    """First value of ``name`` in a nested dict (depth-first), or None."""
    if not isinstance(d, dict):
        return None
    if name in d:
        return d[name]
    for v in d.values():
        found = _find_key(v, name)
        if found is not None:
            return found
    return None


def load_pretrained_trunk(model: SegmentationModel, path_or_state, config: Optional[DownstreamConfig] = None) -> dict:
    """Copy pretrained trunk weights into ``model.trunk`` by matching names and shapes.

    Accepts a checkpoint file or dict with key ``"model3d"`` (the pretraining trunk's state_dict,
    as written by :mod:`cmcr_lite.pretrain`), ``"state_dict"`` or ``"model"``, or a plain MinkUNet
    state_dict. Prefixes ``module.``, ``model_points.``, ``model3d.``, ``backbone.``, ``trunk.`` are
    stripped. Keys the trunk does not have (pretraining heads, codebook, image branch) are ignored.

    If ``config`` is given and the checkpoint's config records ``voxel_size`` / ``cylindrical``, they
    must equal the downstream ones (the official code asserts the same).

    Returns:
        ``{"source", "loaded": [trunk keys], "ignored": [checkpoint keys not used]}``.
    Raises:
        PretrainedWeightsError naming the file and every missing or mismatched trunk key.
    """
    state, ckpt_config, source = _read_checkpoint(path_or_state)
    if config is not None and ckpt_config is not None:
        for name in ("voxel_size", "cylindrical"):
            theirs = _find_key(ckpt_config, name)
            ours = getattr(config, name)
            if theirs is not None and theirs != ours:
                raise PretrainedWeightsError(f"{source}: pretrained with {name}={theirs!r} but the downstream "
                                             f"config has {name}={ours!r}; they must match")
    source_by_name = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            source_by_name.setdefault(_strip_prefixes(k), (k, v))
    target = model.trunk.state_dict()
    missing, mismatched, new_state, used = [], [], {}, set()
    for name, ref in target.items():
        if name not in source_by_name:
            if name.endswith("num_batches_tracked"):
                new_state[name] = ref
            else:
                missing.append(name)
            continue
        orig, tensor = source_by_name[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs trunk {tuple(ref.shape)}")
            continue
        new_state[name] = tensor.to(dtype=ref.dtype)
        used.add(orig)
    if missing or mismatched:
        lines = [f"pretrained weights in {source} do not fit the {type(model.trunk).__name__} trunk "
                 f"({len(target)} tensors):"]
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatches: " + "; ".join(mismatched[:8])
                         + (" ..." if len(mismatched) > 8 else ""))
        if missing:
            lines.append(f"  {len(missing)} missing keys: " + ", ".join(missing[:8])
                         + (" ..." if len(missing) > 8 else ""))
        lines.append("  (check that the downstream backbone config equals the pretraining one)")
        raise PretrainedWeightsError("\n".join(lines))
    model.trunk.load_state_dict(new_state, strict=True)
    return {"source": source, "loaded": sorted(new_state), "ignored": sorted(set(state) - used)}


# ------------------------------------------------------------------------------------------ optimisation
def make_optimizer(model: SegmentationModel, config: DownstreamConfig) -> torch.optim.SGD:
    """SGD (momentum, dampening, weight decay of ``config``) with two parameter groups: the trunk at
    ``lr`` and the head at ``lr_head`` (``lr`` if None). A linear probe has only the head group."""
    head = list(model.head.parameters())
    groups = []
    if config.mode == "finetune":
        groups.append({"params": list(model.trunk.parameters()), "lr": config.lr, "name": "trunk"})
    groups.append({"params": head, "lr": config.head_lr, "name": "head"})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, dampening=config.dampening,
                           weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: DownstreamConfig, start_epoch: int = 0):
    """Cosine annealing of every group's lr to 0 over ``config.epochs`` (call ``step()`` once per epoch):
    epoch e trains at ``lr * (1 + cos(pi * e / epochs)) / 2``, in closed form, so a resumed run
    (``start_epoch`` > 0, optimizer state loaded) continues on exactly the same learning rates."""
    epochs = config.epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1.0 + math.cos(math.pi * e / epochs)),
                                             last_epoch=start_epoch - 1)


def _loss(config: DownstreamConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if config.loss == "ce":
        keep = labels != config.ignore_index
        if not keep.any():
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits[keep], labels[keep])
    return segmentation_loss(logits, labels, ignore_index=config.ignore_index)


def _loader(dataset, config: DownstreamConfig, order):
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=list(order),
                                       collate_fn=collate_scans, num_workers=config.num_workers)


def _new_history() -> dict:
    return {"epoch": [], "loss": [], "lr": [], "lr_head": [], "seconds": [], "step_loss": []}


def train_segmentation(config: DownstreamConfig, train_keyframes, pretrained=None, progress: bool = True,
                       checkpoint_path=None, resume: bool = False, log_dir=None):
    """Train a :class:`SegmentationModel` on ``train_keyframes`` (fine-tuning or linear probing).

    Args:
        config: a :class:`DownstreamConfig` (``label_fraction`` selects scenes of ``train_keyframes``).
        train_keyframes: a ``NuScenesKeyframes`` (or any sequence with ``load_scan(i)``).
        pretrained: None (random trunk), a checkpoint path, or a state dict (:func:`load_pretrained_trunk`).
        progress: show tqdm bars.
        checkpoint_path: if given, the model, optimizer and history are saved there
            atomically after every epoch (:func:`load_segmentation_checkpoint` reads it).
        resume: continue from ``checkpoint_path`` when it exists; the result equals an uninterrupted
            run (every random draw is seeded by (seed, epoch, scan)). The config must match.
        log_dir: if given, TensorBoard scalars (every step's loss, epoch loss, both learning rates,
            step and epoch seconds) are written there.

    Reproducibility: the same config (seed) gives the same run: bit-identical on one CPU thread; with
    several threads, parallel float reductions (MinkowskiEngine, PyTorch) can differ in the last bits.

    Returns:
        ``(model, history)``; the model is in eval mode on the training device; ``history`` holds per
        epoch ``epoch``, ``loss`` (mean over steps), ``lr`` / ``lr_head`` (used during the epoch),
        ``seconds``, plus ``step_loss`` (every step) and ``train_indices`` (the keyframes used).
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = SegmentationModel(config.backbone, config.num_classes)
    if pretrained is not None:
        load_pretrained_trunk(model, pretrained, config)
    if config.mode == "linear_probe":
        model.freeze_trunk()
    model.to(device)
    indices = keyframe_indices_for_fraction(train_keyframes, config.label_fraction)
    optimizer = make_optimizer(model, config)
    history = _new_history()
    history["train_indices"] = indices
    start_epoch, resumed = 0, None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        resumed = load_segmentation_checkpoint(checkpoint_path)
        ignored = {"epochs", "device", "num_workers"}
        differs = [f.name for f in fields(DownstreamConfig) if f.name not in ignored
                   and getattr(resumed["config"], f.name) != getattr(config, f.name)]
        if differs:
            raise ValueError(f"cannot resume {checkpoint_path}: config fields differ from the checkpoint: {differs}")
        optimizer.load_state_dict(resumed["optimizer"])
        history, start_epoch = resumed["history"], resumed["epoch"] + 1
    scheduler = make_scheduler(optimizer, config, start_epoch)

    cached = None
    if config.cache_features:
        cached = extract_features(model, train_keyframes, config, indices=indices, progress=progress)
    if config.normalize_features:
        feats = (c.voxel_features for c in cached) if cached is not None else \
            (c.voxel_features for c in iter_features(model, train_keyframes, config, indices, progress))
        model.set_feature_normalization(*channel_moments(feats))

    if resumed is not None:  # after the feature statistics, which the checkpoint's buffers then restore
        model.load_state_dict(resumed["model"])
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir))
    clock = [time.perf_counter()]

    def log_step(loss: float, steps_this_epoch: int):
        """TensorBoard: the step's loss and its seconds (since the previous step or the epoch start)."""
        if writer is not None:
            now = time.perf_counter()
            step = len(history["step_loss"]) + steps_this_epoch - 1
            writer.add_scalar("step/loss", loss, step)
            writer.add_scalar("step/seconds", now - clock[0], step)
            clock[0] = now

    dataset = SegmentationScans.from_config(train_keyframes, config, indices, train=True)
    bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.mode}", disable=not progress)
    for epoch in bar:
        t0 = clock[0] = time.perf_counter()
        lrs = [g["lr"] for g in optimizer.param_groups]
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(indices))
        losses = []
        if cached is not None:
            batches = (order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size))
            # many small ops (a 32..96 -> 17 linear layer, a per-class sort for Lovász): on a busy
            # 2-core machine one thread was measured 4x faster than two
            with torch_threads(1 if device.type == "cpu" else None):
                for chosen in batches:
                    feats = torch.cat([cached[i].voxel_features for i in chosen]).to(device)
                    labels = torch.cat([cached[i].voxel_labels for i in chosen]).to(device)
                    loss = _loss(config, model.logits_from_features(feats), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.detach().item())
                    log_step(losses[-1], len(losses))
        else:
            dataset.set_epoch(epoch)
            for batch in _loader(dataset, config, order):
                x = batch_to_sparse(batch, device)
                labels = batch["labels"].to(device)
                if model.trunk_frozen:
                    with torch.no_grad():
                        feats = model.features(x)
                    logits = model.logits_from_features(feats)
                else:
                    logits = model(x)
                loss = _loss(config, logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach().item())
                log_step(losses[-1], len(losses))
        scheduler.step()
        history["epoch"].append(epoch)
        history["loss"].append(float(np.mean(losses)))
        history["lr"].append(lrs[0])
        history["lr_head"].append(lrs[-1])
        history["seconds"].append(time.perf_counter() - t0)
        history["step_loss"].extend(losses)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
        if writer is not None:
            for name in ("loss", "lr", "lr_head", "seconds"):
                writer.add_scalar(f"epoch/{name}", history[name][-1], epoch)
        if checkpoint_path is not None:
            save_checkpoint_atomic({"epoch": epoch, "config": config.to_dict(), "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "history": history}, Path(checkpoint_path))
    if writer is not None:
        writer.close()
    model.eval()
    return model, history


def load_segmentation_checkpoint(path) -> dict:
    """A downstream checkpoint written by :func:`train_segmentation`: ``{"epoch", "config"
    (DownstreamConfig), "model", "optimizer", "history"}``. A resume rebuilds the scheduler from the
    epoch: the cosine schedule is closed-form (:func:`make_scheduler`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"downstream checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not {"config", "model", "epoch"} <= set(state):
        raise ValueError(f"{path} is not a downstream checkpoint (keys {sorted(state)[:8]}); "
                         f"a pretraining checkpoint goes to --pretrained")
    state["config"] = DownstreamConfig.from_dict(state["config"])
    return state


# ------------------------------------------------------------------------------------------ features
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


# ------------------------------------------------------------------------------------------ evaluation
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
def evaluate(model: SegmentationModel, keyframes, config: Optional[DownstreamConfig] = None,
             indices: Optional[Sequence[int]] = None, progress: bool = True) -> np.ndarray:
    """Confusion matrix over every point of ``keyframes`` (no augmentation, model in eval mode).

    Voxel logits are un-voxelised through each scan's inverse map (``voxel_of_point``), the ignore
    class is never predicted and points labelled ``ignore_index`` are not counted.

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
        conf += scan_confusion(logits, batch["voxel_of_point"][0], batch["point_labels"][0], model.num_classes,
                               config.ignore_index)
    model.train(was_training)
    return conf


# ------------------------------------------------------------------------------------------ CLI
def _config_from_args(args) -> DownstreamConfig:
    """The preset (``--config lite|full`` for ``--mode``), then ``--label-fraction``, ``--epochs``,
    ``--seed`` and ``--set field=JSON`` overrides (dotted names reach into ``backbone``)."""
    import json

    overrides = {k: v for k, v in (("label_fraction", args.label_fraction), ("epochs", args.epochs),
                                   ("seed", args.seed)) if v is not None}
    preset = DownstreamConfig.lite if args.config == "lite" else DownstreamConfig.full
    base = preset(args.mode, **overrides).to_dict()
    for item in args.set or []:
        key, sep, text = item.partition("=")
        target, (*parents, leaf) = base, key.split(".")
        for p in parents:
            target = target.get(p) if isinstance(target.get(p), dict) else None
            if target is None:
                raise SystemExit(f"error: --set {key}: no such config field")
        if not sep or leaf not in target:
            raise SystemExit(f"error: --set {item!r}: no such config field (expected FIELD=VALUE with a "
                             f"DownstreamConfig field)")
        try:
            target[leaf] = json.loads(text)
        except json.JSONDecodeError:
            target[leaf] = text
    try:
        return DownstreamConfig.from_dict(base)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")


def _class_names(config: DownstreamConfig) -> list:
    from cmcr_lite.classes import CLASS_NAMES_16

    return list(CLASS_NAMES_16) if config.num_classes == len(CLASS_NAMES_16) else [str(k) for k in range(config.num_classes)]


def _results(conf: np.ndarray, config: DownstreamConfig, train_kf, val_kf, train_indices, pretrained) -> dict:
    """The JSON record of an evaluation: mIoU, per-class IoU by name, the confusion matrix, the setup."""
    from cmcr_lite.metrics import iou_report, mean_iou

    rows = iou_report(conf, _class_names(config), ignore_index=config.ignore_index)
    nusc = getattr(train_kf, "nusc", None)
    scenes = []
    if nusc is not None:
        for i in train_indices:
            name = nusc.get("scene", nusc.get("sample", train_kf.sample_tokens[i])["scene_token"])["name"]
            if name not in scenes:
                scenes.append(name)
    return {"miou": mean_iou(conf, ignore_index=config.ignore_index),
            "per_class_iou": {r["name"]: (None if math.isnan(r["iou"]) else r["iou"]) for r in rows},
            "support": {r["name"]: r["support"] for r in rows}, "confusion": conf.tolist(),
            "config": config.to_dict(), "pretrained": None if pretrained is None else str(pretrained),
            "dataset": {"dataroot": str(train_kf.dataroot), "version": train_kf.version,
                        "train_split": train_kf.split, "val_split": val_kf.split},
            "train_scenes": scenes, "train_scans": len(train_indices), "val_scans": len(val_kf)}


def main(argv=None) -> dict:
    import argparse
    import json

    from cmcr_lite.data.nuscenes_loader import DatasetError, NuScenesKeyframes
    from cmcr_lite.metrics import format_iou_report, iou_report
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    p = argparse.ArgumentParser(prog="python -m cmcr_lite.downstream",
                                description="Semantic segmentation from a pretrained trunk (SLidR's protocol): "
                                            "fine-tune or linear-probe, evaluate per point on val, write results.json.")
    p.add_argument("--pretrained", help="pretraining checkpoint (runs/<name>/checkpoint.pt); omit for random init")
    p.add_argument("--mode", choices=MODES, default="finetune")
    p.add_argument("--config", choices=("lite", "full"), default="lite",
                   help="lite: the embedded dataset on a CPU; full: the paper's protocol")
    p.add_argument("--label-fraction", type=float, help="fraction of the training scenes with labels "
                                                        "(SLidR's every-k-th-scene rule; full finetune default 0.01)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="override DownstreamConfig fields (JSON values), "
                                                                   "e.g. batch_size=8 backbone.planes=[32,...]")
    p.add_argument("--dataroot", help="nuScenes root (default: the embedded synthetic dataset)")
    p.add_argument("--version", help="dataset version (default v1.0-trainval, or the embedded set's)")
    p.add_argument("--train-split", help="split to train on (default train; --evaluate: the training run's)")
    p.add_argument("--val-split", help="split to evaluate on (default val; --evaluate: the training run's)")
    p.add_argument("--output-dir", required=True, help="checkpoint.pt, config.json, results.json, tensorboard/")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    p.add_argument("--evaluate", action="store_true", help="no training: evaluate the saved model")
    p.add_argument("--model", help="with --evaluate: the downstream checkpoint (default <output-dir>/checkpoint.pt)")
    args = p.parse_args(argv)

    out = Path(args.output_dir)
    ckpt_path = out / "checkpoint.pt"
    if args.pretrained and not Path(args.pretrained).is_file():
        raise SystemExit(f"error: --pretrained {args.pretrained}: no such file")
    if args.evaluate:
        model_path = Path(args.model) if args.model else ckpt_path
        try:
            state = load_segmentation_checkpoint(model_path)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: --evaluate: {e}")
        config = state["config"]
    else:
        config = _config_from_args(args)
    # the data: the options, else (--evaluate) where the training run read it, else the embedded set
    run = {}
    if args.evaluate and (out / "config.json").is_file():
        run = json.loads((out / "config.json").read_text())
    dataroot = args.dataroot or run.get("dataroot")
    root = Path(dataroot) if dataroot else ensure_embedded_dataset()
    version = args.version or run.get("version") or ("v1.0-trainval" if dataroot else EMBEDDED_VERSION)
    train_split = args.train_split or run.get("train_split") or "train"
    val_split = args.val_split or run.get("val_split") or "val"
    try:
        train_kf = NuScenesKeyframes(root, version, split=train_split)
        val_kf = NuScenesKeyframes(root, version, split=val_split, nusc=train_kf.nusc)
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.evaluate:
            model = SegmentationModel(config.backbone, config.num_classes)
            model.load_state_dict(state["model"])
            model.to(resolve_device(config.device))
            if config.mode == "linear_probe":
                model.freeze_trunk()
            train_indices = state["history"].get("train_indices", [])
            pretrained = run.get("pretrained")
        else:
            run = {"downstream": config.to_dict(), "pretrained": args.pretrained,
                   "dataroot": None if dataroot is None else str(root),  # None: the embedded dataset
                   "version": version, "train_split": train_split, "val_split": val_split}
            (out / "config.json").write_text(json.dumps(run, indent=1))
            model, history = train_segmentation(config, train_kf, pretrained=args.pretrained,
                                                checkpoint_path=ckpt_path, resume=args.resume,
                                                log_dir=out / "tensorboard")
            train_indices, pretrained = history["train_indices"], args.pretrained
    except (PretrainedWeightsError, DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    conf = evaluate(model, val_kf, config)
    results = _results(conf, config, train_kf, val_kf, train_indices, pretrained)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    if not args.evaluate:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(out / "tensorboard")) as writer:
            writer.add_scalar("val/miou", results["miou"], config.epochs)
    print(format_iou_report(iou_report(conf, _class_names(config), ignore_index=config.ignore_index)))
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()

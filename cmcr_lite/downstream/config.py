"""``DownstreamConfig``: every downstream setting, the paper's values as defaults, ``full()`` / ``lite()``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

from cmcr_lite.classes import IGNORE_INDEX, NUM_CLASSES_16
from cmcr_lite.metrics import MIOU_RULES
from cmcr_lite.models.minkunet import MinkUNetConfig

MODES = ("finetune", "linear_probe")
LOSSES = ("ce+lovasz", "ce")


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
        miou_rule: which mIoU (and per-class IoU) the results lead with, one of
            ``cmcr_lite.metrics.MIOU_RULES``: ``"nuscenes"`` (the devkit's rule, the number its
            ``LidarSegEval`` prints: the default, and the paper-scale presets'), ``"semantickitti"``
            (the official SemanticKITTI evaluator's; the command line sets it for ``--dataset
            semantickitti --config full``) or ``"present"`` (classes present in the ground truth:
            :meth:`lite`, for small sets that lack classes). Training does not read it.
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
    miou_rule: str = "nuscenes"

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
            "miou_rule": (self.miou_rule in MIOU_RULES, f"one of {MIOU_RULES}"),
            # the data order and augmentations draw from numpy generators seeded by (seed, epoch, scan)
            "seed": (self.seed >= 0, ">= 0"),
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
        batch 2, 100% labels, mIoU over the classes present in the ground truth (a small val set
        lacks some).

        ``"linear_probe"``: the paper's optimiser, 20 epochs on cached, standardised features (seconds).
        ``"finetune"``: the paper's learning rates, 4 epochs with augmentation.
        """
        # BN momentum 0.1, not the paper's 0.02: a lite run makes tens of steps, after which running
        # statistics at 0.02 would still be mostly their initial values (0.98^20 = 0.67) and the
        # eval-mode network would not match the trained one. (Frozen in a linear probe anyway.)
        backbone = MinkUNetConfig.lite(bn_momentum=0.1)
        if mode == "linear_probe":
            base = cls.linear_probe(backbone=backbone, batch_size=2, epochs=20, cache_features=True,
                                    normalize_features=True, miou_rule="present")
        elif mode == "finetune":
            base = cls.finetune(1.0, backbone=backbone, batch_size=2, epochs=4, miou_rule="present")
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
        # a record written before miou_rule existed was scored over the classes present
        return cls(**{"miou_rule": "present", **d})

"""Panoptic segmentation and 3D detection on the (pretrained) MinkUNet trunk, scored by the devkit.

One fine-tuning trains the trunk and three heads together (:class:`InstanceModel`):

* the **semantic head** of segmentation (a linear layer, 17 logits; cross-entropy + Lovász);
* the **offset head**: a linear layer, (3,) metres from each voxel to the centre of its instance
  (L1 on thing voxels; :mod:`cmcr_lite.downstream.panoptic`);
* the **BEV head**: CenterPoint-style heat maps and boxes on the bird's-eye view of the trunk's
  features (focal loss + 0.25 x L1; :mod:`cmcr_lite.downstream.detection`).

The objective is the sum of the named terms: ``semantic + offset_weight * offset + heatmap +
box_weight * box``. The trunk and the semantic head train as in segmentation (SGD, ``lr`` and
``lr_head`` of :class:`DownstreamConfig`); the offset and BEV heads, new to these tasks, train with
CenterPoint's optimizer (AdamW, lr 1e-3, weight decay 0.01). Both follow the same cosine schedule
over the epochs. (Checked on a two-scan overfit from the CMCR trunk, before any comparison: after 100
steps SGD at 0.02 found 35 % of the boxes within 1 m, AdamW 87 %.) The paper fine-tunes detection
separately, in OpenPCDet (see ``export_openpcdet``); one joint fine-tune here keeps the CPU cost of
comparing trunks to one run per trunk, fraction and seed.

    cfg = InstanceConfig.lite()
    model, history = train_instances(cfg, NuScenesKeyframes(root, version, "train"), pretrained="trunk.pt")
    results = evaluate_instances(model, NuScenesKeyframes(root, version, "val"), cfg, "outputs/inst")
    results["panoptic"]["all"]["PQ_present"], results["detection"]["mean_ap_present"]

From the command line (``--config full``: the paper's fine-tuning schedule on the full MinkUNet;
``lite``: :meth:`InstanceConfig.lite`)::

    python -m cmcr_lite.downstream.instances --pretrained runs/cmcr/checkpoint.pt --config full \\
        --dataroot /data/sets/nuscenes --version v1.0-trainval --label-fraction 0.01 --output-dir runs/cmcr_inst1
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from cmcr_lite.data.voxelize import voxelize
from cmcr_lite.downstream import detection, panoptic
from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.downstream.model import SegmentationModel, load_pretrained_trunk
from cmcr_lite.downstream.objects import DETECTION_CLASSES, load_objects
from cmcr_lite.downstream.train import make_scheduler
from cmcr_lite.losses.lovasz import segmentation_loss
from cmcr_lite.models.minkunet import MinkUNetConfig
from cmcr_lite.runtime import CommandLineParser, InputError, reports_input_errors


@dataclass
class InstanceConfig:
    """The joint fine-tuning's settings: ``downstream`` (trunk, optimiser, schedule, label fraction,
    seed, device) and the instance heads'.

    Attributes:
        downstream: :class:`DownstreamConfig` in ``finetune`` mode.
        bev_half_range, bev_cell: the BEV grid, metres (CenterPoint's nuScenes range, 51.2 m).
        bev_channels: channels of the BEV head's convolutions.
        offset_weight, box_weight: weights of the offset and box terms (the heat map's and the semantic
            term's are 1).
        instance_heads_lr, instance_heads_weight_decay: AdamW of the offset and BEV heads (CenterPoint's).
        cluster_radius: metres; moved thing points closer than this join one instance.
        max_boxes, score_threshold: decoding of the heat maps. The threshold is below CenterPoint's 0.1
            (which saves time): boxes added after all others in the ranking cannot lower the devkit's AP
            (its precision is read at fixed recalls), and a short CPU fine-tune scores its peaks low.
        min_inst_points: the devkit's PQ ignores segments smaller than this (its default, 15).
    """
    downstream: DownstreamConfig = field(default_factory=lambda: DownstreamConfig.finetune(1.0))
    bev_half_range: float = 51.2
    bev_cell: float = 0.5
    bev_channels: int = 64
    offset_weight: float = 1.0
    box_weight: float = 0.25
    instance_heads_lr: float = 1e-3
    instance_heads_weight_decay: float = 0.01
    cluster_radius: float = 0.5
    max_boxes: int = 100
    score_threshold: float = 0.02
    min_inst_points: int = panoptic.MIN_INST_POINTS

    @classmethod
    def full(cls, label_fraction: float = 0.01, **overrides) -> "InstanceConfig":
        """The paper's fine-tuning schedule (``DownstreamConfig.finetune``) on the full MinkUNet."""
        return cls(downstream=DownstreamConfig.finetune(label_fraction), **overrides)

    @classmethod
    def lite(cls, label_fraction: float = 1.0, backbone: Optional[MinkUNetConfig] = None, **downstream) -> "InstanceConfig":
        """``DownstreamConfig.lite("finetune")`` (lite MinkUNet, batch 2, 4 epochs) for a CPU."""
        ds = DownstreamConfig.lite("finetune", label_fraction=label_fraction, **downstream)
        if backbone is not None:
            ds = replace(ds, backbone=backbone)
        return cls(downstream=ds)

    @property
    def grid(self) -> detection.BEVGrid:
        return detection.BEVGrid(self.bev_half_range, self.bev_cell)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "InstanceConfig":
        d = dict(d)
        return cls(downstream=DownstreamConfig.from_dict(d.pop("downstream")), **d)


class InstanceModel(SegmentationModel):
    """MinkUNet trunk + semantic head (``head``, as segmentation) + ``offset`` head + ``bev`` head.

    Forward: ``x`` an ``ME.SparseTensor`` (V voxels, batch-first coordinates), ``batch_size`` B;
    returns semantic logits (V, 17), offsets (V, 3) metres, heat-map logits (B, 10, G, G) and box
    numbers (B, 8, G, G)."""

    def __init__(self, backbone: Optional[MinkUNetConfig] = None, voxel_size: float = 0.1,
                 grid: Optional[detection.BEVGrid] = None, bev_channels: int = 64):
        super().__init__(backbone)
        self.voxel_size, self.grid = voxel_size, grid or detection.BEVGrid()
        self.offset = nn.Linear(self.trunk.trunk_dim, 3)
        self.bev = detection.BEVHead(self.trunk.trunk_dim, bev_channels, len(DETECTION_CLASSES))

    def forward(self, x, batch_size: int = 1):
        feats = self.features(x)
        bev = detection.bev_pool(feats, x.C, self.voxel_size, self.grid, batch_size)
        heat, box = self.bev(bev)
        return self.logits_from_features(feats), self.offset(feats), heat, box


def _augment(xyz: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """The segmentation augmentation (rotation about z in [0, 2 pi), x and y flips with p = 0.5),
    applied to the points (N, 3) and the boxes (K, 7) alike."""
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)
    xyz, boxes = xyz @ R.T, boxes.copy()
    boxes[:, :3] = boxes[:, :3] @ R.T
    boxes[:, 6] += theta
    if rng.random() < 0.5:
        xyz[:, 0], boxes[:, 0], boxes[:, 6] = -xyz[:, 0], -boxes[:, 0], math.pi - boxes[:, 6]
    if rng.random() < 0.5:
        xyz[:, 1], boxes[:, 1], boxes[:, 6] = -xyz[:, 1], -boxes[:, 1], -boxes[:, 6]
    return xyz, boxes


class InstanceScans(torch.utils.data.Dataset):
    """Scans with their instance targets: as :class:`SegmentationScans` plus ``offsets`` (V, 3) float32
    (instance centre - voxel's point; 0 off things), ``thing`` (V,) bool, ``heatmap`` (10, G, G),
    ``box_codes`` (K, 8), ``box_cells`` (K, 2)."""

    def __init__(self, keyframes, config: InstanceConfig, indices=None, train: bool = False):
        self.keyframes, self.config = keyframes, config
        self.indices = list(range(len(keyframes))) if indices is None else [int(i) for i in indices]
        self.augment, self.epoch = train and config.downstream.augment, 0

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict:
        ds, index = self.config.downstream, self.indices[i]
        points, labels = self.keyframes.load_scan(index)
        objects = load_objects(self.keyframes, index)
        xyz, boxes = points[:, :3].astype(np.float32), objects.boxes
        if self.augment:
            xyz, boxes = _augment(xyz, boxes, np.random.default_rng([ds.seed, self.epoch, index]))
        vox = voxelize(xyz, ds.voxel_size, ds.cylindrical)
        rep = vox.point_of_voxel
        offsets = panoptic.instance_centres(xyz, objects.instance) - xyz
        heat, codes, cells = detection.detection_targets(boxes, objects.box_classes, self.config.grid)
        return {"coords": vox.coords, "feats": (points[rep, 3:4] / ds.intensity_scale).astype(np.float32),
                "labels": labels[rep].astype(np.int64), "offsets": offsets[rep], "thing": objects.instance[rep] > 0,
                "heatmap": heat, "box_codes": codes, "box_cells": cells, "index": index}


def collate_instances(items: list) -> dict:
    """Batch :class:`InstanceScans` items: voxel rows concatenated (coords batch-first), heat maps
    stacked (B, 10, G, G), box targets concatenated with their scan index (K, 3: b, i, j)."""
    coords = [np.concatenate([np.full((len(it["coords"]), 1), b), it["coords"]], 1) for b, it in enumerate(items)]
    cells = [np.concatenate([np.full((len(it["box_cells"]), 1), b), it["box_cells"]], 1) for b, it in enumerate(items)]
    cat = lambda k: torch.from_numpy(np.concatenate([it[k] for it in items]))  # noqa: E731
    return {"coords": torch.from_numpy(np.concatenate(coords).astype(np.int32)), "feats": cat("feats"),
            "labels": cat("labels"), "offsets": cat("offsets"), "thing": cat("thing"),
            "heatmap": torch.from_numpy(np.stack([it["heatmap"] for it in items])),
            "box_codes": cat("box_codes"), "box_cells": torch.from_numpy(np.concatenate(cells).astype(np.int64)),
            "indices": [it["index"] for it in items]}


def instance_loss(config: InstanceConfig, outputs, batch: dict) -> dict:
    """The named terms of the objective and their weighted ``total`` (scalars)."""
    logits, offsets, heat, box = outputs
    thing = batch["thing"]
    terms = {"semantic": segmentation_loss(logits, batch["labels"], ignore_index=config.downstream.ignore_index),
             "offset": (offsets[thing] - batch["offsets"][thing]).abs().sum(1).mean() if thing.any() else offsets.sum() * 0,
             "heatmap": detection.focal_loss(heat, batch["heatmap"])}
    b, i, j = batch["box_cells"].T
    terms["box"] = (box[b, :, i, j] - batch["box_codes"]).abs().mean() if len(b) else box.sum() * 0
    terms["total"] = (terms["semantic"] + config.offset_weight * terms["offset"] + terms["heatmap"]
                      + config.box_weight * terms["box"])
    return terms


def make_instance_optimizers(model: InstanceModel, config: InstanceConfig) -> tuple:
    """(SGD of the trunk at ``lr`` and the semantic head at ``lr_head``, segmentation's settings;
    AdamW of the offset and BEV heads)."""
    ds = config.downstream
    groups = [{"params": list(model.trunk.parameters()), "lr": ds.lr, "name": "trunk"},
              {"params": list(model.head.parameters()), "lr": ds.head_lr, "name": "head"}]
    sgd = torch.optim.SGD(groups, lr=ds.lr, momentum=ds.momentum, dampening=ds.dampening, weight_decay=ds.weight_decay)
    adamw = torch.optim.AdamW(list(model.offset.parameters()) + list(model.bev.parameters()),
                              lr=config.instance_heads_lr, weight_decay=config.instance_heads_weight_decay)
    return sgd, adamw


def build_model(config: InstanceConfig) -> InstanceModel:
    ds = config.downstream
    return InstanceModel(ds.backbone, ds.voxel_size, config.grid, config.bev_channels)


def train_instances(config: InstanceConfig, train_keyframes, pretrained=None, progress: bool = True,
                    indices=None):
    """Fine-tune an :class:`InstanceModel` (trunk from ``pretrained``, or random) on the scans of
    ``config.downstream.label_fraction`` of the training scenes (SLidR's rule). Returns the model (eval
    mode) and a history ``{"epoch", "loss", "terms", "seconds", "train_indices"}``."""
    from tqdm.auto import tqdm

    from cmcr_lite.downstream.data import batch_to_sparse, keyframe_indices_for_fraction
    from cmcr_lite.runtime import resolve_device

    ds = config.downstream
    torch.manual_seed(ds.seed)
    device = resolve_device(ds.device)
    model = build_model(config)
    if pretrained is not None:
        load_pretrained_trunk(model, pretrained, ds)
    model.to(device)
    if indices is None:
        indices = keyframe_indices_for_fraction(train_keyframes, ds.label_fraction)
    data = InstanceScans(train_keyframes, config, indices, train=True)
    optimizers = make_instance_optimizers(model, config)
    schedulers = [make_scheduler(o, ds) for o in optimizers]
    history = {"epoch": [], "loss": [], "terms": [], "seconds": [], "train_indices": list(indices)}
    steps = ds.epochs * max(1, len(data) // ds.batch_size)
    bar = tqdm(total=steps, desc="fine-tuning (panoptic + detection)", unit="step", disable=not progress)
    for epoch in range(ds.epochs):
        t0 = time.time()
        model.train()
        data.set_epoch(epoch)
        order = np.random.default_rng([ds.seed, epoch]).permutation(len(data))
        sums, n = {}, 0
        for start in range(0, len(order) - ds.batch_size + 1, ds.batch_size):  # last partial batch dropped
            batch = collate_instances([data[int(k)] for k in order[start:start + ds.batch_size]])
            x = batch_to_sparse(batch, device)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            terms = instance_loss(config, model(x, ds.batch_size), batch)
            for o in optimizers:
                o.zero_grad()
            terms["total"].backward()
            for o in optimizers:
                o.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.3f}")
        for sch in schedulers:
            sch.step()
        history["epoch"].append(epoch)
        history["terms"].append({k: v / max(n, 1) for k, v in sums.items()})
        history["loss"].append(history["terms"][-1].get("total", float("nan")))
        history["seconds"].append(time.time() - t0)
    bar.close()
    return model.eval(), history


def devkit_eval_set(keyframes) -> str:
    """The devkit's name of the keyframes' split: for a synthetic set split by ``cmcr_splits.json``
    (whatever its version's name), the custom ``cmcr_<split>`` of ``<version>/splits.json``; for real
    nuScenes (and a mini stand-in), the devkit's ``val`` / ``mini_val`` / ..."""
    from cmcr_lite.data.nuscenes_loader import DEVKIT_SPLITS, SPLITS_FILE
    from cmcr_lite.data.synthetic import CUSTOM_SPLIT_PREFIX

    if (keyframes.dataroot / SPLITS_FILE).is_file():
        return CUSTOM_SPLIT_PREFIX + keyframes.split
    return DEVKIT_SPLITS.get(keyframes.nusc.version, {}).get(keyframes.split, keyframes.split)


@torch.no_grad()
def predict_instances(model: InstanceModel, keyframes, index: int, config: InstanceConfig) -> dict:
    """One scan's predictions: ``semantic`` (N,) 16-class, ``instance`` (N,), ``panoptic`` (N,) uint16,
    ``boxes`` (K, 7) LiDAR frame, ``scores`` (K,), ``classes`` (K,) (DETECTION_CLASSES index)."""
    from cmcr_lite.downstream.data import batch_to_sparse

    ds = config.downstream
    device = next(model.parameters()).device
    points, _ = keyframes.load_scan(index)  # the scan only: no ground truth is read
    vox = voxelize(points[:, :3], ds.voxel_size, ds.cylindrical)
    feats = (points[vox.point_of_voxel, 3:4] / ds.intensity_scale).astype(np.float32)
    coords = np.concatenate([np.zeros((len(vox.coords), 1)), vox.coords], 1).astype(np.int32)
    batch = {"coords": torch.from_numpy(coords), "feats": torch.from_numpy(feats)}
    logits, offsets, heat, box = model(batch_to_sparse(batch, device), 1)
    logits[:, ds.ignore_index] = -float("inf")
    semantic = logits.argmax(1).cpu().numpy()[vox.voxel_of_point]
    offset = offsets.cpu().numpy()[vox.voxel_of_point]
    instance = panoptic.cluster_instances(points[:, :3], offset, semantic, config.cluster_radius)
    boxes, scores, classes = detection.decode_boxes(heat[0], box[0], config.grid, config.max_boxes,
                                                    config.score_threshold)
    return {"semantic": semantic, "instance": instance, "panoptic": panoptic.panoptic_prediction(semantic, instance),
            "boxes": boxes, "scores": scores, "classes": classes}


def evaluate_instances(model: InstanceModel, keyframes, config: InstanceConfig, out_dir, progress: bool = True) -> dict:
    """Predict every scan of ``keyframes``, write the devkit's result files under ``out_dir``
    (``panoptic/<eval set>/*.npz`` and ``detection_results.json``) and score them with its evaluators:
    ``{"eval_set", "panoptic": evaluate_panoptic(...), "detection": evaluate_detection(...)}``."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    eval_set = devkit_eval_set(keyframes)
    pan, det = {}, {}
    for index in tqdm(range(len(keyframes)), desc="predicting", unit="scan", disable=not progress):
        p = predict_instances(model, keyframes, index, config)
        lidar = keyframes.lidar_record(keyframes.sample_tokens[index])
        pan[lidar["token"]] = p["panoptic"]
        det[keyframes.sample_tokens[index]] = detection.boxes_to_results(keyframes.nusc, lidar["token"], p["boxes"],
                                                                         p["scores"], p["classes"])
    panoptic.write_panoptic_results(out_dir, eval_set, pan)
    det_path = detection.write_detection_results(out_dir / "detection_results.json", det)
    return {"eval_set": eval_set,
            "panoptic": panoptic.evaluate_panoptic(keyframes.nusc, out_dir, eval_set, out_dir / "panoptic_eval",
                                                   config.min_inst_points),
            "detection": detection.evaluate_detection(keyframes.nusc, det_path, eval_set, out_dir / "detection_eval")}


@reports_input_errors
def main(argv=None) -> dict:
    """``python -m cmcr_lite.downstream.instances``: fine-tune, evaluate on val, write the results."""
    from cmcr_lite.data.nuscenes_loader import DatasetError, NuScenesKeyframes
    from cmcr_lite.downstream.cli import _check_pretrained, _config_from_args
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset
    from cmcr_lite.runtime import atomic_path, save_checkpoint_atomic

    p = CommandLineParser(prog="python -m cmcr_lite.downstream.instances",
                          description="Fine-tune a (pretrained) MinkUNet for panoptic segmentation and 3D detection "
                                      "together; score val with the nuScenes devkit's evaluators.")
    p.add_argument("--pretrained", help="checkpoint.pt of python -m cmcr_lite.pretrain (default: random init)")
    p.add_argument("--config", choices=("lite", "full"), default="lite",
                   help="lite: InstanceConfig.lite (CPU); full: the paper's fine-tuning schedule, full MinkUNet")
    p.add_argument("--dataroot", help="nuScenes root (default: the embedded synthetic set)")
    p.add_argument("--version", help="e.g. v1.0-trainval (default: v1.0-synthetic with the embedded set)")
    p.add_argument("--label-fraction", type=float, help="fraction of the training scenes (SLidR's rule)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=JSON",
                   help="DownstreamConfig fields, e.g. batch_size=4 backbone.bn_momentum=0.05")
    p.add_argument("--output-dir", required=True)
    a = p.parse_args(argv)
    a.mode = "finetune"  # segmentation's presets and --set checks, in fine-tuning mode
    config = InstanceConfig(downstream=_config_from_args(a))
    if a.pretrained:
        _check_pretrained(a.pretrained, config.downstream)
    root = Path(a.dataroot) if a.dataroot else ensure_embedded_dataset()
    version = a.version or (EMBEDDED_VERSION if a.dataroot is None else "v1.0-trainval")
    from cmcr_lite.downstream.data import keyframe_indices_for_fraction

    try:
        train_kf = NuScenesKeyframes(root, version, split="train")
        val_kf = NuScenesKeyframes(root, version, split="val", nusc=train_kf.nusc)
        indices = keyframe_indices_for_fraction(train_kf, config.downstream.label_fraction)
        load_objects(train_kf, indices[0])  # the object labels are there, before any training
        if len(val_kf):
            load_objects(val_kf, 0)
    except (DatasetError, ValueError) as e:
        raise InputError(e) from None
    model, history = train_instances(config, train_kf, a.pretrained, indices=indices)
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint_atomic({"model": model.state_dict(), "config": config.to_dict(), "history": history},
                           out / "model.pt")
    scores = evaluate_instances(model, val_kf, config, out / "predictions")
    results = json.loads(json.dumps({"config": config.to_dict(), "pretrained": a.pretrained, "history": history,
                                     **scores}, default=float))
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    pan, det = results["panoptic"]["all"], results["detection"]
    print(f"{scores['eval_set']}: PQ {100 * pan['PQ']:.1f} (present classes {100 * pan['PQ_present']:.1f}), "
          f"mAP {100 * det['mean_ap']:.1f} ({100 * det['mean_ap_present']:.1f}), NDS {100 * det['nd_score']:.1f} "
          f"({100 * det['nd_score_present']:.1f}); wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()

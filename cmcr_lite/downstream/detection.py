"""3D object detection: a small CenterPoint-style head on the bird's-eye view (BEV) of the sparse trunk.

CenterPoint (Yin et al., CVPR 2021) finds objects as peaks: it flattens the 3D features onto a ground
grid, predicts one **heat map** per class whose peaks are object centres, and at each centre
**regresses** the rest of the box. Here:

* **BEV**: every voxel's trunk feature is max-pooled into the ground cell (``cell`` metres, a square of
  ``2 * half_range`` metres around the LiDAR) that holds it: (B, D, G, G), G = 2 * half_range / cell;
* **head**: two 3x3 convolutions (BatchNorm, ReLU), then a 3x3 convolution to C heat-map logits (one
  per detection class) and one to 8 box numbers per cell: the centre's offset within its cell (dx, dy,
  in cells), its height z (m), log length, log width, log height (m), sin and cos of the yaw;
* **targets**: at each box's centre cell the heat map is 1, around it a Gaussian of radius ``r`` cells
  (r = max(2, half the box's smaller side in cells), sigma = (2r + 1) / 6, CenterNet's choice) taken by
  element-wise max where objects are close; the box numbers are regressed at centre cells only;
* **loss**: CenterNet's focal loss on the heat map (alpha 2, beta 4, normalised by the number of
  objects) + ``box_weight`` x L1 on the box numbers (CenterPoint's 0.25);
* **decoding**: sigmoid heat map, peaks kept by a 3x3 max-pool (CenterPoint's "NMS-free" peak
  picking), the ``max_boxes`` best above ``score_threshold``.

Scoring is the devkit's ``nuscenes.eval.detection`` (:func:`evaluate_detection`): boxes matched by
centre distance on the ground at 0.5, 1, 2 and 4 m; **AP** is the area under the precision-recall curve
above 10 % recall and 10 % precision, rescaled so that a perfect detector scores 1; **mAP** averages it
over the classes and the four thresholds. The true-positive errors (at 2 m) are translation (m), scale
(1 - IoU of aligned boxes), orientation (rad), velocity (m/s) and attribute (1 - accuracy); **NDS** =
(5 mAP + sum over the five of (1 - min(1, error))) / 10.

The head sees one sweep and predicts no velocity (CenterPoint regresses it from several accumulated
sweeps): every box gets 0. On the synthetic set the world is static, so the velocity error is 0 by
construction there; on real nuScenes it is the error of a zero prediction. The attribute is not predicted: each class gets a fixed
default (:data:`DEFAULT_ATTRIBUTE`, CenterPoint's), so the attribute error shows how often that
default is wrong. :func:`detection_config` is the devkit's ``detection_cvpr_2019``, unchanged; it
averages over all ten classes, so a set that lacks some (the synthetic one has 7) caps mAP and NDS
below 1, and :func:`evaluate_detection` adds ``mean_ap_present`` and ``nd_score_present``: the same
formulas over the classes with ground-truth boxes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmcr_lite.downstream.objects import DETECTION_CLASSES

BOX_CODE = ("dx", "dy", "z", "log_length", "log_width", "log_height", "sin_yaw", "cos_yaw")
# CenterPoint's default attributes for nuScenes (the attribute is not predicted).
DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "truck": "vehicle.parked", "bus": "vehicle.moving",
                     "trailer": "vehicle.parked", "construction_vehicle": "vehicle.parked",
                     "pedestrian": "pedestrian.moving", "motorcycle": "cycle.without_rider",
                     "bicycle": "cycle.without_rider", "traffic_cone": "", "barrier": ""}


class BEVGrid:
    """A square ground grid around the LiDAR: ``size`` = 2 * half_range / cell cells per side; cell
    (i, j) covers x in [-half_range + i cell, ... + cell), y likewise (metres, LiDAR frame)."""

    def __init__(self, half_range: float = 51.2, cell: float = 0.5):
        self.half_range, self.cell = float(half_range), float(cell)
        self.size = int(round(2 * half_range / cell))

    def cells(self, xy: np.ndarray | torch.Tensor):
        """Integer cell indices (N, 2) of positions ``xy`` (N, 2) metres (may fall outside the grid)."""
        lib = torch if isinstance(xy, torch.Tensor) else np
        return lib.floor((xy + self.half_range) / self.cell).long() if lib is torch else \
            np.floor((xy + self.half_range) / self.cell).astype(np.int64)


def bev_pool(features: torch.Tensor, coords: torch.Tensor, voxel_size: float, grid: BEVGrid,
             batch_size: int) -> torch.Tensor:
    """Max-pool voxel ``features`` (V, D) at voxel ``coords`` (V, 4) int (batch, x, y, z in voxels of
    ``voxel_size`` metres) into the ground grid: (B, D, G, G) float32, 0 where a cell has no voxel."""
    D, G = features.shape[1], grid.size
    ij = grid.cells((coords[:, 1:3].float() + 0.5) * voxel_size)
    inside = ((ij >= 0) & (ij < G)).all(1)
    flat = (coords[inside, 0].long() * G + ij[inside, 0]) * G + ij[inside, 1]
    out = torch.zeros(batch_size * G * G, D, dtype=features.dtype, device=features.device)
    out = out.scatter_reduce(0, flat[:, None].expand(-1, D), features[inside], "amax", include_self=False)
    return out.view(batch_size, G, G, D).permute(0, 3, 1, 2).contiguous()


class BEVHead(nn.Module):
    """(B, D, G, G) BEV features -> heat-map logits (B, C, G, G) and box numbers (B, 8, G, G)."""

    def __init__(self, in_channels: int, channels: int = 64, num_classes: int = len(DETECTION_CLASSES)):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.shared = nn.Sequential(block(in_channels, channels), block(channels, channels))
        self.heatmap = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box = nn.Conv2d(channels, len(BOX_CODE), 3, padding=1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # sigmoid = 0.1 at the start, CenterPoint's prior

    def forward(self, bev: torch.Tensor):
        x = self.shared(bev)
        return self.heatmap(x), self.box(x)


def gaussian_radius(length: float, width: float, cell: float) -> int:
    """The heat-map radius (cells) of a box: max(2, half its smaller side in cells)."""
    return max(2, int(min(length, width) / (2 * cell)))


def detection_targets(boxes: np.ndarray, classes: np.ndarray, grid: BEVGrid, num_classes: int = len(DETECTION_CLASSES)):
    """Targets of one scan's ``boxes`` (K, 7) (x, y, z, l, w, h, yaw; LiDAR frame) of ``classes`` (K,):
    heat map (C, G, G) float32, box numbers (K', 8) float32, and their cells (K', 2) int64 (K' <= K: the
    boxes whose centre falls in the grid)."""
    G = grid.size
    heat = np.zeros((num_classes, G, G), np.float32)
    ij = grid.cells(boxes[:, :2])
    inside = ((ij >= 0) & (ij < G)).all(1)
    codes, cells = [], []
    ii, jj = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    for (x, y, z, length, width, height, yaw), c, (i, j) in zip(boxes[inside], classes[inside], ij[inside]):
        r = gaussian_radius(length, width, grid.cell)
        sigma = (2 * r + 1) / 6
        i0, i1, j0, j1 = max(i - r, 0), min(i + r + 1, G), max(j - r, 0), min(j + r + 1, G)
        g = np.exp(-((ii[i0:i1, j0:j1] - i) ** 2 + (jj[i0:i1, j0:j1] - j) ** 2) / (2 * sigma ** 2))
        heat[c, i0:i1, j0:j1] = np.maximum(heat[c, i0:i1, j0:j1], g)
        heat[c, i, j] = 1.0
        dx = (x + grid.half_range) / grid.cell - i
        dy = (y + grid.half_range) / grid.cell - j
        codes.append([dx, dy, z, math.log(length), math.log(width), math.log(height), math.sin(yaw), math.cos(yaw)])
        cells.append([i, j])
    return heat, np.asarray(codes, np.float32).reshape(-1, 8), np.asarray(cells, np.int64).reshape(-1, 2)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of heat-map ``logits`` against a Gaussian ``target`` (same
    shape), summed and divided by the number of peaks (cells where target == 1; at least 1)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    peak = target.eq(1).float()
    pos = -torch.log(p) * (1 - p) ** 2 * peak
    neg = -torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - peak)
    return (pos.sum() + neg.sum()) / peak.sum().clamp_min(1)


def decode_boxes(heat_logits: torch.Tensor, box: torch.Tensor, grid: BEVGrid, max_boxes: int = 100,
                 score_threshold: float = 0.1):
    """Boxes of one scan from its heat-map logits (C, G, G) and box numbers (8, G, G): (K, 7) float32
    (x, y, z, l, w, h, yaw; LiDAR frame), scores (K,) and classes (K,) int64, best first."""
    heat = torch.sigmoid(heat_logits)
    peaks = heat == nn.functional.max_pool2d(heat[None], 3, stride=1, padding=1)[0]
    scores = (heat * peaks).flatten()
    k = min(max_boxes, scores.numel())
    top, idx = scores.topk(k)
    keep = top > score_threshold
    top, idx = top[keep], idx[keep]
    G = grid.size
    c, i, j = idx // (G * G), (idx // G) % G, idx % G
    code = box[:, i, j].T  # (K, 8)
    x = (i.float() + code[:, 0]) * grid.cell - grid.half_range
    y = (j.float() + code[:, 1]) * grid.cell - grid.half_range
    dims = code[:, 3:6].clamp(-5, 5).exp()
    yaw = torch.atan2(code[:, 6], code[:, 7])
    boxes = torch.stack([x, y, code[:, 2], dims[:, 0], dims[:, 1], dims[:, 2], yaw], 1)
    return boxes.detach().cpu().numpy().astype(np.float32), top.detach().cpu().numpy(), c.cpu().numpy()


def detection_config():
    """The devkit's ``detection_cvpr_2019`` config, unchanged: ranges 50 m (vehicles), 40 m (pedestrians,
    cycles), 30 m (cones, barriers); match thresholds 0.5 / 1 / 2 / 4 m; TP errors at 2 m. (The devkit's
    ``DetectionConfig`` insists on all ten classes: a class without ground truth scores AP 0 and TP
    errors 1, which is why :func:`evaluate_detection` also reports means over the classes present.)"""
    from nuscenes.eval.common.config import config_factory

    return config_factory("detection_cvpr_2019")


def boxes_to_results(nusc, lidar_token: str, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list:
    """One sample's predictions in the devkit's result format (global frame): a list of dicts with
    sample_token, translation, size (w, l, h), rotation (w, x, y, z), velocity, detection_name,
    detection_score, attribute_name. ``boxes`` (K, 7) in the LiDAR frame of ``lidar_token``."""
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    sd = nusc.get("sample_data", lidar_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    out = []
    for (x, y, z, length, width, height, yaw), score, c in zip(boxes, scores, classes):
        b = Box([x, y, z], [width, length, height], Quaternion(axis=[0, 0, 1], angle=float(yaw)))
        b.rotate(Quaternion(cs["rotation"])), b.translate(cs["translation"])
        b.rotate(Quaternion(pose["rotation"])), b.translate(pose["translation"])
        name = DETECTION_CLASSES[int(c)]
        out.append({"sample_token": sd["sample_token"], "translation": [float(v) for v in b.center],
                    "size": [float(v) for v in b.wlh], "rotation": [float(v) for v in b.orientation.elements],
                    "velocity": [0.0, 0.0], "detection_name": name, "detection_score": float(score),
                    "attribute_name": DEFAULT_ATTRIBUTE[name]})
    return out


def true_box_results(keyframes, shift_x: float = 0.0) -> dict:
    """The true boxes (those with points, as :func:`~cmcr_lite.downstream.objects.load_objects` gives
    them) of every scan of ``keyframes`` written as predictions with score 1 and their true attribute,
    moved ``shift_x`` metres along the LiDAR's x: ``{sample token: [box dicts]}``. Unmoved, they score AP
    1 and no error on every class present."""
    from cmcr_lite.downstream.objects import load_objects

    nusc, results = keyframes.nusc, {}
    for i in range(len(keyframes)):
        objects = load_objects(keyframes, i)
        boxes = objects.boxes.copy()
        boxes[:, 0] += shift_x
        rows = boxes_to_results(nusc, objects.lidar_token, boxes, np.ones(len(boxes)), objects.box_classes)
        for row, token in zip(rows, objects.box_tokens):
            tokens = nusc.get("sample_annotation", token)["attribute_tokens"]
            row["attribute_name"] = nusc.get("attribute", tokens[0])["name"] if tokens else ""
        results[objects.sample_token] = rows
    return results


def write_detection_results(path, results: dict) -> Path:
    """Write ``{sample token: [box dicts]}`` as the devkit's result JSON (``meta``: LiDAR only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    path.write_text(json.dumps({"meta": meta, "results": results}))
    return path


def evaluate_detection(nusc, result_path, eval_set: str, out_dir=None) -> dict:
    """The devkit's detection evaluation (``DetectionEval``, :func:`detection_config`) of ``result_path``
    on ``eval_set`` (a devkit split, or a custom one from ``<version>/splits.json``): its metrics summary
    (``mean_ap``, ``nd_score``, ``label_aps``, ``tp_errors``, ``label_tp_errors``, ...) plus ``present``
    (the classes with ground-truth boxes after the devkit's filters), ``mean_ap_present`` and
    ``nd_score_present``: mAP and NDS by the devkit's formulas over those classes only."""
    import contextlib
    import io

    from nuscenes.eval.detection.evaluate import DetectionEval

    out_dir = Path(out_dir if out_dir is not None else Path(result_path).parent / "detection_eval")
    if not any(json.loads(Path(result_path).read_text())["results"].values()):
        # the devkit cannot filter an empty prediction set; no box found means AP 0 and every error 1
        return {"mean_ap": 0.0, "nd_score": 0.0, "present": [], "mean_ap_present": 0.0, "nd_score_present": 0.0,
                "no_predictions": True}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        ev = DetectionEval(nusc, detection_config(), str(result_path), eval_set, str(out_dir), verbose=False)
        metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    present = sorted({b.detection_name for b in ev.gt_boxes.all}, key=DETECTION_CLASSES.index)
    summary["present"] = present
    if not present:
        summary["mean_ap_present"] = summary["nd_score_present"] = float("nan")
        return summary
    mean_ap = float(np.mean([np.mean(list(summary["label_aps"][c].values())) for c in present]))
    tp = [np.nanmean([summary["label_tp_errors"][c][m] for c in present]) for m in summary["tp_errors"]]
    weight = ev.cfg.mean_ap_weight  # NDS = (5 mAP + sum of (1 - min(1, mean TP error))) / 10
    summary["mean_ap_present"] = mean_ap
    summary["nd_score_present"] = float((weight * mean_ap + sum(1 - min(1.0, e) for e in tp)) / (weight + len(tp)))
    return summary

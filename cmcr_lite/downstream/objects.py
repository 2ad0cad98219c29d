"""The objects of a keyframe, read through the devkit: instance labels of the points and 3D boxes.

    objects = load_objects(keyframes, index)
    objects.instance       # (N,) int64: the point's instance id (0 = stuff, noise or no instance)
    objects.boxes          # (K, 7) float32: x, y, z, length, width, height, yaw in the LiDAR frame
    objects.box_classes    # (K,) int64: index into DETECTION_CLASSES

Instances come from nuScenes-panoptic (``panoptic/<version>/<token>_panoptic.npz``, fine class x 1000 +
instance id); boxes from ``sample_annotation`` through ``nusc.get_sample_data`` (which moves them from
the global frame into the LiDAR's), keeping the annotations that map to one of the devkit's ten
detection classes and hold at least one point. Real nuScenes and the synthetic set are read by the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmcr_lite.classes import CLASS_NAMES_16
from cmcr_lite.data.nuscenes_loader import DatasetError

# The devkit's detection classes (nuscenes.eval.detection.constants.DETECTION_NAMES), in its order.
DETECTION_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
                     "traffic_cone", "barrier")
# The 16-class index of each detection class: the ten *thing* classes of the 16 (1..10) are these.
CLASS16_OF_DETECTION = np.array([CLASS_NAMES_16.index(n) for n in DETECTION_CLASSES])
THING_CLASSES_16 = tuple(range(1, 11))


@dataclass
class KeyframeObjects:
    """instance: (N,) int64 per point; boxes: (K, 7) float32 (x, y, z, l, w, h, yaw; metres, rad,
    LiDAR frame, centre of the box); box_classes: (K,) int64 (DETECTION_CLASSES index);
    box_tokens: the K sample_annotation tokens."""
    sample_token: str
    lidar_token: str
    instance: np.ndarray
    boxes: np.ndarray
    box_classes: np.ndarray
    box_tokens: tuple


def load_panoptic(keyframes, lidar_token: str, n_points: int) -> np.ndarray:
    """(N,) uint16 nuScenes-panoptic labels of a sweep (fine class x 1000 + instance id)."""
    nusc = keyframes.nusc
    if not getattr(nusc, "panoptic", None):
        raise DatasetError(f"{keyframes.dataroot / nusc.version} has no panoptic.json (nuScenes-panoptic); "
                           "regenerate a synthetic set, or install the panoptic labels of real nuScenes")
    path = keyframes.dataroot / nusc.get("panoptic", lidar_token)["filename"]
    if not path.is_file():
        raise DatasetError(f"panoptic label file not found: {path}")
    labels = np.load(path)["data"]
    if len(labels) != n_points:
        raise DatasetError(f"panoptic file {path} has {len(labels)} labels but its sweep has {n_points} points")
    return labels


def load_boxes(nusc, lidar_token: str):
    """The keyframe's boxes of the detection classes, in the LiDAR frame: (K, 7) float32, (K,) int64
    classes and the K annotation tokens. Boxes without a LiDAR or radar point are left out, as the
    devkit's evaluation leaves them out (``filter_eval_boxes``): nothing could find them."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    _, boxes, _ = nusc.get_sample_data(lidar_token)
    rows, classes, tokens = [], [], []
    for box in boxes:
        name = category_to_detection_name(box.name)
        ann = nusc.get("sample_annotation", box.token)
        if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
            continue
        w, length, h = box.wlh
        rows.append([*box.center, length, w, h, box.orientation.yaw_pitch_roll[0]])
        classes.append(DETECTION_CLASSES.index(name))
        tokens.append(box.token)
    return (np.asarray(rows, np.float32).reshape(-1, 7), np.asarray(classes, np.int64), tuple(tokens))


def load_objects(keyframes, index: int) -> KeyframeObjects:
    """Instance ids and boxes of keyframe ``index`` of a :class:`NuScenesKeyframes`."""
    sample_token = keyframes.sample_tokens[index]
    lidar = keyframes.lidar_record(sample_token)
    n_points = int((keyframes.dataroot / lidar["filename"]).stat().st_size // (5 * 4))
    panoptic = load_panoptic(keyframes, lidar["token"], n_points)
    boxes, classes, tokens = load_boxes(keyframes.nusc, lidar["token"])
    return KeyframeObjects(sample_token, lidar["token"], (panoptic % 1000).astype(np.int64), boxes, classes, tokens)

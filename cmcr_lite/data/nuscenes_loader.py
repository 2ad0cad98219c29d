"""Read nuScenes keyframes through the devkit: points, 16-class labels, 6 images, point->pixel pairs.

The same code reads the embedded synthetic set and real nuScenes (``v1.0-mini``, ``v1.0-trainval``):
the dataset root and version are arguments, never constants.

    kf = NuScenesKeyframes("data/nuscenes-synthetic", "v1.0-synthetic", split="train")
    sample = kf[0]           # a Keyframe
    sample.points            # (N, 4) float32: x, y, z (metres, LiDAR frame), intensity (0..255)

Every file is checked as it is read, and a problem raises ``DatasetError`` naming the file or token.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cmcr_lite.data.projection import cameras_from_lidar, project_points_to_cameras

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
SPLITS_FILE = "cmcr_splits.json"  # written by the synthetic generator; real nuScenes uses the devkit's splits
# Our split names -> the devkit's (nuscenes.utils.splits.create_splits_scenes) for each real version.
DEVKIT_SPLITS = {
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
}


class DatasetError(ValueError):
    """A dataset file or record is missing or malformed; the message names it."""


@dataclass
class Keyframe:
    """One annotated LiDAR sweep with its six camera images.

    points: (N, 4) float32, x, y, z in metres (LiDAR frame) and intensity (raw nuScenes units, 0..255).
    labels: (N,) int64 in the 16 challenge classes (0 = ignore), or None without lidarseg.
    images: (C, H, W, 3) uint8 RGB, cameras in ``camera_names`` order.
    pair_points: (M,) int64 index into ``points``; pair_pixels: (M, 3) int64 (camera, row, column).
    """
    sample_token: str
    lidar_token: str
    camera_tokens: tuple
    camera_names: tuple
    points: np.ndarray
    labels: np.ndarray | None
    images: np.ndarray
    pair_points: np.ndarray
    pair_pixels: np.ndarray


def load_points(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.pcd.bin`` (5 float32 per point) as (N, 4) float32 via the devkit, with checks."""
    from nuscenes.utils.data_classes import LidarPointCloud

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"LiDAR file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"LiDAR file is empty (0 points): {path}")
    if size % (5 * 4):
        raise DatasetError(f"LiDAR file is truncated or not nuScenes .pcd.bin: {path} has {size} bytes, "
                           f"not a multiple of 20 (5 float32 per point)")
    points = LidarPointCloud.from_file(str(path)).points.T.astype(np.float32)  # (N, 4)
    bad = ~np.isfinite(points).all(1)
    if bad.any():
        raise DatasetError(f"LiDAR file {path} has {int(bad.sum())} points with NaN or inf values")
    return points


def load_image(path: str | os.PathLike, expected_size: tuple | None = None, token: str = "") -> np.ndarray:
    """Read a camera JPEG as (H, W, 3) uint8; check it against the record's (width, height)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"camera image not found: {path} (sample_data {token})")
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except OSError as e:
        raise DatasetError(f"camera image {path} cannot be decoded: {e}") from None
    if expected_size and tuple(expected_size) != (rgb.shape[1], rgb.shape[0]):
        raise DatasetError(f"camera image {path} is {rgb.shape[1]}x{rgb.shape[0]} but sample_data {token} "
                           f"says {expected_size[0]}x{expected_size[1]}")
    return rgb


def check_calibration(nusc, sd: dict, channel: str) -> np.ndarray | None:
    """Validate a sample_data's calibrated_sensor; return K (3,3) for cameras, None for the LiDAR."""
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    sensor = nusc.get("sensor", cs["sensor_token"])
    where = f"calibrated_sensor {cs['token']} (sample_data {sd['token']})"
    if sensor["channel"] != channel:
        raise DatasetError(f"{where} belongs to sensor {sensor['channel']}, expected {channel}")
    q = np.asarray(cs["rotation"], dtype=np.float64)
    if q.shape != (4,) or abs(np.linalg.norm(q) - 1) > 1e-3:
        raise DatasetError(f"{where}: rotation {cs['rotation']} is not a unit quaternion [w, x, y, z]")
    if len(cs["translation"]) != 3:
        raise DatasetError(f"{where}: translation {cs['translation']} is not 3 values (metres)")
    if not channel.startswith("CAM"):
        return None
    K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        raise DatasetError(f"{where}: camera_intrinsic {cs['camera_intrinsic']} is not a 3x3 pinhole "
                           f"matrix with positive focal lengths")
    return K


def open_nuscenes(dataroot: str | os.PathLike, version: str, verbose: bool = False):
    """``NuScenes(version, dataroot)`` with errors that say what is wrong with the path."""
    from nuscenes.nuscenes import NuScenes

    root = Path(dataroot)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise DatasetError(f"no version folder {version!r} in dataset root {root}; found {found or 'none'}")
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=verbose)
    except (AssertionError, KeyError, FileNotFoundError, json.JSONDecodeError) as e:
        raise DatasetError(f"the devkit cannot load {root / version}: {type(e).__name__}: {e}") from None


def split_scene_names(nusc, split: str) -> list:
    """Scene names of ``split`` ('all', 'train', 'val', 'teacher', or any devkit split name)."""
    names = [s["name"] for s in nusc.scene]
    if split == "all":
        return names
    split_file = Path(nusc.dataroot) / SPLITS_FILE
    if split_file.is_file():
        splits = json.loads(split_file.read_text())
        if split not in splits:
            raise DatasetError(f"split {split!r} not in {split_file}; available: {sorted(splits)} or 'all'")
        wanted = set(splits[split])
    else:
        from nuscenes.utils.splits import create_splits_scenes

        devkit = create_splits_scenes()
        name = DEVKIT_SPLITS.get(nusc.version, {}).get(split, split)
        if name not in devkit:
            raise DatasetError(f"unknown split {split!r} for {nusc.version}; use 'all', "
                               f"{sorted(DEVKIT_SPLITS.get(nusc.version, {}))} or a devkit split {sorted(devkit)}")
        wanted = set(devkit[name])
    return [n for n in names if n in wanted]


class NuScenesKeyframes:
    """All keyframes of a split, read through the devkit, as ``Keyframe`` objects.

    Args:
        dataroot: dataset root (the folder holding ``samples/`` and the version folder).
        version: e.g. 'v1.0-synthetic', 'v1.0-mini', 'v1.0-trainval'.
        split: 'all', 'train', 'val' (mapped to the devkit's mini_train/mini_val for v1.0-mini),
            'teacher' (synthetic only), or a devkit split name.
        cameras: camera channels, in the order images and pair camera indices use.
        min_depth: metres; points closer to a camera are not paired with it (nuScenes: 1 m).
    """

    def __init__(self, dataroot, version: str, split: str = "all", cameras=CAMERAS, min_depth: float = 1.0,
                 nusc=None, verbose: bool = False):
        self.nusc = nusc if nusc is not None else open_nuscenes(dataroot, version, verbose)
        self.dataroot = Path(self.nusc.dataroot)
        self.version, self.split, self.cameras, self.min_depth = version, split, tuple(cameras), min_depth
        scenes = set(split_scene_names(self.nusc, split))
        self.sample_tokens = []
        for scene in self.nusc.scene:
            if scene["name"] not in scenes:
                continue
            token = scene["first_sample_token"]
            while token:
                sample = self.nusc.get("sample", token)
                self.sample_tokens.append(token)
                token = sample["next"]
        if not self.sample_tokens:
            raise DatasetError(f"split {split!r} of {version} at {self.dataroot} has no keyframes "
                               f"({len(self.nusc.scene)} scenes in the version, none in this split)")
        self.has_labels = hasattr(self.nusc, "lidarseg") and len(self.nusc.lidarseg) > 0
        self._fine_to_coarse = None
        if self.has_labels:
            from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

            mapping = LidarsegClassMapper(self.nusc).fine_idx_2_coarse_idx_mapping
            self._fine_to_coarse = np.zeros(256, np.int64)
            for fine, coarse in mapping.items():
                self._fine_to_coarse[fine] = coarse

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __repr__(self) -> str:
        return (f"NuScenesKeyframes({self.dataroot}, {self.version}, split={self.split!r}: "
                f"{len(self)} keyframes, {len(self.cameras)} cameras, labels={self.has_labels})")

    def camera_records(self, sample_token: str) -> list:
        sample = self.nusc.get("sample", sample_token)
        missing = [c for c in self.cameras if c not in sample["data"]]
        if missing:
            raise DatasetError(f"sample {sample_token} has no keyframe for cameras {missing}")
        return [self.nusc.get("sample_data", sample["data"][c]) for c in self.cameras]

    def lidar_record(self, sample_token: str) -> dict:
        sample = self.nusc.get("sample", sample_token)
        if "LIDAR_TOP" not in sample["data"]:
            raise DatasetError(f"sample {sample_token} has no LIDAR_TOP keyframe")
        return self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])

    def load_labels(self, lidar_token: str, n_points: int) -> np.ndarray:
        """(N,) int64 16-class labels of a LiDAR sweep (devkit's 32 -> 16 mapping)."""
        path = self.dataroot / self.nusc.get("lidarseg", lidar_token)["filename"]
        if not path.is_file():
            raise DatasetError(f"lidarseg label file not found: {path}")
        fine = np.fromfile(path, dtype=np.uint8)
        if len(fine) != n_points:
            raise DatasetError(f"lidarseg file {path} has {len(fine)} labels but its sweep has {n_points} points")
        return self._fine_to_coarse[fine]

    def projection_inputs(self, lidar_sd: dict, camera_sds: list):
        """(C,4,4) camera-from-lidar transforms, (C,3,3) intrinsics and (C,2) image sizes."""
        check_calibration(self.nusc, lidar_sd, "LIDAR_TOP")
        Ks = np.stack([check_calibration(self.nusc, sd, ch) for sd, ch in zip(camera_sds, self.cameras)])
        T = cameras_from_lidar(self.nusc, lidar_sd, camera_sds)
        sizes = np.array([(sd["width"], sd["height"]) for sd in camera_sds], dtype=np.int64)
        return T, Ks, sizes

    def load_scan(self, index: int):
        """Only the LiDAR part of keyframe ``index``: points (N, 4) float32 and labels (N,) int64 or None.
        Downstream segmentation needs no images, so it skips reading them."""
        lidar_sd = self.lidar_record(self.sample_tokens[index])
        points = load_points(self.dataroot / lidar_sd["filename"])
        labels = self.load_labels(lidar_sd["token"], len(points)) if self.has_labels else None
        return points, labels

    def __getitem__(self, index: int) -> Keyframe:
        sample_token = self.sample_tokens[index]
        lidar_sd = self.lidar_record(sample_token)
        camera_sds = self.camera_records(sample_token)
        points = load_points(self.dataroot / lidar_sd["filename"])
        labels = self.load_labels(lidar_sd["token"], len(points)) if self.has_labels else None
        images = np.stack([load_image(self.dataroot / sd["filename"], (sd["width"], sd["height"]), sd["token"])
                           for sd in camera_sds])
        T, Ks, sizes = self.projection_inputs(lidar_sd, camera_sds)
        pair_points, pair_pixels, _ = project_points_to_cameras(points[:, :3], T, Ks, sizes, self.min_depth)
        return Keyframe(sample_token, lidar_sd["token"], tuple(sd["token"] for sd in camera_sds), self.cameras,
                        points, labels, images, pair_points, pair_pixels)

"""Downstream data: label fractions by scene (SLidR's rule) and voxelised, labelled scans."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from cmcr_lite.data.augment import random_point_augmentation
from cmcr_lite.data.voxelize import voxelize
from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.models.minkunet import sparse_tensor_from_voxels


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
    and ``.sample_tokens``); with ``fraction == 1`` any sequence with ``load_scan`` is accepted. A
    dataset split by frame instead of scene (``SemanticKittiScans``) brings its own
    ``indices_for_fraction``, which is used.
    """
    if hasattr(keyframes, "indices_for_fraction"):
        return keyframes.indices_for_fraction(fraction)
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

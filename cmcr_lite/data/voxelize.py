"""Sparse voxelisation of a LiDAR scan with MinkowskiEngine, keeping the point <-> voxel maps.

CMCR pretrains on Cartesian voxels of 0.1 m (SLidR used cylindrical ones; both are here). A voxel
takes the features of one representative point, as the official pipeline does, and the inverse map
sends every point back to its voxel: predictions are evaluated per *point* through it, and
point->pixel pairs become voxel->pixel pairs through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Voxels:
    """coords: (V, 3) int32 voxel indices; point_of_voxel: (V,) int64 representative point of each
    voxel; voxel_of_point: (N,) int64 voxel of each input point (the inverse map)."""
    coords: np.ndarray
    point_of_voxel: np.ndarray
    voxel_of_point: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)


def grid_coordinates(points_xyz: np.ndarray, voxel_size: float = 0.1, cylindrical: bool = False) -> np.ndarray:
    """Integer grid coordinates (N, 3) int32 of points (N, 3) in metres.

    Cartesian: floor(xyz / voxel_size). Cylindrical (SLidR): floor of (rho / voxel_size,
    azimuth in degrees, z / voxel_size), i.e. 1-degree azimuth bins.
    """
    xyz = np.asarray(points_xyz, dtype=np.float64)
    if cylindrical:
        rho = np.hypot(xyz[:, 0], xyz[:, 1])
        phi = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
        xyz = np.stack([rho / voxel_size, phi, xyz[:, 2] / voxel_size], 1)
    else:
        xyz = xyz / voxel_size
    # floor, not truncation toward zero: -0.05 m and +0.05 m must not share a 0.1 m voxel
    return np.floor(xyz).astype(np.int32)


def voxelize(points_xyz: np.ndarray, voxel_size: float = 0.1, cylindrical: bool = False) -> Voxels:
    """Quantise points (N, 3) metres into unique voxels with ``MinkowskiEngine.utils.sparse_quantize``."""
    import MinkowskiEngine as ME
    import torch

    grid = grid_coordinates(points_xyz, voxel_size, cylindrical)
    if len(grid) == 0:
        raise ValueError("cannot voxelise an empty point cloud")
    coords, point_of_voxel, voxel_of_point = ME.utils.sparse_quantize(
        torch.from_numpy(grid), return_index=True, return_inverse=True)
    return Voxels(np.asarray(coords, dtype=np.int32), np.asarray(point_of_voxel, dtype=np.int64),
                  np.asarray(voxel_of_point, dtype=np.int64))

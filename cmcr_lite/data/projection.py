"""Point -> pixel pairs: project a LiDAR scan into every camera of its keyframe, vectorised.

The chain is the one nuScenes requires (and the devkit's ``map_pointcloud_to_image`` follows):

    lidar --(lidar calibrated_sensor)--> ego at lidar time --(lidar ego_pose)--> global
          --(camera ego_pose)^-1--> ego at camera time --(camera calibrated_sensor)^-1--> camera
          --(intrinsics K, divide by depth)--> pixels

The ego moves between the LiDAR sweep and each camera exposure (tens of milliseconds), so the two
ego poses differ; using one pose for both shifts the projections by up to half a metre here.
We compose the chain into one 4x4 matrix per camera and project all cameras in one batched product.
"""
from __future__ import annotations

import numpy as np


def quaternion_to_matrix(q_wxyz) -> np.ndarray:
    """(3,3) rotation matrix of a unit quaternion [w, x, y, z] (nuScenes/pyquaternion order)."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose_matrix(rotation_wxyz, translation) -> np.ndarray:
    """4x4 float64 transform from a nuScenes rotation quaternion [w,x,y,z] and translation (metres)."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    T[:3, 3] = translation
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform: [R | t]^-1 = [R^T | -R^T t]."""
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def cameras_from_lidar(nusc, lidar_sd: dict, camera_sds: list) -> np.ndarray:
    """(C, 4, 4) float64 transforms taking LiDAR-frame points to each camera's frame (metres, z = depth).

    ``lidar_sd`` and ``camera_sds`` are sample_data records of the same keyframe. The LiDAR half of
    the chain (lidar -> ego at lidar time -> global) is shared by all cameras and computed once.
    """
    def record_pose(table, token):
        rec = nusc.get(table, token)
        return pose_matrix(rec["rotation"], rec["translation"])

    global_from_lidar = record_pose("ego_pose", lidar_sd["ego_pose_token"]) @ record_pose(
        "calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    out = np.empty((len(camera_sds), 4, 4))
    for c, sd in enumerate(camera_sds):
        camera_from_global = invert_pose(record_pose("calibrated_sensor", sd["calibrated_sensor_token"])) @ \
            invert_pose(record_pose("ego_pose", sd["ego_pose_token"]))
        out[c] = camera_from_global @ global_from_lidar
    return out


def project_points_to_cameras(points_xyz: np.ndarray, camera_from_lidar: np.ndarray, intrinsics: np.ndarray,
                              image_sizes: np.ndarray, min_depth: float = 1.0, margin: float = 1.0):
    """Project LiDAR points into C cameras at once.

    Args:
        points_xyz: (N, 3) float, LiDAR frame, metres.
        camera_from_lidar: (C, 4, 4) float64 transforms (``cameras_from_lidar``).
        intrinsics: (C, 3, 3) float64 camera matrices K, pixels.
        image_sizes: (C, 2) int, (width, height) in pixels.
        min_depth: keep points more than this many metres in front of the camera (nuScenes: 1 m).
        margin: keep projections with ``margin < u < width - margin`` and likewise for v, in pixels:
            the devkit's 1-pixel margin by default, so the rounded pixel is always inside the image.

    Returns:
        pair_points: (M,) int64, index of the point in ``points_xyz``.
        pair_pixels: (M, 3) int64, (camera index, row, column) of the rounded pixel.
        uv: (M, 2) float64 (computed in float32), the sub-pixel projection (u = column, v = row).
    A point seen by two cameras appears in two pairs.
    """
    # float32, like the devkit's own projection: ~1e-4 px of rounding at 1600 px, and half the
    # memory traffic of float64 (the product below is memory-bound).
    pts = np.asarray(points_xyz, dtype=np.float32)
    # One (3C,3) x (3,N) product for all cameras: rows 0-1 of K [R|t] give u*z and v*z, and
    # row 2 of [R|t] gives the depth z itself (K's last row is (0, 0, 1)). The matrices are composed
    # in float64 and only then rounded to float32.
    P = np.concatenate([intrinsics[:, :2] @ camera_from_lidar[:, :3, :], camera_from_lidar[:, 2:3, :]], 1)
    P = P.astype(np.float32)  # (C, 3, 4)
    proj = (P[:, :, :3].reshape(-1, 3) @ pts.T + P[:, :, 3].reshape(-1, 1)).reshape(len(P), 3, -1)  # (C, 3, N)
    depth = proj[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = proj[:, 0] / depth, proj[:, 1] / depth
    w = image_sizes[:, 0:1].astype(np.float32)
    h = image_sizes[:, 1:2].astype(np.float32)
    keep = (depth > min_depth) & (u > margin) & (u < w - margin) & (v > margin) & (v < h - margin)
    cam_idx, point_idx = np.nonzero(keep)
    uu, vv = u[cam_idx, point_idx], v[cam_idx, point_idx]
    pair_pixels = np.stack([cam_idx, np.rint(vv), np.rint(uu)], 1).astype(np.int64)
    return point_idx.astype(np.int64), pair_pixels, np.stack([uu, vv], 1).astype(np.float64)

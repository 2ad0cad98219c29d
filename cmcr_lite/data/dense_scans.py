"""Synthetic keyframes at nuScenes density, made on the fly: what one step costs, and how the loss
terms pull, at the paper's sizes without the data set.

A 32-beam ray cast of about 34k points (ground and walls 5-50 m away), six 1600x900 camera images of
smooth noise, and point->pixel pairs from six pinhole cameras 60 degrees apart. No labels that mean
anything (random classes): these scans time steps and measure gradients, they teach nothing.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmcr_lite.data.nuscenes_loader import CAMERAS, Keyframe


class NuScenesDensityScans(torch.utils.data.Dataset):
    """``n`` nuScenes-like keyframes made on the fly (deterministic per index); ``dataroot`` holds
    only the SLIC cache. Points (N, 4): x, y, z metres, intensity 0..255."""

    def __init__(self, n: int, dataroot: Path, points: int = 34_000, size=(900, 1600), seed: int = 0):
        self.n, self.dataroot, self.points, self.size, self.seed = n, Path(dataroot), points, size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i: int) -> Keyframe:
        rng = np.random.default_rng([self.seed, i])
        beams = 32
        n_az = self.points // beams
        elev = np.deg2rad(np.linspace(-30, 10, beams))[:, None]
        az = rng.uniform(0, 2 * np.pi, n_az)[None]
        wall = rng.uniform(5, 50, n_az)[None]
        t_ground = np.where(elev < 0, 1.8 / np.tan(np.maximum(-elev, 1e-6)), np.inf)
        t = np.minimum(t_ground, wall / np.cos(elev))
        xyz = np.stack([t * np.cos(elev) * np.cos(az), t * np.cos(elev) * np.sin(az),
                        np.broadcast_to(-1.8 + t * np.sin(elev), t.shape)], -1).reshape(-1, 3)
        xyz += rng.normal(0, 0.02, xyz.shape)
        points = np.concatenate([xyz, rng.uniform(0, 255, (len(xyz), 1))], 1).astype(np.float32)
        H, W = self.size
        # smooth images (coarse noise, bilinear upsampling) so SLIC sees regions, not pixel noise
        coarse = torch.from_numpy(rng.uniform(0, 255, (len(CAMERAS), 3, 12, 20)).astype(np.float32))
        images = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
        images = images.clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        pair_points, pair_pixels = [], []
        focal = W / 2 / math.tan(math.radians(35))               # 70 degrees of horizontal field of view
        for c in range(len(CAMERAS)):
            yaw = c * np.pi / 3
            forward = xyz[:, 0] * np.cos(yaw) + xyz[:, 1] * np.sin(yaw)
            right = xyz[:, 0] * np.sin(yaw) - xyz[:, 1] * np.cos(yaw)
            ok = forward > 1.0
            u = focal * right[ok] / forward[ok] + W / 2
            v = -focal * xyz[ok, 2] / forward[ok] + H / 2                # cameras at the sensor height
            inside = (u > 0) & (u < W - 1) & (v > 0) & (v < H - 1)
            idx = np.nonzero(ok)[0][inside]
            pair_points.append(idx)
            pair_pixels.append(np.stack([np.full(len(idx), c), np.round(v[inside]), np.round(u[inside])], 1))
        tokens = tuple(f"scan{i}-cam{c}" for c in range(len(CAMERAS)))
        return Keyframe(f"scan{i}", f"scan{i}-lidar", tokens, CAMERAS, points,
                        rng.integers(1, 17, len(points)), images, np.concatenate(pair_points).astype(np.int64),
                        np.concatenate(pair_pixels).astype(np.int64))

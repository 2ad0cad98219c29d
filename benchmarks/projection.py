"""Point -> pixel pairs of one scan x 6 cameras: our vectorised projection vs the devkit's loop.

    .venv/bin/python benchmarks/projection.py [--root DATAROOT] [--version v1.0-synthetic] [--repeats 5]

Without ``--root`` a 1-scene x 1-keyframe synthetic dataset is generated into a temporary folder.

Ours, per repetition: read the ``.pcd.bin`` (``load_points``), build the six camera-from-LiDAR
transforms, intrinsics and sizes from the tables (``NuScenesKeyframes.projection_inputs``, with its
calibration checks) and project all cameras in one batched call (``project_points_to_cameras``).
Devkit, per repetition: ``nusc.explorer.map_pointcloud_to_image(lidar, camera)`` once per camera,
which reads the scan again for each camera and opens each JPEG (``Image.open`` is lazy: it parses
the header for the size and decodes no pixels). It cannot be called without that image access, so
ours is also timed with (a) the same header-only ``Image.open`` of the six JPEGs and (b) full decoding
of the six JPEGs (``load_image``, what our loader does and the devkit does not).

The outputs are first checked to be the same: same kept points per camera and pixels within 0.5 px
(the devkit computes in float32 through the global frame, so a point within 0.01 px of the image
border may fall on either side; such points are listed and excluded). Timings are best of
``--repeats``; the ratios come last.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes, load_image, load_points, open_nuscenes
from cmcr_lite.data.projection import project_points_to_cameras
from cmcr_lite.data.synthetic import DEFAULT_VERSION, generate

UV_TOL, BORDER_EPS = 0.5, 0.01


def ours(kf: NuScenesKeyframes, lidar_sd: dict, camera_sds: list, images: str = "none"):
    """Pairs of one scan x cameras; images: 'none', 'open' (header only) or 'decode' (full RGB)."""
    points = load_points(kf.dataroot / lidar_sd["filename"])
    if images == "open":
        for sd in camera_sds:
            with Image.open(kf.dataroot / sd["filename"]) as im:
                _ = im.size
    elif images == "decode":
        for sd in camera_sds:
            load_image(kf.dataroot / sd["filename"], (sd["width"], sd["height"]), sd["token"])
    T, K, sizes = kf.projection_inputs(lidar_sd, camera_sds)
    return project_points_to_cameras(points[:, :3], T, K, sizes)


def devkit(nusc, lidar_sd: dict, camera_sds: list):
    """Per camera the (n, 2) sub-pixel coordinates of the kept points, in point-index order."""
    return [nusc.explorer.map_pointcloud_to_image(lidar_sd["token"], sd["token"])[0][:2].T for sd in camera_sds]


def check_same(result, reference, camera_sds) -> int:
    """Assert equal kept points and pixels per camera; return the number of excluded border points."""
    _, pair_pixels, uv = result
    excluded = 0
    for c, (sd, ref) in enumerate(zip(camera_sds, reference)):
        mine = uv[pair_pixels[:, 0] == c]
        w, h = sd["width"], sd["height"]

        def inner(a):
            near = ((np.abs(a[:, 0] - 1) < BORDER_EPS) | (np.abs(a[:, 0] - (w - 1)) < BORDER_EPS)
                    | (np.abs(a[:, 1] - 1) < BORDER_EPS) | (np.abs(a[:, 1] - (h - 1)) < BORDER_EPS))
            return a[~near], int(near.sum())

        if len(mine) != len(ref):
            (mine, n1), (ref, n2) = inner(mine), inner(ref)
            excluded += n1 + n2
        assert len(mine) == len(ref), f"{sd['channel']}: {len(mine)} points kept by us, {len(ref)} by the devkit"
        err = np.abs(mine - ref).max() if len(mine) else 0.0
        assert err <= UV_TOL, f"{sd['channel']}: pixels differ by up to {err:.3f} px"
    return excluded


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="dataset root (default: generate a 1x1 synthetic set in a temp folder)")
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.add_argument("--sample", type=int, default=0, help="keyframe index (default 0)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root) if a.root else generate(Path(tmp) / "nuscenes", n_scenes=1, samples_per_scene=1,
                                                    seed=0, version=a.version, progress=False)
        nusc = open_nuscenes(root, a.version)
        kf = NuScenesKeyframes(root, a.version, nusc=nusc)
        token = kf.sample_tokens[a.sample]
        lidar_sd, camera_sds = kf.lidar_record(token), kf.camera_records(token)

        result = ours(kf, lidar_sd, camera_sds)
        excluded = check_same(result, devkit(nusc, lidar_sd, camera_sds), camera_sds)
        n_points = len(load_points(root / lidar_sd["filename"]))
        print(f"{root} sample {token}: {n_points} points, {len(camera_sds)} cameras, {len(result[0])} pairs; "
              f"same kept points and pixels (within {UV_TOL} px) as the devkit"
              + (f", {excluded} float32 border cases excluded" if excluded else ""))

        t_dev = best_of(lambda: devkit(nusc, lidar_sd, camera_sds), a.repeats)
        t_ours = best_of(lambda: ours(kf, lidar_sd, camera_sds), a.repeats)
        t_open = best_of(lambda: ours(kf, lidar_sd, camera_sds, "open"), a.repeats)
        t_decode = best_of(lambda: ours(kf, lidar_sd, camera_sds, "decode"), a.repeats)
    print(f"best of {a.repeats}:")
    print(f"  devkit, 6 x map_pointcloud_to_image (6 scan reads, 6 lazy Image.open) {1e3 * t_dev:8.2f} ms")
    print(f"  ours, scan read + transforms + batched projection               {1e3 * t_ours:8.2f} ms")
    print(f"  ours + 6 lazy Image.open (same image access as the devkit)      {1e3 * t_open:8.2f} ms")
    print(f"  ours + 6 full JPEG decodes (our loader; the devkit decodes none) {1e3 * t_decode:8.2f} ms")
    print(f"devkit/ours = {t_dev / t_decode:.1f}x with our full JPEG decodes, "
          f"{t_dev / t_open:.1f}x with the same lazy image opens, "
          f"{t_dev / t_ours:.1f}x without images")


if __name__ == "__main__":
    main()

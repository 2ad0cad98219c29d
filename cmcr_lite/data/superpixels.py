"""SLIC superpixels of camera images, computed once and cached on disk (SLidR's first step).

SLidR (and CMCR's data pipeline) segments every camera image with scikit-image's SLIC, with
150 segments, compactness 6 and Gaussian smoothing sigma 3, at the image's full resolution.
Only SLidR reads them (``PretrainConfig`` switches them off for PPKT and CMCR). We store one PNG per
camera sample_data token in ``<cache>/slic_<segments>_<compactness>_<sigma>/<token>.png`` (uint8, or
uint16 when there can be more than 256 segments), where ``<cache>`` is ``pipeline.superpixel_cache``
or, by default, ``<dataroot>/superpixels``. A read-only dataset folder is never written to: set a
cache directory instead. Precompute them all before training, with worker processes:

    python -m cmcr_lite.data.superpixels --dataroot /data/sets/nuscenes --version v1.0-trainval \
        --workers 16 --cache-dir /scratch/superpixels
    # then pretrain SLidR with --set pipeline.superpixel_cache=/scratch/superpixels
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cmcr_lite.runtime import CommandLineParser, InputError, reports_input_errors


@dataclass(frozen=True)
class SlicParams:
    """SLIC settings; the defaults are the paper's (SLidR/CMCR ``superpixel_segmenter.py``)."""
    n_segments: int = 150
    compactness: float = 6.0
    sigma: float = 3.0

    @property
    def folder_name(self) -> str:
        return f"slic_{self.n_segments}_{self.compactness:g}_{self.sigma:g}"


def compute_superpixels(image: np.ndarray, params: SlicParams = SlicParams()) -> np.ndarray:
    """SLIC segment ids (H, W) int64 (0..K-1) of an (H, W, 3) uint8 RGB image."""
    from skimage.segmentation import slic

    return slic(image, n_segments=params.n_segments, compactness=params.compactness, sigma=params.sigma,
                start_label=0, channel_axis=-1).astype(np.int64)


class SuperpixelCacheError(OSError):
    """The superpixel cache folder cannot be written; the message names it and the fix."""


def superpixel_dir(dataroot: str | os.PathLike, params: SlicParams = SlicParams(),
                   cache: str | os.PathLike | None = None) -> Path:
    """The folder of the cached PNGs: ``<cache or dataroot/superpixels>/slic_<n>_<c>_<sigma>``."""
    return (Path(cache) if cache is not None else Path(dataroot) / "superpixels") / params.folder_name


def _writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuperpixelCacheError(f"cannot create the superpixel cache {folder} ({e.strerror}); the dataset "
                                   f"folder may be read-only: set pipeline.superpixel_cache=DIR (or --cache-dir "
                                   f"DIR of python -m cmcr_lite.data.superpixels) to a writable folder") from None
    if not os.access(folder, os.W_OK):
        raise SuperpixelCacheError(f"the superpixel cache {folder} is not writable; set "
                                   f"pipeline.superpixel_cache=DIR (or --cache-dir DIR) to a writable folder")
    return folder


def _write_png_atomic(path: Path, segments: np.ndarray):
    from cmcr_lite.runtime import atomic_path

    dtype = np.uint8 if segments.max() < 256 else np.uint16
    with atomic_path(path) as tmp:  # a reader never sees a half-written PNG
        Image.fromarray(segments.astype(dtype)).save(tmp, format="PNG")


def load_or_compute_superpixels(dataroot, camera_token: str, image: np.ndarray,
                                params: SlicParams = SlicParams(), cache=None) -> np.ndarray:
    """Superpixels (H, W) int64 of one camera image, from the cache or computed and cached now
    (in :func:`superpixel_dir` of ``dataroot`` / ``cache``)."""
    folder = superpixel_dir(dataroot, params, cache)
    path = folder / f"{camera_token}.png"
    if path.is_file():
        segments = np.asarray(Image.open(path)).astype(np.int64)
        if segments.shape != image.shape[:2]:
            raise ValueError(f"cached superpixels {path} are {segments.shape}, image is {image.shape[:2]}; "
                             f"delete {folder} to recompute")
        return segments
    _writable_folder(folder)
    segments = compute_superpixels(image, params)
    _write_png_atomic(path, segments)
    return segments


def _compute_one(job):
    """Worker: read one camera image, segment it, write its PNG (``job`` = path, size, token, folder, params)."""
    from cmcr_lite.data.nuscenes_loader import load_image

    image_path, size, token, folder, params = job
    _write_png_atomic(folder / f"{token}.png", compute_superpixels(load_image(image_path, size, token), params))
    return token


def cache_all_superpixels(keyframes, params: SlicParams = SlicParams(), progress: bool = True, workers: int = 0,
                          cache=None) -> Path:
    """Compute (once) the superpixels of every camera image of a ``NuScenesKeyframes``; images already
    cached are skipped, so an interrupted run resumes. ``workers`` > 0 segments in that many processes.
    Returns the cache folder."""
    folder = _writable_folder(superpixel_dir(keyframes.dataroot, params, cache))
    jobs = [(keyframes.dataroot / sd["filename"], (sd["width"], sd["height"]), sd["token"], folder, params)
            for token in keyframes.sample_tokens for sd in keyframes.camera_records(token)
            if not (folder / f"{sd['token']}.png").is_file()]
    bar = tqdm(total=len(jobs), desc="SLIC superpixels", unit="image", disable=not progress or not jobs)
    if workers > 0 and len(jobs) > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_compute_one, jobs, chunksize=4):
                bar.update()
    else:
        for job in jobs:
            _compute_one(job)
            bar.update()
    bar.close()
    return folder


@reports_input_errors
def main(argv=None):
    p = CommandLineParser(prog="python -m cmcr_lite.data.superpixels",
                          description="Precompute SLIC superpixels of every camera image (SLidR's first step; only "
                                      "SLidR pretraining reads them).")
    p.add_argument("--dataroot", required=True, help="nuScenes dataset root")
    p.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-trainval, v1.0-mini")
    p.add_argument("--split", default="all", help="'all' (default), 'train', 'val' or a devkit split name")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--cache-dir", help="where the PNGs go (default <dataroot>/superpixels); pass the same folder "
                                       "to pretraining as pipeline.superpixel_cache")
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error(f"--workers must be >= 0 (0: segment in this process), got {args.workers}")
    from cmcr_lite.data.nuscenes_loader import DatasetError, NuScenesKeyframes

    try:
        keyframes = NuScenesKeyframes(args.dataroot, args.version, split=args.split)
        folder = cache_all_superpixels(keyframes, workers=args.workers, cache=args.cache_dir)
    except (DatasetError, SuperpixelCacheError) as e:
        raise InputError(e) from None
    n = sum(1 for _ in folder.glob("*.png"))
    print(f"superpixels: {folder} ({n} images)")


if __name__ == "__main__":
    main()

"""SLIC superpixels of camera images, computed once and cached on disk next to the dataset.

SLidR (and CMCR's data pipeline) segments every camera image with scikit-image's SLIC, with
150 segments, compactness 6 and Gaussian smoothing sigma 3, at the image's full resolution.
We store one PNG per camera sample_data token in
``<dataroot>/superpixels/slic_<segments>_<compactness>_<sigma>/<token>.png`` (uint8, or uint16
when there can be more than 256 segments), so a second run reads instead of recomputing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm


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


def superpixel_dir(dataroot: str | os.PathLike, params: SlicParams = SlicParams()) -> Path:
    return Path(dataroot) / "superpixels" / params.folder_name


def _write_png_atomic(path: Path, segments: np.ndarray):
    dtype = np.uint8 if segments.max() < 256 else np.uint16
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    Image.fromarray(segments.astype(dtype)).save(tmp)
    tmp.replace(path)  # a reader never sees a half-written PNG


def load_or_compute_superpixels(dataroot, camera_token: str, image: np.ndarray,
                                params: SlicParams = SlicParams()) -> np.ndarray:
    """Superpixels (H, W) int64 of one camera image, from the cache or computed and cached now."""
    folder = superpixel_dir(dataroot, params)
    path = folder / f"{camera_token}.png"
    if path.is_file():
        segments = np.asarray(Image.open(path)).astype(np.int64)
        if segments.shape != image.shape[:2]:
            raise ValueError(f"cached superpixels {path} are {segments.shape}, image is {image.shape[:2]}; "
                             f"delete {folder} to recompute")
        return segments
    folder.mkdir(parents=True, exist_ok=True)
    segments = compute_superpixels(image, params)
    _write_png_atomic(path, segments)
    return segments


def cache_all_superpixels(keyframes, params: SlicParams = SlicParams(), progress: bool = True) -> Path:
    """Compute (once) the superpixels of every camera image of a ``NuScenesKeyframes``."""
    from cmcr_lite.data.nuscenes_loader import load_image

    folder = superpixel_dir(keyframes.dataroot, params)
    todo = []
    for token in keyframes.sample_tokens:
        for sd in keyframes.camera_records(token):
            if not (folder / f"{sd['token']}.png").is_file():
                todo.append(sd)
    for sd in tqdm(todo, desc="SLIC superpixels", unit="image", disable=not progress or not todo):
        image = load_image(keyframes.dataroot / sd["filename"], (sd["width"], sd["height"]), sd["token"])
        load_or_compute_superpixels(keyframes.dataroot, sd["token"], image, params)
    return folder

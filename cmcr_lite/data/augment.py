"""Augmentations that keep points, images and point->pixel pairs consistent.

Point-cloud augmentations (rotation about z, axis flips) move points but not their indices, so the
pairs stay valid untouched. Image augmentations (resized crop, horizontal flip) move pixels, so they
remap the pairs' (row, column) and drop pairs that leave the crop. Each function takes a
``numpy.random.Generator`` so a run is reproducible from its seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from PIL import Image


def rotate_z(xyz: np.ndarray, angle: float) -> np.ndarray:
    """Rotate points (N, 3) metres by ``angle`` radians about the z axis."""
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=xyz.dtype)
    return xyz @ R.T


def flip_axes(xyz: np.ndarray, flip_x: bool, flip_y: bool) -> np.ndarray:
    """Mirror points (N, 3) across the y-z plane (``flip_x``) and/or the x-z plane (``flip_y``)."""
    out = xyz.copy()
    if flip_x:
        out[:, 0] = -out[:, 0]
    if flip_y:
        out[:, 1] = -out[:, 1]
    return out


def random_point_augmentation(xyz: np.ndarray, rng: np.random.Generator, rotate: bool = True,
                              flip: bool = True) -> np.ndarray:
    """The paper's point-cloud augmentation: z rotation in [0, 2 pi), x and y flips with p = 0.5 each."""
    if rotate:
        xyz = rotate_z(xyz, rng.uniform(0, 2 * math.pi))
    if flip:
        xyz = flip_axes(xyz, rng.random() < 0.5, rng.random() < 0.5)
    return xyz


def sample_crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.3, 1.0), ratio=(14 / 9, 17 / 9)):
    """A random crop (top, left, crop_height, crop_width) in pixels covering ``scale`` of the image
    area with aspect ratio width/height in ``ratio`` (falls back to the largest centred box)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, int(round(width / aspect))) if width / height < aspect else (int(round(height * aspect)), height)
    return (height - h) // 2, (width - w) // 2, h, w


def crop_pixels(rows: np.ndarray, cols: np.ndarray, box, out_size):
    """Map pixel indices through a crop box resized to ``out_size`` (height, width).

    A source pixel's centre (r + 0.5) lands at (r + 0.5 - top) * out_h / h in the output, and the
    output pixel containing it is the floor of that. Returns new rows, cols and a keep mask.
    """
    top, left, h, w = box
    out_h, out_w = out_size
    new_r = np.floor((rows - top + 0.5) * out_h / h).astype(np.int64)
    new_c = np.floor((cols - left + 0.5) * out_w / w).astype(np.int64)
    keep = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return new_r, new_c, keep


def resize_crop_image(image: np.ndarray, box, out_size, nearest: bool = False) -> np.ndarray:
    """Crop ``image`` (H, W[, 3]) to ``box`` and resize to ``out_size`` (height, width);
    bilinear for colours, nearest for label maps such as superpixels."""
    top, left, h, w = box
    patch = image[top:top + h, left:left + w]
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if patch.dtype not in (np.uint8,) and not nearest:
        raise TypeError("bilinear resize expects uint8 images")
    if nearest:
        # label maps may exceed 8 bits: resize them as 32-bit integer images
        return np.asarray(Image.fromarray(patch.astype(np.int32)).resize(out_size[::-1], resample)).astype(image.dtype)
    return np.asarray(Image.fromarray(patch).resize(out_size[::-1], resample))


def crop_and_resize(images: np.ndarray, pair_pixels: np.ndarray, boxes: list, out_size,
                    superpixels: np.ndarray | None = None):
    """Crop camera ``c`` of ``images`` (C, H, W, 3) uint8 to ``boxes[c]`` and resize to ``out_size``.

    Returns images (C, h, w, 3) uint8, the surviving pairs remapped (M', 3) (camera, row, col), the
    keep mask (M,) bool over the input ``pair_pixels``, and the cropped superpixels (or None).
    """
    C = len(images)
    out_images = np.empty((C, out_size[0], out_size[1], 3), np.uint8)
    out_sp = None if superpixels is None else np.empty((C,) + tuple(out_size), superpixels.dtype)
    new_pixels = pair_pixels.copy()
    keep = np.zeros(len(pair_pixels), bool)
    for c, box in enumerate(boxes):
        idx = np.nonzero(pair_pixels[:, 0] == c)[0]
        new_pixels[idx, 1], new_pixels[idx, 2], keep[idx] = crop_pixels(pair_pixels[idx, 1], pair_pixels[idx, 2],
                                                                        box, out_size)
        out_images[c] = resize_crop_image(images[c], box, out_size)
        if superpixels is not None:
            out_sp[c] = resize_crop_image(superpixels[c], box, out_size, nearest=True)
    return out_images, new_pixels[keep], keep, out_sp


def random_resized_crop(images: np.ndarray, pair_pixels: np.ndarray, rng: np.random.Generator,
                        out_size=(224, 416), scale=(0.3, 1.0), ratio=(14 / 9, 17 / 9), min_pairs: int = 1024,
                        min_fraction: float = 0.75, superpixels: np.ndarray | None = None):
    """Crop each camera image independently and resize it to ``out_size`` (height, width) pixels.

    As in the paper's pipeline, a camera's crop is redrawn (up to 10 times) until it keeps more than
    ``min_pairs`` pairs or more than ``min_fraction`` of them. Same returns as ``crop_and_resize``.
    """
    C, H, W = images.shape[:3]
    boxes = []
    for c in range(C):
        sel = pair_pixels[:, 0] == c
        rows, cols = pair_pixels[sel, 1], pair_pixels[sel, 2]
        for _ in range(10):
            box = sample_crop_box(rng, H, W, scale, ratio)
            kept = crop_pixels(rows, cols, box, out_size)[2].sum()
            if kept > min_pairs or kept > min_fraction * len(rows):
                break
        boxes.append(box)
    return crop_and_resize(images, pair_pixels, boxes, out_size, superpixels)


def random_horizontal_flip(images: np.ndarray, pair_pixels: np.ndarray, rng: np.random.Generator, p: float = 0.5,
                           superpixels: np.ndarray | None = None):
    """Mirror each camera image left-right with probability ``p``; column c becomes W - 1 - c.

    Returns new images, pair_pixels, superpixels (copies) and the (C,) bool array of flipped cameras.
    """
    images, pair_pixels = images.copy(), pair_pixels.copy()
    superpixels = None if superpixels is None else superpixels.copy()
    flipped = rng.random(len(images)) < p
    W = images.shape[2]
    for c in np.nonzero(flipped)[0]:
        images[c] = images[c, :, ::-1]
        if superpixels is not None:
            superpixels[c] = superpixels[c, :, ::-1]
        sel = pair_pixels[:, 0] == c
        pair_pixels[sel, 2] = W - 1 - pair_pixels[sel, 2]
    return images, pair_pixels, superpixels, flipped


# ------------------------------------------------------------------------------------------ two views of one image
# (the self-supervised image teacher's augmentation: two overlapping crops and their pixel correspondences)
@dataclass(frozen=True)
class View:
    """One augmented view of a source image: ``box`` = (top, left, height, width) source pixels,
    resized to ``out_size`` = (height, width), then mirrored left-right if ``flip``."""
    box: Tuple[int, int, int, int]
    out_size: Tuple[int, int]
    flip: bool


def _overlap(a, b) -> Tuple[int, int, int, int]:
    """Intersection (top, left, height, width) of two boxes; height/width 0 when disjoint."""
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return top, left, max(0, bottom - top), max(0, right - left)


def sample_view_pair(rng: np.random.Generator, height: int, width: int, cfg,
                     max_tries: int = 20) -> Tuple[View, View]:
    """Two crops of a ``height`` x ``width`` image whose intersection covers at least
    ``cfg.min_overlap`` of the smaller crop (after ``max_tries`` draws the second crop is the first).
    ``cfg``: anything with ``crop_size``, ``crop_scale``, ``crop_ratio``, ``min_overlap`` and
    ``flip_prob`` (the teacher's ``TeacherConfig``)."""
    box1 = sample_crop_box(rng, height, width, cfg.crop_scale, cfg.crop_ratio)
    box2 = box1
    for _ in range(max_tries):
        cand = sample_crop_box(rng, height, width, cfg.crop_scale, cfg.crop_ratio)
        _, _, oh, ow = _overlap(box1, cand)
        if oh * ow >= cfg.min_overlap * min(box1[2] * box1[3], cand[2] * cand[3]) and oh * ow > 0:
            box2 = cand
            break
    flips = rng.random(2) < cfg.flip_prob
    return (View(tuple(box1), tuple(cfg.crop_size), bool(flips[0])),
            View(tuple(box2), tuple(cfg.crop_size), bool(flips[1])))


def render_view(image: np.ndarray, view: View, nearest: bool = False) -> np.ndarray:
    """Crop ``image`` (H, W[, 3]) to ``view.box``, resize to ``view.out_size`` (bilinear for uint8
    colours, nearest for label or coordinate maps) and mirror it if ``view.flip``."""
    out = resize_crop_image(image, view.box, view.out_size, nearest=nearest)
    return np.ascontiguousarray(out[:, ::-1]) if view.flip else out


def sample_correspondences(rng: np.random.Generator, view1: View, view2: View, n: int):
    """Pixels of two views that show the same source pixel.

    Draws up to ``n`` distinct source pixels inside both crops and maps each through both views with
    :func:`crop_pixels` (the output pixel containing the source pixel's
    centre), then through the flips (column c -> out_w - 1 - c).

    Returns:
        pix1: (n', 2) int64 (row, col) in view 1; pix2: (n', 2) int64 in view 2;
        src: (n', 2) int64 (row, col) source pixels; n' = min(n, overlap area), 0 if disjoint.
    """
    top, left, h, w = _overlap(view1.box, view2.box)
    if h * w == 0:
        empty = np.zeros((0, 2), np.int64)
        return empty, empty.copy(), empty.copy()
    flat = rng.choice(h * w, size=min(n, h * w), replace=False)
    src = np.stack([top + flat // w, left + flat % w], 1).astype(np.int64)
    out = []
    for v in (view1, view2):
        r, c, keep = crop_pixels(src[:, 0], src[:, 1], v.box, v.out_size)
        assert keep.all(), "source pixel outside its crop"
        if v.flip:
            c = v.out_size[1] - 1 - c
        out.append(np.stack([r, c], 1))
    return out[0], out[1], src


def photometric_jitter(views: torch.Tensor, generator: torch.Generator, brightness: float,
                       contrast: float) -> torch.Tensor:
    """Mild per-view brightness and contrast jitter of ``views`` (B, 3, H, W) float in [0, 1].

    Deliberately NO hue, saturation or colour jitter and no blur: the appearance-only twins
    (asphalt vs paving, red bus vs yellow construction vehicle) differ only in colour and texture,
    and that is exactly what the teacher must keep. Invariance to colour would erase it.
    """
    B = views.shape[0]
    b = 1 + (torch.rand(B, 1, 1, 1, generator=generator) * 2 - 1) * brightness
    c = 1 + (torch.rand(B, 1, 1, 1, generator=generator) * 2 - 1) * contrast
    grey = views.mean(dim=(1, 2, 3), keepdim=True)
    return ((views * b - grey * b) * c + grey * b).clamp(0, 1)

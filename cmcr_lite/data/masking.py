"""Random patch masks for masked image modelling (MIM), and dropping the pairs they hide.

CMCR masks half of the camera images (probability 0.5 per image): the image is cut into 16x16-pixel
patches and 50 % of them are zeroed in the network input, while the unmasked image stays the
reconstruction target. A LiDAR point whose pixel is masked has nothing to be paired with, so its
pair is dropped.

The official code drops them with ``matching_points[1 - mask[r, c]]``: ``1 - bool_array`` is an
*integer* array of 0s and 1s, so NumPy reads it as fancy indices and every pair collapses onto
pair #0 or pair #1 (docs/paper.md section 6.3). The correct filter is the boolean ``~mask[r, c]``;
``drop_masked_pairs`` does that, and ``tests/test_masking.py`` shows the difference.

Where the masks are drawn: the released code draws its 16-px patches on the raw 1600x900 image and
then crops/resizes to 224x416, so a patch covers about 4-8 input pixels; ``PairedScanDataset`` draws
them on the network's crop, so a patch is 16x16 input pixels, as in masked autoencoders.
"""
from __future__ import annotations

import numpy as np


def random_patch_mask(height: int, width: int, rng: np.random.Generator, patch: int = 16,
                      ratio: float = 0.5) -> np.ndarray:
    """(height, width) bool mask, True = masked, made of ``patch``-pixel squares; exactly
    round(ratio * number of patches) patches are masked (partial patches at the border count)."""
    ph, pw = -(-height // patch), -(-width // patch)
    n = ph * pw
    flat = np.zeros(n, bool)
    flat[rng.permutation(n)[:int(round(ratio * n))]] = True
    return np.kron(flat.reshape(ph, pw), np.ones((patch, patch), bool))[:height, :width].astype(bool)


def random_image_masks(n_images: int, height: int, width: int, rng: np.random.Generator, prob: float = 0.5,
                       patch: int = 16, ratio: float = 0.5) -> np.ndarray:
    """(C, H, W) bool masks: each image is masked with probability ``prob``, else all False."""
    masks = np.zeros((n_images, height, width), bool)
    for c in range(n_images):
        if rng.random() < prob:
            masks[c] = random_patch_mask(height, width, rng, patch, ratio)
    return masks


def drop_masked_pairs(pair_pixels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Boolean keep-mask (M,) of the pairs whose pixel is *not* masked.

    pair_pixels: (M, 3) int64 (camera, row, col); masks: (C, H, W) bool, True = masked.
    """
    return ~masks[pair_pixels[:, 0], pair_pixels[:, 1], pair_pixels[:, 2]]

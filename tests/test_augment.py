"""Augmentations keep points, images and pairs consistent."""
import math

import numpy as np

from cmcr_lite.data.augment import (crop_and_resize, crop_pixels, flip_axes, random_horizontal_flip,
                                    random_resized_crop, rotate_z, sample_crop_box)


def test_rotate_and_flip_closed_form():
    p = np.array([[1.0, 0.0, 2.0], [0.0, 2.0, -1.0]])
    r = rotate_z(p, math.pi / 2)
    assert np.allclose(r, [[0, 1, 2], [-2, 0, -1]])
    assert np.allclose(flip_axes(p, True, False), [[-1, 0, 2], [0, 2, -1]])
    assert np.allclose(flip_axes(p, False, True), [[1, 0, 2], [0, -2, -1]])
    # distances to the sensor are preserved
    assert np.allclose(np.linalg.norm(r, axis=1), np.linalg.norm(p, axis=1))


def test_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = sample_crop_box(rng, 360, 640, (0.3, 1.0), (14 / 9, 17 / 9))
        assert 0 <= top and top + h <= 360 and 0 <= left and left + w <= 640
        assert 0.29 <= h * w / (360 * 640) <= 1.0
        assert 14 / 9 - 0.02 <= w / h <= 17 / 9 + 0.02


def _coordinate_map(H, W):
    """A label map whose value at (r, c) encodes the position: r * W + c."""
    return (np.arange(H)[:, None] * W + np.arange(W)[None, :]).astype(np.int64)


def test_crop_pairs_land_on_the_same_source_pixel():
    """Crop+resize a map of source coordinates with nearest resizing: at each remapped pair pixel we
    must read back (almost) the pair's original pixel."""
    rng = np.random.default_rng(1)
    H, W, out = 360, 640, (112, 208)
    n = 5000
    pixels = np.stack([np.zeros(n, np.int64), rng.integers(0, H, n), rng.integers(0, W, n)], 1)
    coord = _coordinate_map(H, W)[None]
    images = np.zeros((1, H, W, 3), np.uint8)
    box = (50, 100, 180, 330)
    _, new, keep, sp = crop_and_resize(images, pixels, [box], out, superpixels=coord)
    src = sp[0][new[:, 1], new[:, 2]]
    src_r, src_c = src // W, src % W
    scale = (box[2] / out[0], box[3] / out[1])  # source pixels per output pixel
    assert np.abs(src_r - pixels[keep, 1]).max() <= scale[0]
    assert np.abs(src_c - pixels[keep, 2]).max() <= scale[1]
    # exactly the pairs inside the box survive
    inside = (pixels[:, 1] >= 50) & (pixels[:, 1] < 230) & (pixels[:, 2] >= 100) & (pixels[:, 2] < 430)
    assert np.array_equal(keep, inside)


def test_random_crop_on_real_keyframe_keeps_colours(keyframes):
    """After a random resized crop, the pixel a point pairs with still shows that point's colour."""
    kf = keyframes[0]
    rng = np.random.default_rng(2)
    images, pixels, keep, _ = random_resized_crop(kf.images, kf.pair_pixels, rng, (224, 416), min_pairs=500)
    before = kf.images[kf.pair_pixels[keep, 0], kf.pair_pixels[keep, 1], kf.pair_pixels[keep, 2]].astype(float)
    after = images[pixels[:, 0], pixels[:, 1], pixels[:, 2]].astype(float)
    assert keep.sum() > 1000
    # bilinear resizing blurs edges a little; on average the colour is the same
    assert np.abs(before - after).mean() < 12
    # a wrong remapping (e.g. forgetting the crop offset) is far off
    wrong = images[pixels[:, 0], np.clip(pixels[:, 1] + 15, 0, 223), pixels[:, 2]].astype(float)
    assert np.abs(before - wrong).mean() > 2 * np.abs(before - after).mean()


def test_horizontal_flip_moves_pairs_with_pixels():
    rng = np.random.default_rng(3)
    H, W = 20, 30
    coord = np.repeat(_coordinate_map(H, W)[None], 4, 0)
    images = rng.integers(0, 255, (4, H, W, 3)).astype(np.uint8)
    pixels = np.stack([rng.integers(0, 4, 100), rng.integers(0, H, 100), rng.integers(0, W, 100)], 1)
    im2, px2, sp2, flipped = random_horizontal_flip(images, pixels, rng, 0.5, coord)
    assert 0 < flipped.sum() < 4
    assert np.array_equal(im2[px2[:, 0], px2[:, 1], px2[:, 2]], images[pixels[:, 0], pixels[:, 1], pixels[:, 2]])
    assert np.array_equal(sp2[px2[:, 0], px2[:, 1], px2[:, 2]], coord[pixels[:, 0], pixels[:, 1], pixels[:, 2]])


def test_crop_pixels_formula():
    r, c, keep = crop_pixels(np.array([10, 10, 9]), np.array([20, 39, 20]), (10, 20, 20, 20), (10, 10))
    assert keep.tolist() == [True, True, False]
    assert r[:2].tolist() == [0, 0] and c[:2].tolist() == [0, 9]

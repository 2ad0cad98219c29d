"""MIM masks and the boolean removal of masked pairs (the official integer-index bug, docs/paper.md §6.3)."""
import numpy as np
import pytest

from cmcr_lite.data.masking import drop_masked_pairs, random_image_masks, random_patch_mask


def test_patch_mask_masks_exact_number_of_aligned_patches():
    rng = np.random.default_rng(0)
    m = random_patch_mask(224, 416, rng, patch=16, ratio=0.5)
    assert m.shape == (224, 416) and m.dtype == bool
    patches = m.reshape(14, 16, 26, 16).transpose(0, 2, 1, 3).reshape(14, 26, 256)
    # every 16x16 patch is entirely masked or entirely visible
    assert np.all(patches.all(-1) | (~patches).all(-1))
    assert patches.all(-1).sum() == round(0.5 * 14 * 26)


def test_partial_border_patches_and_ratio_extremes():
    rng = np.random.default_rng(1)
    m = random_patch_mask(20, 35, rng, patch=16, ratio=1.0)
    assert m.all()
    assert not random_patch_mask(20, 35, rng, patch=16, ratio=0.0).any()


def test_image_mask_probability():
    rng = np.random.default_rng(2)
    masks = random_image_masks(4000, 8, 8, rng, prob=0.5, patch=4, ratio=0.5)
    masked_images = masks.any((1, 2))
    assert abs(masked_images.mean() - 0.5) < 0.03
    assert np.allclose(masks[masked_images].mean((1, 2)), 0.5)


def test_expected_fraction_of_pairs_survives(keyframes):
    """On real projections, half of the pairs of a half-masked camera survive, and unmasked cameras
    keep all of theirs."""
    kf = keyframes[0]
    H, W = kf.images.shape[1:3]
    fractions = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        masks = np.zeros((6, H, W), bool)
        masks[:3] = [random_patch_mask(H, W, rng, 16, 0.5) for _ in range(3)]
        keep = drop_masked_pairs(kf.pair_pixels, masks)
        assert keep.dtype == bool and keep.shape == kf.pair_points.shape
        unmasked_cam = kf.pair_pixels[:, 0] >= 3
        assert keep[unmasked_cam].all()
        fractions.append(keep[~unmasked_cam].mean())
    assert abs(np.mean(fractions) - 0.5) < 0.05
    # each kept pair's pixel is visible, each dropped one masked
    r = kf.pair_pixels
    assert not masks[r[keep, 0], r[keep, 1], r[keep, 2]].any()
    assert masks[r[~keep, 0], r[~keep, 1], r[~keep, 2]].all()


def test_official_integer_index_bug_collapses_pairs(keyframes):
    """What ``matching_points[1 - mask[r, c]]`` does: integer indices 0/1, so at most two distinct
    pairs remain, while the boolean filter keeps about half of them, all distinct."""
    kf = keyframes[0]
    cam0 = kf.pair_pixels[:, 0] == 0
    points, pixels = kf.pair_points[cam0], kf.pair_pixels[cam0]
    H, W = kf.images.shape[1:3]
    mask = random_patch_mask(H, W, np.random.default_rng(3), 16, 0.5)
    buggy = points[1 - mask[pixels[:, 1], pixels[:, 2]]]
    assert len(np.unique(buggy)) <= 2
    correct = points[~mask[pixels[:, 1], pixels[:, 2]]]
    assert len(np.unique(correct)) == len(correct) > 0.3 * len(points)


def test_drop_masked_pairs_rejects_out_of_range():
    with pytest.raises(IndexError):
        drop_masked_pairs(np.array([[0, 5, 5]]), np.zeros((1, 4, 4), bool))

"""SLIC superpixels: the paper's settings, cached on disk and reused."""
import numpy as np
import pytest
from skimage.segmentation import slic

from cmcr_lite.data.superpixels import (SlicParams, cache_all_superpixels, compute_superpixels,
                                        load_or_compute_superpixels, superpixel_dir)


def test_paper_defaults():
    p = SlicParams()
    assert (p.n_segments, p.compactness, p.sigma) == (150, 6.0, 3.0)


def test_matches_skimage_and_is_cached(keyframes, tmp_path):
    kf = keyframes[0]
    image, token = kf.images[0], kf.camera_tokens[0]
    ref = slic(image, n_segments=150, compactness=6, sigma=3, start_label=0, channel_axis=-1)
    ours = compute_superpixels(image)
    assert np.array_equal(ours, ref)
    assert 50 <= ours.max() + 1 <= 250  # about 150 segments
    first = load_or_compute_superpixels(tmp_path, token, image)
    path = superpixel_dir(tmp_path) / f"{token}.png"
    assert path.is_file() and np.array_equal(first, ref)
    # the cached file is read, not recomputed: overwrite it with a marker and read it back
    from PIL import Image
    Image.fromarray(np.zeros(image.shape[:2], np.uint8)).save(path)
    assert load_or_compute_superpixels(tmp_path, token, image).max() == 0
    with pytest.raises(ValueError, match=token):
        load_or_compute_superpixels(tmp_path, token, image[:100])


def test_cache_all(keyframes):
    folder = cache_all_superpixels(keyframes, SlicParams(n_segments=30), progress=False)
    n_images = len(keyframes) * 6
    assert len(list(folder.glob("*.png"))) == n_images
    assert not list(folder.glob(".*tmp*"))  # nothing half-written left behind

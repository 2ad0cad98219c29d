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


def test_cache_dir_keeps_the_dataset_folder_untouched(keyframes, tmp_path):
    kf = keyframes[0]
    dataroot = tmp_path / "dataset"
    dataroot.mkdir()
    seg = load_or_compute_superpixels(dataroot, kf.camera_tokens[0], kf.images[0], cache=tmp_path / "cache")
    assert (superpixel_dir(dataroot, cache=tmp_path / "cache") / f"{kf.camera_tokens[0]}.png").is_file()
    assert not any(dataroot.iterdir()) and np.array_equal(seg, compute_superpixels(kf.images[0]))


def test_unwritable_cache_is_a_clear_error(keyframes, tmp_path):
    from cmcr_lite.data.superpixels import SuperpixelCacheError

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")  # root ignores chmod, so block with a file
    kf = keyframes[0]
    with pytest.raises(SuperpixelCacheError, match="superpixel_cache"):
        load_or_compute_superpixels(blocker, kf.camera_tokens[0], kf.images[0])


def test_only_slidr_reads_superpixels(synthetic_root, tmp_path):
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.data.pipeline import PairedScanDataset
    from cmcr_lite.pretrain import PretrainConfig

    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="val")
    for method in ("ppkt", "cmcr", "slidr"):
        cfg = PretrainConfig.lite(method=method)
        pipe = type(cfg.pipeline)(**{**cfg.pipeline.to_dict(), "superpixel_cache": str(tmp_path / method)})
        item = PairedScanDataset(kf, pipe, seed=0)[0]
        written = list((tmp_path / method).rglob("*.png")) if (tmp_path / method).exists() else []
        assert (len(written) == 6) == (method == "slidr"), method
        assert (item["superpixels"].min() >= 0) == (method == "slidr")


def test_precompute_command_with_workers(synthetic_root, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes, load_image

    done = subprocess.run([sys.executable, "-m", "cmcr_lite.data.superpixels", "--dataroot", str(synthetic_root),
                           "--version", "v1.0-synthetic", "--split", "val", "--workers", "2",
                           "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="val")
    records = [sd for t in kf.sample_tokens for sd in kf.camera_records(t)]
    folder = superpixel_dir(synthetic_root, cache=tmp_path)
    assert len(list(folder.glob("*.png"))) == len(records) and f"({len(records)} images)" in done.stdout
    sd = records[-1]  # written by a worker process: the same segments as computed here
    image = load_image(synthetic_root / sd["filename"], (sd["width"], sd["height"]), sd["token"])
    assert np.array_equal(np.asarray(Image.open(folder / f"{sd['token']}.png")), compute_superpixels(image))

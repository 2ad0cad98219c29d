"""Voxelisation round trips, the training-sample pipeline and batch collation."""
import numpy as np
import pytest
import torch

from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig, batch_to_sparse_tensor, collate_pairs
from cmcr_lite.data.voxelize import grid_coordinates, voxelize


def test_grid_coordinates_floor_not_truncate():
    g = grid_coordinates(np.array([[-0.05, 0.05, 0.0], [0.19, -0.11, 1.0]]), 0.1)
    assert g.tolist() == [[-1, 0, 0], [1, -2, 10]]
    cyl = grid_coordinates(np.array([[0.0, 2.0, 0.25]]), 0.1, cylindrical=True)
    assert cyl.tolist() == [[20, 90, 2]]


def test_voxel_maps_are_consistent(keyframes):
    pts = keyframes[0].points[:, :3]
    vox = voxelize(pts, 0.1)
    grid = grid_coordinates(pts, 0.1)
    # every point lands in the voxel whose coordinates are its own grid cell
    assert np.array_equal(vox.coords[vox.voxel_of_point], grid)
    # each representative point belongs to its voxel, and voxels are unique
    assert np.array_equal(vox.voxel_of_point[vox.point_of_voxel], np.arange(len(vox)))
    assert len(np.unique(vox.coords, axis=0)) == len(vox)


def test_labels_survive_voxelisation_round_trip(keyframes):
    """Point labels -> voxel labels (representative point) -> points through the inverse map.

    Reference: an independent NumPy group-by of the grid cells tells which voxels hold a single
    label; there the round trip must give back every point's label, and MinkowskiEngine's own
    label quantisation must agree with ours."""
    import MinkowskiEngine as ME

    kf = keyframes[0]
    vox = voxelize(kf.points[:, :3], 0.1)
    voxel_labels = kf.labels[vox.point_of_voxel]
    back = voxel_labels[vox.voxel_of_point]

    grid = grid_coordinates(kf.points[:, :3], 0.1)
    cells, cell_of_point = np.unique(grid, axis=0, return_inverse=True)
    cell_of_point = cell_of_point.ravel()
    lo = np.full(len(cells), 99)
    hi = np.full(len(cells), -1)
    np.minimum.at(lo, cell_of_point, kf.labels)
    np.maximum.at(hi, cell_of_point, kf.labels)
    pure_point = (lo == hi)[cell_of_point]
    assert len(cells) == len(vox) and pure_point.mean() > 0.99
    assert np.array_equal(back[pure_point], kf.labels[pure_point])

    coords_me, labels_me = ME.utils.sparse_quantize(torch.from_numpy(grid), labels=torch.from_numpy(kf.labels).int())
    key = lambda c: (np.asarray(c)[:, 0].astype(np.int64) * 1_000_003 + np.asarray(c)[:, 1]) * 1_000_003 + np.asarray(c)[:, 2]
    row_me = {k: i for i, k in enumerate(key(coords_me))}
    me_for_ours = np.asarray(labels_me)[[row_me[k] for k in key(vox.coords)]]
    pure_voxel = pure_point[vox.point_of_voxel]
    assert np.array_equal(voxel_labels[pure_voxel], me_for_ours[pure_voxel])

    # with voxels far smaller than the point spacing the round trip is lossless
    fine = voxelize(kf.points[:, :3], 0.001)
    assert np.array_equal(kf.labels[fine.point_of_voxel][fine.voxel_of_point], kf.labels)


@pytest.fixture(scope="module")
def dataset(synthetic_root):
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="train")
    return PairedScanDataset(kf, PipelineConfig.lite(mim_masks=True, mask_prob=0.5), seed=0)


def test_item_pairs_point_to_the_right_voxels_and_pixels(dataset):
    it = dataset[0]
    V = len(it["coords"])
    assert it["feats"].shape == (V, 1) and it["images"].shape[1:] == (3, 112, 208)
    assert np.array_equal(it["pair_voxels"], it["voxel_of_point"][it["pair_points"]])
    grid = grid_coordinates(it["points"][it["pair_points"], :3], 0.1)
    assert np.array_equal(it["coords"][it["pair_voxels"]], grid)
    r = it["pair_pixels"]
    assert r[:, 1].max() < 112 and r[:, 2].max() < 208 and r.min() >= 0
    assert not it["masks"][r[:, 0], r[:, 1], r[:, 2]].any()  # no pair on a masked pixel
    # masked pixels are zero in the input and intact in the target
    m = it["masks"][:, None].repeat(3, 1)
    assert np.all(it["images"][m] == 0) and it["target_images"][m].mean() > 0.1
    assert np.array_equal(it["images"][~m], it["target_images"][~m])
    # the paired pixel shows the point's class colour: sidewalk pixels brighter than road pixels
    lab = it["labels"][it["pair_points"]]
    bright = it["target_images"][r[:, 0], :, r[:, 1], r[:, 2]].mean(1)
    assert bright[lab == 13].mean() > bright[lab == 11].mean() + 0.2


def test_items_are_reproducible_and_change_with_epoch(dataset):
    a, b = dataset[0], dataset[0]
    assert np.array_equal(a["points"], b["points"]) and np.array_equal(a["pair_pixels"], b["pair_pixels"])
    dataset.set_epoch(1)
    c = dataset[0]
    dataset.set_epoch(0)
    assert not np.array_equal(a["points"], c["points"])


def test_collate_offsets(dataset):
    items = [dataset[0], dataset[1]]
    batch = collate_pairs(items)
    V0, N0 = len(items[0]["coords"]), len(items[0]["points"])
    assert batch["coords"].shape == (V0 + len(items[1]["coords"]), 4)
    # batch column of a pair's voxel equals the scan of the pair's camera
    cam = batch["pair_pixels"][:, 0]
    assert torch.equal(batch["coords"][batch["pair_voxels"], 0].long(), cam // 6)
    # the second scan's pairs point at its own voxels and points
    second = cam >= 6
    assert torch.equal(batch["pair_voxels"][second] - V0, torch.from_numpy(items[1]["pair_voxels"]))
    assert torch.equal(batch["pair_points"][second] - N0, torch.from_numpy(items[1]["pair_points"]))
    assert torch.equal(batch["voxel_of_point"][batch["pair_points"]], batch["pair_voxels"])
    x = batch_to_sparse_tensor(batch)
    assert x.F.shape == (len(batch["coords"]), 1)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mask_ratio"):
        PipelineConfig(mask_ratio=1.5)
    with pytest.raises(ValueError, match="voxel_size"):
        PipelineConfig.lite(voxel_size=0)


def test_occupancy_queries_move_with_the_points(synthetic_root):
    """Queries are drawn along the sensor rays and augmented with the points: an 'in' or 'out' query
    stays within the band of its source point after rotation and flips."""
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="train")
    plain = PairedScanDataset(kf, PipelineConfig.lite(superpixels=False), seed=0)[0]
    ds = PairedScanDataset(kf, PipelineConfig.lite(superpixels=False, occupancy=True, occupancy_queries=300), seed=0)
    it = ds[0]
    # adding queries changes none of the other random draws
    assert np.allclose(it["points"], plain["points"], atol=1e-5) and np.array_equal(it["pair_pixels"], plain["pair_pixels"])
    q, kind = it["queries"], it["query_kind"]
    assert q.shape == (300, 3) and set(np.unique(kind)) == {0, 1, 2}
    d = np.linalg.norm(q[:, None, :] - it["points"][None, :, :3], axis=2).min(1)
    assert d[kind < 2].max() <= 0.1 + 1e-3  # within the band of some (augmented) point
    assert it["query_occupied"][kind == 0].min() == 1 and it["query_occupied"][kind > 0].max() == 0
    batch = collate_pairs([it, ds[1]])
    assert batch["queries"].shape == (600, 3) and batch["query_batch"].tolist() == [0] * 300 + [1] * 300
    # neighbourhoods are built in the dataset (the loader's workers) and offset by the collation:
    # every (query, point) pair within the radius of the same scan, at most 32 per query
    d = np.linalg.norm(batch["queries"].numpy()[:, None] - batch["points"][:, :3].numpy()[None], axis=-1)
    same = batch["query_batch"].numpy()[:, None] == batch["point_batch"].numpy()[None]
    qi, pi = batch["neighbour_query"].numpy(), batch["neighbour_point"].numpy()
    assert (d[qi, pi] <= 1.0 + 1e-6).all() and same[qi, pi].all()
    within = ((d <= 1.0) & same).sum(1)
    np.testing.assert_array_equal(np.bincount(qi, minlength=600), np.minimum(within, 32))

"""Occupancy evaluation and rendering helpers (cmcr_lite/occupancy_analysis.py, notebook 06).

References: per-query / per-pair accuracies written out with Python loops; the decoder's latents
recomputed by brute force (nearest code by explicit distances, G^3D + code); pairs found by an
O(QN) distance matrix; a flat wall at x = 10 m whose in/out sides are known in closed form.
"""
import copy
from dataclasses import replace

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from cmcr_lite.data.occupancy_queries import KIND_IN, KIND_OUT, KIND_OUT_FAR, sample_query_points  # noqa: E402
from cmcr_lite.losses.occupancy import OccupancyDecoder, neighbourhood_pairs  # noqa: E402
from cmcr_lite.analysis.occupancy import (accuracy_per_kind, bev_crop, fit_decoder, frozen_query_scans,  # noqa: E402
                                          occupancy_bev_figure, occupancy_slice_3d_figure, point_latents,
                                          predict_queries, queries_bev_figure)


# ------------------------------------------------------------------ accuracy per kind
def reference_accuracy(logits, occ, kind, qidx, k):
    """Loops: pair accuracy, query accuracy (mean logit per query) and with-neighbour fraction for kind k."""
    pairs = [(l > 0) == (occ[q] == 1) for l, q in zip(logits, qidx) if kind[q] == k]
    per_query, with_nb = [], 0
    for q in range(len(occ)):
        if kind[q] != k:
            continue
        mine = [l for l, qq in zip(logits, qidx) if qq == q]
        if mine:
            with_nb += 1
            per_query.append((np.mean(mine) > 0) == (occ[q] == 1))
    free = [occ[q] == 0 for q in qidx if kind[q] == k]
    return np.mean(pairs), np.mean(per_query), with_nb / np.sum(kind == k), np.mean(free)


def test_accuracy_per_kind_matches_loops():
    rng = np.random.default_rng(0)
    Q = 30
    kind = np.array([KIND_IN, KIND_OUT, KIND_OUT_FAR] * 10, np.int8)
    occ = (kind == KIND_IN).astype(np.float32)
    qidx = np.sort(rng.choice(np.arange(Q - 3), 120))            # the last 3 queries get no neighbour
    logits = rng.normal(size=120).astype(np.float32)
    pred = torch.from_numpy(np.stack([logits, rng.random(120).astype(np.float32)], 1))
    acc = accuracy_per_kind(pred, occ, kind, torch.from_numpy(qidx))
    assert set(acc) == {"in", "out", "out-far", "all"}
    for k, name in ((KIND_IN, "in"), (KIND_OUT, "out"), (KIND_OUT_FAR, "out-far")):
        pair, query, with_nb, free = reference_accuracy(logits, occ, kind, qidx, k)
        r = acc[name]
        assert r["pair_accuracy"] == pytest.approx(pair)
        assert r["query_accuracy"] == pytest.approx(query)
        assert r["with_neighbours"] == pytest.approx(with_nb)
        assert r["all_free_accuracy"] == pytest.approx(free)
        assert r["queries"] == 10 and r["pairs"] == int(np.sum(kind[qidx] == k))
        assert r["predicted_occupied"] == pytest.approx(np.mean(logits[kind[qidx] == k] > 0))
    assert acc["all"]["pairs"] == 120 and acc["all"]["queries"] == Q
    assert acc["all"]["pair_accuracy"] == pytest.approx(np.mean((logits > 0) == (occ[qidx] == 1)))
    assert acc["in"]["all_free_accuracy"] == 0.0 and acc["out"]["all_free_accuracy"] == 1.0


def test_accuracy_per_kind_without_pairs_is_nan_and_checks_shapes():
    pred = torch.zeros(0, 2)
    acc = accuracy_per_kind(pred, np.zeros(3), np.array([0, 1, 2]), torch.zeros(0, dtype=torch.int64))
    assert np.isnan(acc["in"]["pair_accuracy"]) and acc["in"]["with_neighbours"] == 0.0
    with pytest.raises(ValueError, match="kind"):
        accuracy_per_kind(pred, np.zeros(3), np.array([0, 1]), torch.zeros(0, dtype=torch.int64))


# ------------------------------------------------------------------ latents and predictions of a model
@pytest.fixture(scope="module")
def tiny_model_and_data(synthetic_root):
    from dataclasses import replace

    from cmcr_lite.cmcr import ABLATION_STEPS, CMCRModel
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig, collate_pairs
    from cmcr_lite.models.image_encoder import SmallImageTeacher
    from cmcr_lite.models.minkunet import MinkUNetConfig

    torch.manual_seed(0)
    kf = copy.copy(NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="val"))
    kf.sample_tokens = kf.sample_tokens[:2]
    opts = replace(ABLATION_STEPS["+ occupancy"], num_codes=16, codebook_matches=64)
    model = CMCRModel(MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8), SmallImageTeacher(width=8, stride=4),
                      feature_dim=16, options=opts)
    ds = PairedScanDataset(kf, PipelineConfig.lite(crop_size=(56, 104), superpixels=False, augment=False,
                                                   occupancy=True, occupancy_queries=60,
                                                   occupancy_max_neighbours="all"), seed=0)
    return model, ds, collate_pairs([ds[0], ds[1]])


def test_point_latents_are_specific_plus_nearest_code(tiny_model_and_data):
    from cmcr_lite.data.pipeline import batch_to_sparse_tensor

    model, _, batch = tiny_model_and_data
    model.train()
    lat = point_latents(model, batch)
    assert model.training                                          # flag restored
    model.eval()
    with torch.no_grad():
        f3d, g3d = model.features_3d(batch_to_sparse_tensor(batch))
    codes = model.codebook.embedding
    d = ((f3d[:, None, :] - codes[None]) ** 2).sum(-1)            # brute-force nearest code
    expected = (codes[d.argmin(1)] + g3d)[batch["voxel_of_point"]]
    assert lat.shape == (len(batch["points"]), 16)
    assert torch.allclose(lat, expected, atol=1e-5)


def test_predict_queries_decodes_every_pair_within_the_radius(tiny_model_and_data):
    from cmcr_lite.data.pipeline import PairedScanDataset, collate_pairs

    model, ds, batch = tiny_model_and_data
    out = predict_queries(model, batch)
    qi, pi = out["query_index"].numpy(), out["point_index"].numpy()
    q, p = batch["queries"].numpy(), batch["points"][:, :3].numpy()
    bq, bp = batch["query_batch"].numpy(), batch["point_batch"].numpy()
    d = np.linalg.norm(q[:, None] - p[None], axis=-1)              # O(QN) reference, same sample only
    ref = np.argwhere((d <= 1.0) & (bq[:, None] == bp[None]))
    assert np.array_equal(np.stack([qi, pi], 1), ref)
    with torch.no_grad():
        manual = model.occupancy_decoder(out["latents"][pi], torch.from_numpy(q[qi] - p[pi]))
    assert torch.allclose(out["pred"], manual, atol=1e-5)
    # another decoder can be plugged in; the pipeline's cap keeps at most k pairs per query
    other = OccupancyDecoder(latent_dim=16)
    capped_ds = PairedScanDataset(ds.keyframes, replace(ds.config, occupancy_max_neighbours=3), seed=0)
    capped = predict_queries(model, collate_pairs([capped_ds[0], capped_ds[1]]), decoder=other)
    assert np.bincount(capped["query_index"].numpy()).max() <= 3
    with torch.no_grad():
        expect = other(capped["latents"][capped["point_index"]],
                       torch.from_numpy(q[capped["query_index"]] - p[capped["point_index"]]))
    assert torch.allclose(capped["pred"], expect, atol=1e-5)
    with pytest.raises(ValueError, match="queries"):
        predict_queries(model, {k: v for k, v in batch.items() if k != "queries"})


def test_frozen_query_scans_hold_one_scan_each(tiny_model_and_data):
    from cmcr_lite.data.pipeline import PairedScanDataset

    model, ds, _ = tiny_model_and_data
    ds = PairedScanDataset(ds.keyframes, replace(ds.config, occupancy_max_neighbours=4), seed=0)
    scans = frozen_query_scans(model, ds)
    assert len(scans) == len(ds) == 2
    for i, s in enumerate(scans):
        item = ds[i]
        assert s["latents"].shape == (len(item["points"]), 16) and not s["latents"].requires_grad
        assert np.array_equal(s["queries"].numpy(), item["queries"])
        assert np.bincount(s["query_index"].numpy()).max() <= 4
        d = np.linalg.norm(item["queries"][s["query_index"]] - item["points"][s["point_index"], :3], axis=1)
        assert d.max() <= 1.0 + 1e-6


# ------------------------------------------------------------------ decoder-only fit on a wall
def wall_scan(n=400, half=3.0, seed=0):
    """Points on the plane x = 10 m hit by rays from the origin, and their intensities."""
    rng = np.random.default_rng(seed)
    xyz = np.concatenate([np.full((n, 1), 10.0), rng.uniform(-half, half, (n, 2))], 1).astype(np.float32)
    return xyz, rng.uniform(0, 255, n).astype(np.float32)


def wall_entry(xyz, inten, seed):
    q = sample_query_points(xyz, inten, seed, n_queries=600)
    qi, pi = neighbourhood_pairs(q["queries"], xyz, 1.0, max_neighbours=8, rng=seed)
    return {"latents": torch.ones(len(xyz), 4), "queries": torch.from_numpy(q["queries"]),
            "points": torch.from_numpy(xyz), "query_index": qi, "point_index": pi,
            "occupied": torch.from_numpy(q["occupied"]), "intensity": torch.from_numpy(q["intensity"])}, q


def test_fit_decoder_learns_the_sides_of_a_wall_on_a_copy():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        xyz, inten = wall_scan()
        train, _ = wall_entry(xyz, inten, 1)
        test, q = wall_entry(xyz, inten, 2)
        dec = OccupancyDecoder(latent_dim=4, hidden=32, n_hidden=2)
        before = copy.deepcopy(dec.state_dict())
        fitted, hist = fit_decoder(dec, [train], steps=250, lr=1e-2)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(before[k], v) for k, v in dec.state_dict().items())   # original untouched
    assert not fitted.training and len(hist) == 250
    assert hist[-1]["occupancy"] < 0.5 * hist[0]["occupancy"]
    with torch.no_grad():
        pred = fitted.forward_pairs(test["latents"], test["queries"], test["points"], test["query_index"],
                                    test["point_index"])
    acc = accuracy_per_kind(pred, q["occupied"], q["kind"], test["query_index"])
    # closed form: x > 10 m is behind the wall (occupied), x < 10 m in front (free)
    assert acc["in"]["query_accuracy"] > 0.85 and acc["out"]["query_accuracy"] > 0.85
    assert acc["all"]["pair_accuracy"] > 0.85
    with pytest.raises(ValueError, match="steps"):
        fit_decoder(dec, [], steps=1)


# ------------------------------------------------------------------ figures
def test_bev_crop_and_figures_have_metre_axes():
    xyz, inten = wall_scan(n=300)
    labels = np.full(len(xyz), 15)
    assert np.array_equal(bev_crop(np.array([[1, 1, 0], [5, 0, 0], [0, -2.5, 9]]), (0, 0), 2.5), [True, False, True])
    q = sample_query_points(xyz, inten, 0, n_queries=300)
    fig = queries_bev_figure(xyz, q["queries"], q["kind"], centre=(10, 0), half_size=4)
    assert all(ax.get_xlabel() == "x (m)" and ax.get_ylabel() == "y (m)" for ax in fig.axes)
    bounds = ((8.0, 12.0), (-2.0, 2.0))
    prob = np.full((16, 16), 0.3, np.float32)
    prob[0, 0] = np.nan
    fig = occupancy_bev_figure(np.c_[xyz[:, :2], np.zeros(len(xyz))], labels, {"a": prob, "b": prob}, bounds, z=0.0)
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(plots) == 3 and all(ax.get_xlabel() == "x (m)" for ax in plots)
    xs, zs = np.linspace(8, 12, 16), np.linspace(-2, 2, 8)
    fig3d = occupancy_slice_3d_figure(xyz, labels, np.full((16, 8), 0.5), xs, zs, y=0.0, bounds_xy=bounds)
    assert fig3d.layout.scene.xaxis.title.text == "x (m)" and fig3d.data[-1].type == "surface"
    import matplotlib.pyplot as plt

    plt.close("all")

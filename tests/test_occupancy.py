"""Occupancy queries, neighbourhoods, decoder and losses (cmcr_lite/losses/occupancy.py, docs/paper.md §2, §4.5).

References: a flat wall at x = 10 m seen from the origin (query positions known in closed form), a
brute-force O(QN) radius search, and BCE / L1 written out with numpy.
"""

import numpy as np
import pytest
import torch

from cmcr_lite.data.augment import random_point_augmentation
from cmcr_lite.losses.occupancy import (KIND_IN, KIND_OUT, KIND_OUT_FAR, OccupancyDecoder, grid_centres,
                                        neighbourhood_pairs, occupancy_accuracy, occupancy_grid,
                                        occupancy_losses, sample_query_points, transform_queries)

WALL_X = 10.0


def wall_scan(n=1500, half=3.0, seed=0):
    """Points on the plane x = 10 m hit by rays from the origin: (N, 3) and intensities 0..255."""
    rng = np.random.default_rng(seed)
    yz = rng.uniform(-half, half, (n, 2))
    xyz = np.concatenate([np.full((n, 1), WALL_X), yz], 1).astype(np.float32)
    return xyz, rng.uniform(0, 255, n).astype(np.float32)


# ------------------------------------------------------------------ query points
def test_queries_on_a_wall_have_the_right_positions_labels_and_counts():
    xyz, inten = wall_scan()
    out = sample_query_points(xyz, inten, np.random.default_rng(1), n_queries=2048, band=0.1)
    assert out["queries"].shape == (2048, 3) and out["queries"].dtype == np.float32
    assert out["occupied"].dtype == np.float32 and out["intensity"].dtype == np.float32
    q, kind, src = out["queries"].astype(np.float64), out["kind"], out["source_index"]
    assert [(kind == k).sum() for k in (KIND_IN, KIND_OUT, KIND_OUT_FAR)] == [684, 682, 682]

    p = xyz[src].astype(np.float64)
    # every query lies on the ray of its source point
    assert np.abs(np.cross(q, p)).max() / np.linalg.norm(p, axis=1).max() < 1e-5
    along = np.linalg.norm(q, axis=1) - np.linalg.norm(p, axis=1)        # + behind the wall
    x, eps = q[:, 0], 1e-4
    isin, isout, isfar = kind == KIND_IN, kind == KIND_OUT, kind == KIND_OUT_FAR
    assert np.all((along[isin] >= -eps) & (along[isin] <= 0.1 + eps))
    assert np.all((x[isin] >= WALL_X - eps) & (x[isin] <= WALL_X + 0.1 + eps))
    assert np.all((along[isout] <= eps) & (along[isout] >= -0.1 - eps))
    assert np.all((x[isout] <= WALL_X + eps) & (x[isout] >= WALL_X - 0.1 - eps))
    assert np.all((x[isfar] >= -eps) & (x[isfar] <= WALL_X + eps))
    # the band is actually used, not a constant offset
    assert along[isin].max() > 0.09 and along[isout].min() < -0.09 and x[isfar].min() < 1.0

    np.testing.assert_array_equal(out["occupied"], isin.astype(np.float32))
    np.testing.assert_array_equal(out["intensity"][~isfar], inten[src][~isfar])
    assert np.all(out["intensity"][isfar] == -1)


def test_query_counts_deterministic_and_origin():
    xyz, inten = wall_scan(200)
    a = sample_query_points(xyz, inten, np.random.default_rng(5), n_queries=999)
    b = sample_query_points(xyz, inten, np.random.default_rng(5), n_queries=999)
    c = sample_query_points(xyz, inten, np.random.default_rng(6), n_queries=999)
    assert np.bincount(a["kind"]).tolist() == [333, 333, 333]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["queries"], c["queries"])
    # a sensor at (5, 0, 0): out-far queries lie between x = 5 and the wall, in-band is 0.1 m along the ray
    o = np.array([5.0, 0.0, 0.0])
    d = sample_query_points(xyz, inten, 0, n_queries=300, origin=o)
    far = d["kind"] == KIND_OUT_FAR
    assert d["queries"][far, 0].min() >= 5 - 1e-5 and d["queries"][far, 0].max() <= WALL_X + 1e-5
    isin = d["kind"] == KIND_IN
    along = (np.linalg.norm(d["queries"][isin] - o, axis=1)
             - np.linalg.norm(xyz[d["source_index"][isin]] - o, axis=1))
    assert along.min() >= -1e-4 and along.max() <= 0.1 + 1e-4


def test_transform_queries_applies_the_same_augmentation():
    xyz, inten = wall_scan(300)
    out = sample_query_points(xyz, inten, 0, n_queries=300)
    rng = np.random.default_rng(3)
    xyz_a, q_a = transform_queries(xyz, out["queries"], lambda a: random_point_augmentation(a, rng))
    assert xyz_a.shape == xyz.shape and q_a.shape == (300, 3) and q_a.dtype == np.float32
    assert not np.allclose(xyz_a, xyz, atol=1e-3)
    # rigid motions about the origin: distances query <-> source point and rays through the origin survive
    p_a = xyz_a[out["source_index"]].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q_a - p_a, axis=1),
                               np.linalg.norm(out["queries"] - xyz[out["source_index"]], axis=1), atol=1e-4)
    assert np.abs(np.cross(q_a.astype(np.float64), p_a)).max() < 1e-3


# ------------------------------------------------------------------ neighbourhoods
def brute_pairs(q, p, r, bq=None, bp=None):
    d = np.linalg.norm(q[:, None] - p[None], axis=2)
    ok = d <= r
    if bq is not None:
        ok &= bq[:, None] == bp[None]
    return set(zip(*np.nonzero(ok)))


def test_neighbourhood_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    q, p = rng.uniform(0, 4, (60, 3)), rng.uniform(0, 4, (400, 3))
    qi, pi = neighbourhood_pairs(torch.from_numpy(q), torch.from_numpy(p), radius=1.0)
    assert qi.dtype == torch.int64 and pi.dtype == torch.int64
    got = set(zip(qi.tolist(), pi.tolist()))
    ref = brute_pairs(q, p, 1.0)
    assert len(ref) > 100 and got == ref and len(got) == len(qi)
    # sorted by query then point
    key = qi.numpy() * 1000 + pi.numpy()
    assert np.all(np.diff(key) > 0)


def test_neighbourhood_pairs_respect_batches():
    rng = np.random.default_rng(1)
    q, p = rng.uniform(0, 3, (50, 3)), rng.uniform(0, 3, (300, 3))
    bq, bp = rng.integers(0, 3, 50), rng.integers(0, 3, 300)
    bp[bp == 2] = 1                                     # sample 2 has queries but no points
    qi, pi = neighbourhood_pairs(q, p, 0.8, batch_q=bq, batch_p=bp)
    got = set(zip(qi.tolist(), pi.tolist()))
    assert got == brute_pairs(q, p, 0.8, bq, bp)
    assert np.all(bq[qi.numpy()] == bp[pi.numpy()]) and len(got) > 50
    assert not np.isin(np.nonzero(bq == 2)[0], qi.numpy()).any()


def test_default_cap_keeps_the_first_32_by_point_index_as_torch_cluster():
    """torch_cluster's radius(x, y, r, max_num_neighbors=32) walks the points in index order and stops
    at 32 per query: the reference here is that loop written out."""
    rng = np.random.default_rng(3)
    q, p = rng.uniform(0, 2, (30, 3)), rng.uniform(0, 2, (2000, 3))
    qi, pi = neighbourhood_pairs(q, p, 1.0, max_neighbours=32)
    ref = []
    for i in range(len(q)):
        near = [j for j in range(len(p)) if np.linalg.norm(q[i] - p[j]) <= 1.0]
        ref += [(i, j) for j in near[:32]]
    assert list(zip(qi.tolist(), pi.tolist())) == ref
    assert np.bincount(qi.numpy()).max() == 32  # the cap binds on this dense set
    with pytest.raises(ValueError, match="pick"):
        neighbourhood_pairs(q, p, 1.0, max_neighbours=3, pick="nearest")


def test_neighbour_cap_is_a_deterministic_subset():
    rng = np.random.default_rng(2)
    q, p = rng.uniform(0, 3, (40, 3)), rng.uniform(0, 3, (500, 3))
    full = set(zip(*[t.tolist() for t in neighbourhood_pairs(q, p, 1.0)]))
    qi, pi = neighbourhood_pairs(q, p, 1.0, max_neighbours=7, rng=4, pick="random")
    qi2, pi2 = neighbourhood_pairs(q, p, 1.0, max_neighbours=7, rng=4, pick="random")
    assert torch.equal(qi, qi2) and torch.equal(pi, pi2)
    capped = set(zip(qi.tolist(), pi.tolist()))
    assert capped <= full
    n_full = np.bincount([a for a, _ in full], minlength=40)
    np.testing.assert_array_equal(np.bincount(qi.numpy(), minlength=40), np.minimum(n_full, 7))


# ------------------------------------------------------------------ decoder and losses
def test_decoder_shapes_and_gradient():
    torch.manual_seed(0)
    dec = OccupancyDecoder(latent_dim=16, hidden=32, n_hidden=2)
    linears = [m for m in dec.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(19, 32), (32, 32), (32, 32), (32, 2)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in dec.mlp) == 3
    lat = torch.randn(50, 16, requires_grad=True)
    out = dec(lat, torch.randn(50, 3))
    assert out.shape == (50, 2)
    out.sum().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    assert all(prm.grad is not None for prm in dec.parameters())
    with pytest.raises(ValueError, match="latents"):
        dec(torch.randn(5, 8), torch.randn(5, 3))
    assert len([m for m in OccupancyDecoder().mlp if isinstance(m, torch.nn.Linear)]) == 4


def np_bce(x, y):
    s = 1 / (1 + np.exp(-x))
    return float(np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s))))


def test_losses_equal_hand_computation():
    rng = np.random.default_rng(0)
    occ = np.array([1, 0, 0, 1], np.float32)
    inten = np.array([100, 50, -1, 255], np.float32)
    qidx = np.array([0, 0, 1, 2, 2, 2, 3])                   # 7 pairs
    pred = rng.normal(size=(7, 2)).astype(np.float32)
    out = occupancy_losses(torch.from_numpy(pred), torch.from_numpy(occ), torch.from_numpy(inten),
                           torch.from_numpy(qidx))
    assert out["occupancy"].item() == pytest.approx(np_bce(pred[:, 0], occ[qidx]), rel=1e-5)
    valid = inten[qidx] >= 0                                   # pairs of query 2 are ignored
    l1 = np.mean(np.abs(pred[valid, 1] - inten[qidx][valid] / 255))
    assert out["intensity"].item() == pytest.approx(l1, rel=1e-5)

    # changing the intensity prediction of ignored pairs changes nothing
    pred2 = pred.copy()
    pred2[qidx == 2, 1] += 10
    out2 = occupancy_losses(torch.from_numpy(pred2), torch.from_numpy(occ), torch.from_numpy(inten),
                            torch.from_numpy(qidx))
    assert out2["intensity"].item() == pytest.approx(out["intensity"].item(), rel=1e-6)

    # aggregate="mean": average per query first (query 3 has one pair; add an isolated query 4)
    occ5, int5 = np.append(occ, 1).astype(np.float32), np.append(inten, 10).astype(np.float32)
    agg = occupancy_losses(torch.from_numpy(pred), torch.from_numpy(occ5), torch.from_numpy(int5),
                           torch.from_numpy(qidx), aggregate="mean")
    means = np.stack([pred[qidx == k].mean(0) for k in range(4)])
    assert agg["occupancy"].item() == pytest.approx(np_bce(means[:, 0], occ), rel=1e-5)
    keep = inten >= 0
    assert agg["intensity"].item() == pytest.approx(np.mean(np.abs(means[keep, 1] - inten[keep] / 255)), rel=1e-5)

    # nothing with an intensity target: zero, still differentiable
    p = torch.from_numpy(pred).requires_grad_()
    none = occupancy_losses(p, torch.from_numpy(occ), torch.full((4,), -1.0), torch.from_numpy(qidx))
    assert none["intensity"].item() == 0.0
    (none["occupancy"] + none["intensity"]).backward()
    assert p.grad is not None
    with pytest.raises(ValueError, match="aggregate"):
        occupancy_losses(p, torch.from_numpy(occ), torch.from_numpy(inten), torch.from_numpy(qidx), aggregate="max")


# ------------------------------------------------------------------ overfit a wall
@pytest.fixture(scope="module")
def trained_wall():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                  # tiny matrices: threads only add overhead
    torch.manual_seed(0)
    xyz, inten = wall_scan(n=400, half=3.0, seed=0)
    train = sample_query_points(xyz, inten, 1, n_queries=600)
    test = sample_query_points(xyz, inten, 2, n_queries=600)
    latents = torch.ones(len(xyz), 4)                        # a fixed latent: only geometry can help
    pts = torch.from_numpy(xyz)
    dec = OccupancyDecoder(latent_dim=4, hidden=32, n_hidden=2)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)

    def pairs(d):
        qi, pi = neighbourhood_pairs(d["queries"], xyz, 1.0, max_neighbours=8, rng=0)
        return torch.from_numpy(d["queries"]), qi, pi

    qt, qi, pi = pairs(train)
    occ_t, int_t = torch.from_numpy(train["occupied"]), torch.from_numpy(train["intensity"])
    losses = []
    for _ in range(200):
        pred = dec.forward_pairs(latents, qt, pts, qi, pi)
        loss = occupancy_losses(pred, occ_t, int_t, qi)["occupancy"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.set_num_threads(threads)
    return dict(dec=dec, latents=latents, xyz=xyz, pts=pts, test=test, pairs=pairs, losses=losses)


def test_decoder_overfits_in_out_around_a_wall(trained_wall):
    t = trained_wall
    assert t["losses"][-1] < 0.5 * t["losses"][0]
    qv, qi, pi = t["pairs"](t["test"])                        # fresh queries
    with torch.no_grad():
        pred = t["dec"].forward_pairs(t["latents"], qv, t["pts"], qi, pi)
    occ = torch.from_numpy(t["test"]["occupied"])
    assert occupancy_accuracy(pred, occ, qi) > 0.9
    near = torch.from_numpy(t["test"]["kind"] != KIND_OUT_FAR)[qi]   # the hard part: in vs out, 0.1 m apart
    acc_near = ((pred[near, 0] > 0).float() == occ[qi][near]).float().mean().item()
    assert acc_near > 0.85
    assert occupancy_accuracy(pred, occ, qi, aggregate="mean") > 0.9


def test_occupancy_grid_matches_manual_average_and_shows_the_wall(trained_wall):
    t = trained_wall
    bounds, res = ((9.2, 10.2), (-1.0, 1.0)), 0.05
    prob = occupancy_grid(t["dec"], t["latents"], t["xyz"], bounds, res, z=0.0, chunk=97)
    xs, ys = grid_centres(bounds, res)
    assert prob.shape == (len(xs), len(ys)) == (20, 40)
    assert np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1 and not np.isnan(prob).any()
    # one cell by hand: mean of the neighbour logits, then sigmoid
    ix, iy = 17, 13
    q = np.array([[xs[ix], ys[iy], 0.0]])
    d = np.linalg.norm(t["xyz"] - q, axis=1)
    nb = np.nonzero(d <= 1.0)[0]
    with torch.no_grad():
        lg = t["dec"](t["latents"][nb], torch.from_numpy(q).float() - t["pts"][nb])[:, 0]
    assert prob[ix, iy] == pytest.approx(torch.sigmoid(lg.mean()).item(), abs=1e-5)
    # free space in front of the wall, occupied just behind it
    assert np.nanmean(prob[(xs > 9.2) & (xs < 9.85)]) < 0.3
    assert np.nanmean(prob[(xs > 10.0) & (xs < 10.1)]) > 0.5
    # far from every point: unknown (NaN); a volume grid has three axes
    vol = occupancy_grid(t["dec"], t["latents"], t["xyz"], ((0.0, 1.0), (0.0, 1.0), (0.0, 0.5)), 0.25)
    assert vol.shape == (4, 4, 2) and np.isnan(vol).all()

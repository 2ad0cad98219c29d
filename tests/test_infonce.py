"""Point–pixel and superpixel InfoNCE against explicit loops (docs/paper.md §4.1)."""
import math

import pytest
import torch

from cmcr_lite.losses.infonce import (
    info_nce,
    point_pixel_infonce,
    sample_matches,
    scatter_mean,
    superpixel_infonce,
)


def _reference_nce(k, q, tau):
    """-mean_i log softmax_j(<k_i, q_j>/tau)[i], by plain Python loops over normalised rows."""
    def norm(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    k = [norm(r) for r in k.tolist()]
    q = [norm(r) for r in q.tolist()]
    total = 0.0
    for i in range(len(k)):
        s = [sum(a * b for a, b in zip(k[i], q[j])) / tau for j in range(len(q))]
        m = max(s)
        log_z = m + math.log(sum(math.exp(x - m) for x in s))
        total += -(s[i] - log_z)
    return total / len(k)


def _fixed(m=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, c, generator=g, dtype=torch.float64), torch.randn(m, c, generator=g,
                                                                             dtype=torch.float64)


def test_point_pixel_matches_loop_all_pairs():
    k, q = _fixed()
    got = point_pixel_infonce(k, q, tau=0.07, num_matches=2048)
    assert got.item() == pytest.approx(_reference_nce(k, q, 0.07), rel=1e-10)
    # direction: rows are points; swapping the inputs gives the pixel->point loss, which differs
    assert point_pixel_infonce(q, k, tau=0.07).item() != pytest.approx(got.item(), rel=1e-6)


def test_symmetric_is_average_of_directions():
    k, q = _fixed(seed=3)
    sym = point_pixel_infonce(k, q, tau=0.1, symmetric=True)
    ref = 0.5 * (_reference_nce(k, q, 0.1) + _reference_nce(q, k, 0.1))
    assert sym.item() == pytest.approx(ref, rel=1e-10)


def test_sampling_respects_num_matches_and_generator():
    idx = sample_matches(50, 8, generator=torch.Generator().manual_seed(1))
    assert idx.shape == (8,) and idx.dtype == torch.int64
    assert len(set(idx.tolist())) == 8 and 0 <= idx.min() and idx.max() < 50
    assert sample_matches(5, 8).shape == (5,)  # fewer pairs than matches: all of them
    idx2 = sample_matches(50, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, idx2)

    k, q = _fixed(m=50, c=8, seed=2)
    a = point_pixel_infonce(k, q, num_matches=8, generator=torch.Generator().manual_seed(7))
    b = point_pixel_infonce(k, q, num_matches=8, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item()
    # the loss uses exactly the sampled subset: equals the loop on those rows
    sub = sample_matches(50, 8, generator=torch.Generator().manual_seed(7))
    assert a.item() == pytest.approx(_reference_nce(k[sub], q[sub], 0.07), rel=1e-10)
    c = point_pixel_infonce(k, q, num_matches=8, generator=torch.Generator().manual_seed(8))
    assert c.item() != pytest.approx(a.item(), rel=1e-6)


def test_perfect_alignment_loss_shrinks_with_tau():
    # orthonormal features: positives have similarity 1, negatives 0 -> loss = log(1+(n-1)e^{-1/tau})
    n = 16
    k = torch.eye(n, dtype=torch.float64)
    losses = [point_pixel_infonce(k, 3.0 * k, tau=t).item() for t in (1.0, 0.1, 0.07, 0.01)]
    for t, l in zip((1.0, 0.1, 0.07, 0.01), losses):
        assert l == pytest.approx(math.log1p((n - 1) * math.exp(-1.0 / t)), rel=1e-9, abs=1e-15)
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 1e-20 and losses[2] < 1e-4


def test_gradient_flows_and_errors():
    k, q = _fixed()
    k.requires_grad_(True)
    point_pixel_infonce(k, q).backward()
    assert k.grad is not None and torch.isfinite(k.grad).all() and k.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="point_pixel_infonce"):
        point_pixel_infonce(torch.zeros(5, 4), torch.zeros(6, 4))
    with pytest.raises(ValueError):
        info_nce(torch.zeros(3, 4), torch.zeros(3, 4), tau=0.0)


def test_scatter_mean_by_hand():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 6.0]])
    means, counts = scatter_mean(feats, torch.tensor([0, 0, 2, 0]), 3)
    assert counts.tolist() == [3, 0, 1]
    assert torch.allclose(means, torch.tensor([[3.0, 4.0], [0.0, 0.0], [10.0, 0.0]]))


def test_superpixel_pooling_by_hand():
    # global ids: 10 and 11 in image 0, 20 in image 1, 30 has pixels but no point, 40 points only
    point_feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [2.0, 2.0], [0.0, 4.0],
                                [7.0, 7.0], [5.0, 5.0]], dtype=torch.float64)
    point_sp = torch.tensor([10, 10, 11, 20, 20, 40, -1])
    pixel_feats = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 3.0], [1.0, 2.0],
                                [9.0, 9.0], [4.0, 4.0]], dtype=torch.float64)
    pixel_sp = torch.tensor([10, 10, 11, 20, 20, 30, -1])
    # hand averages for the superpixels present in both (10, 11, 20)
    k = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.5, 2.5]], dtype=torch.float64)
    got = superpixel_infonce(point_feats, pixel_feats, point_sp, pixel_sp, tau=0.5)
    assert got.item() == pytest.approx(_reference_nce(k, q, 0.5), rel=1e-10)
    # the order of rows is irrelevant
    perm_p, perm_i = torch.tensor([3, 0, 6, 5, 1, 4, 2]), torch.tensor([6, 4, 2, 0, 5, 3, 1])
    got2 = superpixel_infonce(point_feats[perm_p], pixel_feats[perm_i], point_sp[perm_p],
                              pixel_sp[perm_i], tau=0.5)
    assert got2.item() == pytest.approx(got.item(), rel=1e-10)


def test_superpixel_errors_and_empty():
    f = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="point_superpixel"):
        superpixel_infonce(f, f, torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="pixel_superpixel"):
        superpixel_infonce(f, f, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="widths"):
        superpixel_infonce(f, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
                           torch.zeros(4, dtype=torch.long))
    x = torch.randn(4, 3, requires_grad=True)
    loss = superpixel_infonce(x, torch.randn(4, 3), torch.tensor([0, 0, 1, 1]),
                              torch.tensor([2, 2, 3, 3]))
    assert loss.item() == 0.0
    loss.backward()


def test_infonce_from_logits_by_hand():
    """The one InfoNCE of the package, against the formula written out row by row."""
    import math

    from cmcr_lite.losses.infonce import infonce_from_logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, generator=g, dtype=torch.float64)
    rows = [-logits[i, i].item() + math.log(sum(math.exp(v) for v in logits[i].tolist())) for i in range(5)]
    cols = [-logits[i, i].item() + math.log(sum(math.exp(v) for v in logits[:, i].tolist())) for i in range(5)]
    assert infonce_from_logits(logits).item() == pytest.approx(sum(rows) / 5, abs=1e-12)
    assert infonce_from_logits(logits, symmetric=True).item() == pytest.approx((sum(rows) + sum(cols)) / 10, abs=1e-12)
    excluded = logits.clone()
    excluded[0, 1] = float("-inf")  # an excluded candidate drops out of its row's sum
    row0 = -logits[0, 0].item() + math.log(sum(math.exp(v) for j, v in enumerate(logits[0].tolist()) if j != 1))
    assert infonce_from_logits(excluded).item() == pytest.approx((row0 + sum(rows[1:])) / 5, abs=1e-12)

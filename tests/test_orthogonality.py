"""Orthogonality loss L_orth = ||F^T G||_F / D^2 on row-normalised features (docs/paper.md §4.2)."""
import math

import pytest
import torch

from cmcr_lite.losses.orthogonality import orthogonality_loss

# 4x4 Hadamard / 2: orthonormal columns, and every row of any column subset has the same norm
H = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]],
                 dtype=torch.float64) / 2


def test_zero_for_orthogonal_channel_subspaces():
    scales = torch.tensor([[0.3], [2.0], [5.0], [1.1]], dtype=torch.float64)
    shared = scales * H[:, :2]  # row scales are removed by the row normalisation
    specific = 7.0 * H[:, 2:]
    assert orthogonality_loss(shared, specific).item() == pytest.approx(0.0, abs=1e-15)


def test_matches_hand_computation():
    shared = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]
    specific = [[1.0, 1.0], [0.0, -5.0], [2.0, 0.0]]

    def norm(r):
        n = math.sqrt(sum(x * x for x in r))
        return [x / n for x in r]

    f = [norm(r) for r in shared]  # (0.6, 0.8), (1, 0), (0, 1)
    g = [norm(r) for r in specific]  # (1/sqrt2, 1/sqrt2), (0, -1), (1, 0)
    d = 2
    cross = [[sum(f[n][a] * g[n][b] for n in range(3)) for b in range(d)] for a in range(d)]
    # cross = [[0.6/sqrt2, 0.6/sqrt2 - 1], [0.8/sqrt2 + 1, 0.8/sqrt2]]
    r2 = math.sqrt(2)
    assert cross[0][0] == pytest.approx(0.6 / r2) and cross[0][1] == pytest.approx(0.6 / r2 - 1)
    expected = math.sqrt(sum(c * c for row in cross for c in row)) / d ** 2
    got = orthogonality_loss(torch.tensor(shared, dtype=torch.float64),
                             torch.tensor(specific, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_identical_features_give_maximal_value_and_d_squared_scaling():
    # F = G = e_0 for all N rows: F^T G has one entry N -> loss = N / D^2
    n, d = 10, 64
    x = torch.zeros(n, d)
    x[:, 0] = torch.rand(n) + 0.1
    assert orthogonality_loss(x, x).item() == pytest.approx(n / d ** 2, rel=1e-6)


def test_gradient_flows_to_both_inputs():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(20, 8, generator=g, requires_grad=True)
    specific = torch.randn(20, 8, generator=g, requires_grad=True)
    orthogonality_loss(shared, specific).backward()
    assert shared.grad.abs().sum() > 0 and specific.grad.abs().sum() > 0
    # a small step against the gradient lowers the loss
    with torch.no_grad():
        before = orthogonality_loss(shared, specific)
        after = orthogonality_loss(shared - 0.5 * shared.grad, specific - 0.5 * specific.grad)
    assert after < before


def test_zero_rows_and_shape_errors():
    z = torch.zeros(3, 4, requires_grad=True)
    o = torch.ones(3, 4, requires_grad=True)
    loss = orthogonality_loss(z, o)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all() and torch.isfinite(o.grad).all()
    assert orthogonality_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        orthogonality_loss(torch.zeros(3, 4), torch.zeros(3, 5))

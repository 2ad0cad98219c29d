"""Tests for cmcr_lite/theory.py against independent references (closed forms, loops, hand sums)."""
import math

import pytest
import torch

from cmcr_lite import theory as T


def scalar_model(noise_std=1.0, u_weight=0.0):
    """x = s + u_weight*u_x + noise, y = s + noise (dim 1, ds = du = 1)."""
    a_x = torch.tensor([[1.0, u_weight]], dtype=torch.float64)
    a_y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    return T.TwoViewGaussian(A_x=a_x, A_y=a_y, ds=1, du=1, noise_std=noise_std)


# ----------------------------------------------------------------------------- closed-form MI
@pytest.mark.parametrize("rho", [0.0, 0.3, -0.6, 0.95])
def test_gaussian_mi_scalar_closed_form(rho):
    a, b = 2.0, 0.5   # MI does not depend on the marginal scales
    cov = [[a * a, rho * a * b], [rho * a * b, b * b]]
    assert T.gaussian_mutual_information(cov, 1) == pytest.approx(-0.5 * math.log(1 - rho ** 2), abs=1e-12)


def test_gaussian_mi_sums_over_independent_pairs():
    rhos = [0.2, 0.7, 0.9]
    cov = torch.eye(6, dtype=torch.float64)
    for k, r in enumerate(rhos):   # X = coords 0..2, Y = coords 3..5, pairs (k, 3+k)
        cov[k, 3 + k] = cov[3 + k, k] = r
    expected = sum(-0.5 * math.log(1 - r * r) for r in rhos)
    assert T.gaussian_mutual_information(cov, 3) == pytest.approx(expected, abs=1e-12)


def test_gaussian_mi_rejects_bad_input():
    with pytest.raises(ValueError, match="dx"):
        T.gaussian_mutual_information(torch.eye(3), 3)
    with pytest.raises(ValueError, match="positive definite"):
        T.gaussian_mutual_information(torch.ones(2, 2), 1)


def test_analytic_mi_of_scalar_model():
    m = scalar_model(noise_std=0.5)
    rho = 1.0 / (1.0 + 0.25)     # Cov(x, y) = Var(s) = 1, Var(x) = Var(y) = 1.25
    assert T.analytic_mutual_information(m) == pytest.approx(-0.5 * math.log(1 - rho ** 2), abs=1e-12)
    # the specific latent of X adds variance to X but no information about Y
    m2 = scalar_model(noise_std=0.5, u_weight=2.0)
    rho2 = 1.0 / math.sqrt(1.0 + 4.0 + 0.25) / math.sqrt(1.25)
    assert T.analytic_mutual_information(m2) == pytest.approx(-0.5 * math.log(1 - rho2 ** 2), abs=1e-12)


def test_sample_shapes_and_empirical_covariance():
    m = T.make_two_view_gaussian(dim_x=5, dim_y=4, ds=2, du=3, seed=3)
    x, y, s, ux, uy = m.sample(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 5) and y.shape == (20000, 4)
    assert s.shape == (20000, 2) and ux.shape == (20000, 3) and uy.shape == (20000, 3)
    assert all(t.dtype == torch.float32 for t in (x, y, s, ux, uy))
    # x is exactly A_x [s; u_x] + noise: the residual is noise of the stated std, independent of y
    resid = x.double() - torch.cat([s, ux], 1).double() @ m.A_x.T
    assert resid.std().item() == pytest.approx(m.noise_std, rel=0.02)
    emp = torch.cov(torch.cat([x, y], 1).double().T)
    assert T.gaussian_mutual_information(emp, 5) == pytest.approx(T.analytic_mutual_information(m), abs=0.02)


# ----------------------------------------------------------------------------- InfoNCE
def loop_infonce(zx, zy, tau, normalize, gamma, direction):
    """Reference: explicit double loop with math.exp/log."""
    n = zx.shape[0]
    zx, zy = zx.double().tolist(), zy.double().tolist()
    if normalize:
        zx = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in zx]
        zy = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in zy]

    def f(a, b):
        dot = sum(p * q for p, q in zip(a, b))
        return (dot - 0.5 * gamma * (sum(p * p for p in a) + sum(q * q for q in b))) / tau

    total = 0.0
    for i in range(n):
        if direction == "xy":
            logits = [f(zx[i], zy[j]) for j in range(n)]
        else:
            logits = [f(zx[j], zy[i]) for j in range(n)]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / n


@pytest.mark.parametrize("normalize,gamma,tau", [(False, 0.0, 1.0), (True, 0.0, 0.1),
                                                 (False, 0.7, 0.5)])
def test_infonce_matches_explicit_loops(normalize, gamma, tau):
    g = torch.Generator().manual_seed(0)
    zx, zy = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    one = T.infonce_loss(zx, zy, tau, normalize=normalize, gamma=gamma)
    sym = T.infonce_loss(zx, zy, tau, normalize=normalize, gamma=gamma, symmetric=True)
    ref_xy = loop_infonce(zx, zy, tau, normalize, gamma, "xy")
    ref_yx = loop_infonce(zx, zy, tau, normalize, gamma, "yx")
    assert float(one) == pytest.approx(ref_xy, abs=1e-5)
    assert float(sym) == pytest.approx(0.5 * (ref_xy + ref_yx), abs=1e-5)


def test_infonce_perfect_and_uninformative_limits():
    n = 16
    z = 50.0 * torch.eye(n)        # every positive far above every negative: L -> 0
    assert float(T.infonce_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    zero = torch.zeros(n, 4)       # all logits equal: L = log N, bound = 0
    assert float(T.infonce_loss(zero, zero, symmetric=True)) == pytest.approx(math.log(n), abs=1e-6)


def test_infonce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        T.infonce_loss(torch.zeros(4, 3), torch.zeros(5, 3))


def test_optimal_critic_is_the_log_density_ratio():
    m = T.make_two_view_gaussian(dim_x=3, dim_y=2, ds=1, du=1, seed=1)
    x, y, *_ = m.sample(5, torch.Generator().manual_seed(2))
    cov = T._xy_covariance(m)
    joint = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64), cov)
    px = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), cov[:3, :3])
    py = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov[3:, 3:])
    crit = T.optimal_critic(m, x, y)
    for i in range(5):
        for j in range(5):
            xy = torch.cat([x[i], y[j]]).double()
            ref = joint.log_prob(xy) - px.log_prob(x[i].double()) - py.log_prob(y[j].double())
            assert float(crit[i, j]) == pytest.approx(float(ref), abs=1e-9)


def test_infonce_bound_with_optimal_critic_never_exceeds_mi():
    m = T.make_two_view_gaussian(seed=0)
    mi = T.analytic_mutual_information(m)
    g = torch.Generator().manual_seed(0)
    means = []
    for n in (2, 8, 32, 512):
        mean, sem = T.infonce_optimal_critic_estimate(m, n, n_batches=20, generator=g)
        assert mean <= min(mi, math.log(n)) + 3 * sem + 1e-3, (n, mean, sem, mi)
        means.append(mean)
    assert means[0] < means[1] < means[2] < mi        # rises with N ...
    assert means[-1] > mi - 0.1                       # ... up to I(X;Y)
    assert means[0] < 0.5 * mi                        # and is far below it at N = 2


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained():
    m = T.make_two_view_gaussian(seed=0)
    return m, T.train_infonce_encoders(m, n_steps=250, seed=0), \
        T.train_with_reconstruction(m, n_steps=250, seed=0)


def test_trained_infonce_bound_below_mi(trained):
    m, nce, rec = trained
    mi = T.analytic_mutual_information(m)
    g = torch.Generator().manual_seed(7)
    for res in (nce, rec):
        est = res.infonce_estimate(m, 256, n_batches=30, generator=g)
        assert est <= mi + 0.05
        assert est > 0.85 * mi                        # the learnt critic gets close to the bound
        assert len(res.history) == 250 and res.history[-1] > res.history[0] + 0.5


def test_dot_product_critic_plateaus_lower():
    m = T.make_two_view_gaussian(seed=0)
    g = torch.Generator().manual_seed(7)
    dot = T.train_infonce_encoders(m, n_steps=250, learn_gamma=False, seed=0)
    assert dot.infonce_estimate(m, 256, 20, g) < 0.7 * T.analytic_mutual_information(m)


def test_training_is_deterministic():
    m = T.make_two_view_gaussian(seed=0)
    a = T.train_infonce_encoders(m, n_steps=20, seed=4)
    b = T.train_infonce_encoders(m, n_steps=20, seed=4)
    assert a.history == b.history
    assert torch.equal(a.shared_x.weight, b.shared_x.weight)


def test_infonce_keeps_shared_discards_specific_reconstruction_recovers(trained):
    m, nce, rec = trained
    g = torch.Generator().manual_seed(11)
    x, y, s, ux, _ = m.sample(4000, g)
    xt, yt, st, uxt, _ = m.sample(4000, g)
    r2 = {}
    for name, res in (("nce", nce), ("rec", rec)):
        z, zt = res.encode(x, y)[0], res.encode(xt, yt)[0]
        r2[name] = (T.linear_probe_r2(z, s, zt, st), T.linear_probe_r2(z, ux, zt, uxt))
    raw_s = T.linear_probe_r2(x, s, xt, st)
    assert r2["nce"][0] > raw_s - 0.05 and r2["rec"][0] > raw_s - 0.05
    assert r2["nce"][1] < 0.1
    assert r2["rec"][1] > 0.6
    assert rec.rec_history[-1] < rec.rec_history[0]


# ----------------------------------------------------------------------------- linear probe
def test_probe_r2_linear_relation_and_noise():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5000, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    assert T.linear_probe_r2(f, (f @ w)[:, 0] + 3.0) == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(5000, generator=g)
    assert abs(T.linear_probe_r2(f, noise)) < 0.01
    # signal variance 1, noise variance 1 -> R^2 = 1/2, on a held-out set too
    u = torch.randn(5000, 1, generator=g)
    ft = torch.randn(5000, 3, generator=g)
    half = T.linear_probe_r2(f[:, :1], f[:, 0] + u[:, 0], ft[:, :1], ft[:, 0] + noise)
    assert half == pytest.approx(0.5, abs=0.03)


# ----------------------------------------------------------------------------- decomposition
def test_decomposition_hand_computed_shared_target():
    # x = s + u + e (Var 3), y = s + e' (Var 2), t = s + e_t (Var 2); all noise variances 1.
    m = scalar_model(noise_std=1.0, u_weight=1.0)
    d = T.information_decomposition(m, T.GaussianTarget([[1.0]], [[0.0]], noise_std=1.0))
    # Var(X|Y) = 3 - 1/2, Var(T|Y) = 2 - 1/2, Cov(X,T|Y) = 1 - 1/2 -> rho^2 = 0.25/3.75 = 1/15
    assert d["I_XT"] == pytest.approx(-0.5 * math.log(5 / 6), abs=1e-12)
    assert d["I_XT_given_Y"] == pytest.approx(-0.5 * math.log(14 / 15), abs=1e-12)
    assert d["I_XYT"] == pytest.approx(0.5 * math.log(84 / 75), abs=1e-12)
    assert d["I_XY"] == pytest.approx(-0.5 * math.log(5 / 6), abs=1e-12)
    assert d["I_YT"] == pytest.approx(-0.5 * math.log(3 / 4), abs=1e-12)


def test_decomposition_hand_computed_specific_target_is_synergistic():
    # same views, t = u + e_t: Y knows nothing about T, and the co-information is negative
    m = scalar_model(noise_std=1.0, u_weight=1.0)
    d = T.information_decomposition(m, T.GaussianTarget([[0.0]], [[1.0]], noise_std=1.0))
    assert d["I_XT"] == pytest.approx(-0.5 * math.log(5 / 6), abs=1e-12)
    assert d["I_XT_given_Y"] == pytest.approx(-0.5 * math.log(4 / 5), abs=1e-12)
    assert d["I_XYT"] == pytest.approx(0.5 * math.log(24 / 25), abs=1e-12)
    assert d["I_YT"] == pytest.approx(0.0, abs=1e-12)


def schur(c, a, b):
    """Covariance of the coordinates a given the coordinates b."""
    return c[a][:, a] - c[a][:, b] @ torch.linalg.solve(c[b][:, b], c[b][:, a])


def test_decomposition_terms_sum_and_match_conditional_covariances():
    m = T.make_two_view_gaussian(dim_x=4, dim_y=3, ds=2, du=2, seed=5)
    g = torch.Generator().manual_seed(1)
    tgt = T.GaussianTarget(torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g), 0.3)
    d = T.information_decomposition(m, tgt)
    c = T.joint_covariance(m, tgt)
    ix, iy, it = [0, 1, 2, 3], [4, 5, 6], [7, 8]
    assert d["I_XYT"] + d["I_XT_given_Y"] == pytest.approx(d["I_XT"], abs=1e-12)
    # I(X;T|Y) from the conditional covariance of (X, T) given Y
    cond = schur(c, ix + it, iy)
    assert d["I_XT_given_Y"] == pytest.approx(T.gaussian_mutual_information(cond, 4), abs=1e-9)
    # co-information is symmetric: I(X;Y;T) = I(X;Y) - I(X;Y|T)
    i_xy_given_t = T.gaussian_mutual_information(schur(c, ix + iy, it), 4)
    assert d["I_XYT"] == pytest.approx(d["I_XY"] - i_xy_given_t, abs=1e-9)
    # the views' MI in the decomposition equals the two-view closed form
    assert d["I_XY"] == pytest.approx(T.analytic_mutual_information(m), abs=1e-12)


def test_target_weight_shape_errors():
    m = T.make_two_view_gaussian(ds=2, du=2)
    with pytest.raises(ValueError, match="ds=2"):
        T.information_decomposition(m, T.GaussianTarget([[1.0, 0.0, 0.0]], [[1.0, 0.0]]))


def test_run_sizes_keep_explicit_values_over_the_preset():
    assert T.run_sizes("full") == T.RUN_SIZES["full"]
    assert T.run_sizes("full", n_steps=500, n_probe=None) == {**T.RUN_SIZES["full"], "n_steps": 500}
    assert T.run_sizes("lite", n_batches=3)["n_batches"] == 3
    with pytest.raises(ValueError, match="preset"):
        T.run_sizes("medium")
    with pytest.raises(ValueError, match="unknown"):
        T.run_sizes("lite", steps=3)

"""The information-theoretic argument of CMCR (docs/paper.md §1.2) in small, exact, runnable form.

Everything here is a toy: two *views* X and Y (stand-ins for the point cloud X^P and the image
X^I) built from a latent that is partly **shared** (s) and partly **view-specific** (u_x, u_y)::

    l   = [s; u_x; u_y] ~ N(0, I)                      s: (ds,), u_x, u_y: (du,)
    x   = A_x [s; u_x] + noise_std * eps_x              x: (dim_x,)
    y   = A_y [s; u_y] + noise_std * eps_y              y: (dim_y,)

Because every variable is jointly Gaussian, all the information quantities of §1.2 have closed
forms (log-determinants of covariance blocks), so the learned estimates can be checked exactly:

1. ``analytic_mutual_information`` gives I(X;Y); InfoNCE's ``log N - L`` must stay below it
   (and below log N) — ``infonce_loss``, ``infonce_optimal_critic_estimate``,
   ``train_infonce_encoders``.
2. A linear shared head (dim ds) trained *only* with InfoNCE keeps the shared latent s and
   discards u_x; adding, CMCR-style, a specific head and a reconstruction term
   (``train_with_reconstruction``) brings u_x back — measured with ``linear_probe_r2`` and, exactly,
   with ``feature_target_information``.
3. ``information_decomposition`` splits the task information of a Gaussian target T:
   I(X;T) = I(X;Y;T) + I(X;T|Y) (shared co-information + view-specific part).

All information quantities are in **nats** (natural log). Closed forms are computed in float64;
samples and trained features are float32 torch tensors. CPU-fast: every function runs in well
under a second except training (a few hundred Adam steps on 8-d linear maps, ~1 s; run
single-threaded, see ``_single_thread``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from cmcr_lite.losses.infonce import infonce_from_logits
from cmcr_lite.runtime import torch_threads

__all__ = [
    "TwoViewGaussian",
    "make_two_view_gaussian",
    "gaussian_mutual_information",
    "analytic_mutual_information",
    "infonce_loss",
    "optimal_critic",
    "infonce_optimal_critic_estimate",
    "TrainResult",
    "train_infonce_encoders",
    "train_with_reconstruction",
    "linear_probe_r2",
    "GaussianTarget",
    "joint_covariance",
    "covariance_block",
    "information_decomposition",
    "feature_target_information",
]


def _single_thread():
    """Run tiny-matrix loops on one intra-op thread (restored afterwards).

    On a 2-core machine under load, torch's thread pool makes these 8-d problems >10x slower.
    """
    return torch_threads(1)


# --------------------------------------------------------------------------------------------
# The two-view Gaussian model
# --------------------------------------------------------------------------------------------
@dataclass
class TwoViewGaussian:
    """Two views of a shared latent, each with its own specific latent and isotropic noise.

    Attributes:
        A_x: (dim_x, ds + du) float64 — mixing matrix of view X, columns ``[:ds]`` act on s,
            columns ``[ds:]`` on u_x.
        A_y: (dim_y, ds + du) float64 — mixing matrix of view Y (columns ``[:ds]`` on s,
            ``[ds:]`` on u_y).
        ds: dimension of the shared latent s.
        du: dimension of each specific latent u_x, u_y.
        noise_std: standard deviation of the isotropic observation noise on x and y.
    """

    A_x: torch.Tensor
    A_y: torch.Tensor
    ds: int
    du: int
    noise_std: float

    def __post_init__(self):
        k = self.ds + self.du
        for name in ("A_x", "A_y"):
            a = getattr(self, name)
            if a.dim() != 2 or a.shape[1] != k:
                raise ValueError(f"TwoViewGaussian.{name}: expected shape (dim, ds + du = {k}), "
                                 f"got {tuple(a.shape)}")
        if self.noise_std <= 0:
            raise ValueError(f"TwoViewGaussian.noise_std must be > 0 (keeps covariances "
                             f"non-singular), got {self.noise_std}")

    @property
    def dim_x(self) -> int:
        return self.A_x.shape[0]

    @property
    def dim_y(self) -> int:
        return self.A_y.shape[0]

    @property
    def latent_dim(self) -> int:
        """Dimension of the full latent l = [s; u_x; u_y]."""
        return self.ds + 2 * self.du

    def latent_maps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(M_x, M_y): (dim_x, ds+2du), (dim_y, ds+2du) float64 with x = M_x l + noise."""
        ds, du = self.ds, self.du
        mx = torch.zeros(self.dim_x, self.latent_dim, dtype=torch.float64)
        my = torch.zeros(self.dim_y, self.latent_dim, dtype=torch.float64)
        mx[:, :ds], mx[:, ds:ds + du] = self.A_x[:, :ds], self.A_x[:, ds:]
        my[:, :ds], my[:, ds + du:] = self.A_y[:, :ds], self.A_y[:, ds:]
        return mx, my

    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        """Draw ``n`` i.i.d. samples.

        Returns:
            x: (n, dim_x) float32, y: (n, dim_y) float32, s: (n, ds) float32,
            u_x: (n, du) float32, u_y: (n, du) float32.
        """
        g = generator
        lat = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        mx, my = self.latent_maps()
        x = lat @ mx.T + self.noise_std * torch.randn(n, self.dim_x, generator=g, dtype=torch.float64)
        y = lat @ my.T + self.noise_std * torch.randn(n, self.dim_y, generator=g, dtype=torch.float64)
        s, u_x, u_y = lat[:, :self.ds], lat[:, self.ds:self.ds + self.du], lat[:, self.ds + self.du:]
        return tuple(t.float() for t in (x, y, s, u_x, u_y))


def make_two_view_gaussian(dim_x: int = 8, dim_y: int = 8, ds: int = 2, du: int = 2,
                           shared_scale: float = 1.0, specific_scale: float = 1.0,
                           noise_std: float = 0.5, seed: int = 0) -> TwoViewGaussian:
    """Build a :class:`TwoViewGaussian` with random mixing matrices.

    The columns of A_x, A_y acting on s are scaled by ``shared_scale`` and those acting on
    u_x / u_y by ``specific_scale`` (entries are N(0, 1/(ds+du)) before scaling), so
    ``shared_scale / noise_std`` sets I(X;Y) and ``specific_scale`` how much of each view is
    specific. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    k = ds + du
    scale = torch.cat([torch.full((ds,), float(shared_scale)), torch.full((du,), float(specific_scale))])
    a_x = torch.randn(dim_x, k, generator=g, dtype=torch.float64) / math.sqrt(k) * scale.double()
    a_y = torch.randn(dim_y, k, generator=g, dtype=torch.float64) / math.sqrt(k) * scale.double()
    return TwoViewGaussian(A_x=a_x, A_y=a_y, ds=ds, du=du, noise_std=float(noise_std))


# --------------------------------------------------------------------------------------------
# Closed-form mutual information
# --------------------------------------------------------------------------------------------
def _logdet(c: torch.Tensor) -> torch.Tensor:
    sign, val = torch.linalg.slogdet(c)
    if sign <= 0:
        raise ValueError(f"_logdet: covariance block of shape {tuple(c.shape)} is not positive "
                         f"definite (slogdet sign {sign.item()})")
    return val


def gaussian_mutual_information(cov, dx: int) -> float:
    """I(X;Y) in nats for a jointly Gaussian vector (X, Y) with covariance ``cov``.

    Args:
        cov: (dx + dy, dx + dy) symmetric positive-definite covariance (tensor or array-like),
            the first ``dx`` coordinates are X, the rest Y.
        dx: dimension of X (1 <= dx < cov.shape[0]).

    Returns:
        ``0.5 * (log det Σ_xx + log det Σ_yy - log det Σ)`` as a Python float (nats).
    """
    c = torch.as_tensor(cov, dtype=torch.float64)
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"gaussian_mutual_information: cov must be square, got {tuple(c.shape)}")
    if not 1 <= dx < c.shape[0]:
        raise ValueError(f"gaussian_mutual_information: dx must be in [1, {c.shape[0] - 1}], got {dx}")
    return float(0.5 * (_logdet(c[:dx, :dx]) + _logdet(c[dx:, dx:]) - _logdet(c)))


def _xy_covariance(model: TwoViewGaussian) -> torch.Tensor:
    mx, my = model.latent_maps()
    m = torch.cat([mx, my], 0)
    return m @ m.T + model.noise_std ** 2 * torch.eye(m.shape[0], dtype=torch.float64)


def analytic_mutual_information(model: TwoViewGaussian) -> float:
    """Exact I(X;Y) of the two views, in nats (only the shared latent s contributes)."""
    return gaussian_mutual_information(_xy_covariance(model), model.dim_x)


# --------------------------------------------------------------------------------------------
# InfoNCE
# --------------------------------------------------------------------------------------------
def infonce_loss(zx: torch.Tensor, zy: torch.Tensor, tau: float = 1.0, normalize: bool = False,
                 symmetric: bool = False, gamma=0.0) -> torch.Tensor:
    """InfoNCE with diagonal positives, in nats.

    Logits are ``f_ij / tau`` with the critic

        f_ij = <zx_i, zy_j> - (gamma / 2) * (||zx_i||² + ||zy_j||²)

    ``gamma = 0`` (default) gives plain dot-product logits, ``normalize=True`` L2-normalises the
    features first (cosine logits, as CMCR's shared heads; the gamma term is then a constant).
    The ``||zx_i||²`` term is constant along a row and cancels in the x→y softmax; ``||zy_j||²``
    cancels in the y→x one. With gamma in (0, 1) this is the form of the Bayes-optimal critic
    log p(x,y)/(p(x)p(y)) of Gaussian views in canonical coordinates (see the notebook §a).

    Args:
        zx: (N, C) float — row ``i`` is paired with row ``i`` of ``zy``; other rows are negatives.
        zy: (N, C) float.
        tau: temperature (> 0).
        normalize: cosine (True) or dot-product (False) similarity.
        symmetric: False (default, as ``losses/infonce.py`` and the official code) — one direction,
            each x_i classifies its y among the N y's: ``mean_i -log softmax_j(logits[i, j])[i]``.
            True — the mean of that and the y→x direction (columns as anchors). Each direction is a
            lower bound on I(X;Y) via ``log N - L``, so is their mean.
        gamma: float or 0-d tensor (may require grad).

    Returns:
        Scalar tensor L (nats); ``log N - L`` is the InfoNCE lower bound on I(Zx;Zy) <= I(X;Y)
        (in expectation over batches).
    """
    if zx.dim() != 2 or zx.shape != zy.shape:
        raise ValueError(f"infonce_loss: zx and zy must both be (N, C) with equal shapes, got "
                         f"{tuple(zx.shape)} and {tuple(zy.shape)}")
    if tau <= 0:
        raise ValueError(f"infonce_loss: tau must be > 0, got {tau}")
    if normalize:
        zx, zy = F.normalize(zx, dim=1), F.normalize(zy, dim=1)
    logits = zx @ zy.T
    if not (isinstance(gamma, (int, float)) and gamma == 0):
        logits = logits - 0.5 * gamma * ((zx ** 2).sum(1)[:, None] + (zy ** 2).sum(1)[None, :])
    return infonce_from_logits(logits / tau, symmetric)


def optimal_critic(model: TwoViewGaussian, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bayes-optimal InfoNCE critic f(x_i, y_j) = log p(y_j | x_i) - log p(y_j) (nats).

    Args:
        x: (N, dim_x) float, y: (M, dim_y) float.

    Returns:
        (N, M) float64 matrix; equal to log p(x_i, y_j) / (p(x_i) p(y_j)), so symmetric in roles.
    """
    c = _xy_covariance(model)
    dx = model.dim_x
    sxx, sxy, syy = c[:dx, :dx], c[:dx, dx:], c[dx:, dx:]
    b = torch.linalg.solve(sxx, sxy).T                      # (dim_y, dim_x): E[y|x] = b x
    cond = syy - sxy.T @ torch.linalg.solve(sxx, sxy)        # Cov(y | x)
    x, y = x.double(), y.double()
    mu = x @ b.T                                             # (N, dim_y)
    diff = y[None, :, :] - mu[:, None, :]                    # (N_x, N_y, dim_y)
    q_cond = (diff @ torch.linalg.inv(cond) * diff).sum(-1)
    q_marg = (y @ torch.linalg.inv(syy) * y).sum(-1)         # (N_y,)
    return -0.5 * (q_cond - q_marg[None, :]) - 0.5 * (_logdet(cond) - _logdet(syy))


@torch.no_grad()
def infonce_optimal_critic_estimate(model: TwoViewGaussian, n: int, n_batches: int = 20,
                                    generator: Optional[torch.Generator] = None,
                                    symmetric: bool = False) -> Tuple[float, float]:
    """``log N - L`` of InfoNCE with the *optimal* critic f(x, y) = log p(y|x)/p(y), N = ``n``.

    This is the best any encoder/critic can do at batch size N; it rises with N toward I(X;Y) and
    never exceeds min(I(X;Y), log N) in expectation.

    Returns:
        (mean, standard error) over ``n_batches`` independent batches, both in nats.
    """
    vals = []
    with _single_thread():
        for _ in range(n_batches):
            x, y, *_ = model.sample(n, generator)
            crit = optimal_critic(model, x, y)
            vals.append(math.log(n) - float(infonce_from_logits(crit, symmetric)))
    v = torch.tensor(vals, dtype=torch.float64)
    sem = float(v.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(v.mean()), sem


# --------------------------------------------------------------------------------------------
# Training linear encoders: InfoNCE only, or InfoNCE + reconstruction
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Output of :func:`train_infonce_encoders` / :func:`train_with_reconstruction`.

    Each view has a *shared* head (``shared_x``/``shared_y``, trained by InfoNCE) and, with
    reconstruction only, a *specific* head (``specific_x``/``specific_y``), as CMCR's h^sh / h^sp.

    Attributes:
        shared_x, shared_y: ``nn.Linear`` (dim_x -> dim_shared), (dim_y -> dim_shared), no bias.
        history: per-step ``log N - L_NCE`` on the training batch (nats), length ``n_steps``.
        rec_history: per-step reconstruction MSE (mean over both views); empty without decoders.
        specific_x, specific_y: ``nn.Linear`` (dim -> dim_specific), no bias, or None.
        dec_x, dec_y: ``nn.Linear`` decoders (dim_shared + dim_specific -> dim_x / dim_y), or None.
        gamma_logit: 0-d tensor, critic gamma = sigmoid(gamma_logit), or None for gamma = 0.
        tau, normalize, symmetric: the InfoNCE settings used for training.
    """

    shared_x: torch.nn.Linear
    shared_y: torch.nn.Linear
    history: List[float] = field(default_factory=list)
    rec_history: List[float] = field(default_factory=list)
    specific_x: Optional[torch.nn.Linear] = None
    specific_y: Optional[torch.nn.Linear] = None
    dec_x: Optional[torch.nn.Linear] = None
    dec_y: Optional[torch.nn.Linear] = None
    gamma_logit: Optional[torch.Tensor] = None
    tau: float = 1.0
    normalize: bool = False
    symmetric: bool = True

    @property
    def gamma(self):
        """Critic gamma (see :func:`infonce_loss`): sigmoid(gamma_logit), or 0.0."""
        return 0.0 if self.gamma_logit is None else torch.sigmoid(self.gamma_logit)

    def nce(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """InfoNCE loss (nats) of the shared heads on one batch, with the trained settings."""
        return infonce_loss(self.shared_x(x), self.shared_y(y), self.tau, self.normalize,
                            self.symmetric, self.gamma)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Full representations of x and y: (N, dim_shared [+ dim_specific]) float32 each.

        InfoNCE-only: the shared head. With reconstruction: [shared; specific] concatenated.
        """
        return self._features(x, y)

    def _features(self, x, y):
        fx, fy = self.shared_x(x), self.shared_y(y)
        if self.specific_x is not None:
            fx, fy = torch.cat([fx, self.specific_x(x)], 1), torch.cat([fy, self.specific_y(y)], 1)
        return fx, fy

    @torch.no_grad()
    def infonce_estimate(self, model: TwoViewGaussian, n: int, n_batches: int = 20,
                         generator: Optional[torch.Generator] = None) -> float:
        """Held-out mean of ``log N - L_NCE`` over ``n_batches`` fresh batches of size ``n`` (nats)."""
        with _single_thread():
            vals = [math.log(n) - float(self.nce(*model.sample(n, generator)[:2]))
                    for _ in range(n_batches)]
        return sum(vals) / len(vals)


def _train(model: TwoViewGaussian, dim_shared: int, dim_specific: int, n_steps: int,
           batch_size: int, tau: float, normalize: bool, learn_gamma: bool, lr: float,
           rec_weight: float, seed: int, symmetric: bool) -> TrainResult:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
    res = TrainResult(lin(model.dim_x, dim_shared), lin(model.dim_y, dim_shared),
                      tau=tau, normalize=normalize, symmetric=symmetric)
    params = list(res.shared_x.parameters()) + list(res.shared_y.parameters())
    if learn_gamma:
        res.gamma_logit = torch.zeros((), requires_grad=True)   # gamma starts at 0.5
        params.append(res.gamma_logit)
    if rec_weight > 0:
        res.specific_x, res.specific_y = lin(model.dim_x, dim_specific), lin(model.dim_y, dim_specific)
        res.dec_x = lin(dim_shared + dim_specific, model.dim_x)
        res.dec_y = lin(dim_shared + dim_specific, model.dim_y)
        for mod in (res.specific_x, res.specific_y, res.dec_x, res.dec_y):
            params += list(mod.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    log_n = math.log(batch_size)
    with _single_thread():
        _loop(res, model, opt, g, n_steps, batch_size, rec_weight, log_n)
    return res


def _loop(res: TrainResult, model: TwoViewGaussian, opt, g, n_steps: int, batch_size: int,
          rec_weight: float, log_n: float) -> None:
    for _ in range(n_steps):
        x, y, *_ = model.sample(batch_size, g)
        nce = res.nce(x, y)
        loss = nce
        if rec_weight > 0:
            fx, fy = res._features(x, y)
            rec = 0.5 * (F.mse_loss(res.dec_x(fx), x) + F.mse_loss(res.dec_y(fy), y))
            loss = loss + rec_weight * rec
            res.rec_history.append(float(rec.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        res.history.append(log_n - float(nce.detach()))


def train_infonce_encoders(model: TwoViewGaussian, dim_shared: Optional[int] = None,
                           n_steps: int = 300, batch_size: int = 256, lr: float = 1e-2,
                           learn_gamma: bool = True, tau: float = 1.0, normalize: bool = False,
                           symmetric: bool = True, seed: int = 0) -> TrainResult:
    """Contrastive distillation only: linear shared heads z_x = W_x x, z_y = W_y y, InfoNCE loss.

    Args:
        model: the two-view data model; fresh batches of ``batch_size`` pairs every step.
        dim_shared: feature dimension (default ``model.ds``).
        lr: Adam learning rate.
        learn_gamma: learn the critic's gamma = sigmoid(logit) (see :func:`infonce_loss`); with
            it, linear heads can represent the Gaussian's optimal critic and ``log N - L`` gets
            close to I(X;Y). False gives plain dot-product logits (gamma = 0), which plateau lower.
        tau, normalize, symmetric: InfoNCE settings (see :func:`infonce_loss`).
        seed: makes initialisation and batches deterministic.

    Returns:
        :class:`TrainResult`; ``history`` is the per-step ``log N - L`` (nats, N = ``batch_size``).
    """
    dim_shared = model.ds if dim_shared is None else dim_shared
    return _train(model, dim_shared, 0, n_steps, batch_size, tau, normalize, learn_gamma, lr,
                  0.0, seed, symmetric)


def train_with_reconstruction(model: TwoViewGaussian, dim_shared: Optional[int] = None,
                              dim_specific: Optional[int] = None, n_steps: int = 300,
                              batch_size: int = 256, lr: float = 1e-2, rec_weight: float = 1.0,
                              learn_gamma: bool = True, tau: float = 1.0, normalize: bool = False,
                              symmetric: bool = True, seed: int = 0) -> TrainResult:
    """InfoNCE on the shared heads plus reconstruction of each view's own input (CMCR-style).

    Each view gets a shared head (dim ``dim_shared``, default ``model.ds``) and a specific head
    (dim ``dim_specific``, default ``model.du``); a linear decoder maps [shared; specific] back to
    the view. Loss = L_NCE(shared_x, shared_y) + ``rec_weight`` * 0.5 * (MSE(x̂, x) + MSE(ŷ, y)),
    the Gaussian-NLL form of the Barber–Agakov bound I(Z;X) >= H(X) + E log q(X|Z)
    (docs/paper.md §1.2, step 3). Other arguments as :func:`train_infonce_encoders`.
    """
    if rec_weight <= 0:
        raise ValueError(f"train_with_reconstruction: rec_weight must be > 0, got {rec_weight}")
    dim_shared = model.ds if dim_shared is None else dim_shared
    dim_specific = model.du if dim_specific is None else dim_specific
    return _train(model, dim_shared, dim_specific, n_steps, batch_size, tau, normalize,
                  learn_gamma, lr, rec_weight, seed, symmetric)


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------
def linear_probe_r2(features: torch.Tensor, target: torch.Tensor,
                    test_features: Optional[torch.Tensor] = None,
                    test_target: Optional[torch.Tensor] = None) -> float:
    """R² of the least-squares linear probe (with intercept) from ``features`` to ``target``.

    Args:
        features: (n, d) float — probe inputs (fit set).
        target: (n,) or (n, k) float — probe targets (fit set).
        test_features, test_target: optional held-out set of the same layout; if given, R² is
            measured there (it can then be negative), otherwise in-sample.

    Returns:
        R² = 1 - SSE/SST, averaged uniformly over the k target columns (unitless float; 1 = the
        target is a linear function of the features, ~0 = no linear information).
    """
    xf = torch.as_tensor(features, dtype=torch.float64)
    yt = torch.as_tensor(target, dtype=torch.float64)
    if yt.dim() == 1:
        yt = yt[:, None]
    if xf.dim() != 2 or xf.shape[0] != yt.shape[0]:
        raise ValueError(f"linear_probe_r2: features must be (n, d) and target (n,) or (n, k) with "
                         f"the same n, got {tuple(xf.shape)} and {tuple(yt.shape)}")
    design = torch.cat([xf, torch.ones(xf.shape[0], 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, yt).solution
    if test_features is not None:
        xt = torch.as_tensor(test_features, dtype=torch.float64)
        yt = torch.as_tensor(test_target, dtype=torch.float64)
        if yt.dim() == 1:
            yt = yt[:, None]
        design = torch.cat([xt, torch.ones(xt.shape[0], 1, dtype=torch.float64)], 1)
    resid = yt - design @ coef
    sst = ((yt - yt.mean(0)) ** 2).sum(0)
    return float((1.0 - (resid ** 2).sum(0) / sst).mean())


# --------------------------------------------------------------------------------------------
# Decomposition of task information: I(X;T) = I(X;Y;T) + I(X;T|Y)
# --------------------------------------------------------------------------------------------
@dataclass
class GaussianTarget:
    """A downstream target T = W_s s + W_u u_x + noise_std * eps (Gaussian, dim_t-dimensional).

    Attributes:
        W_s: (dim_t, ds) — weights on the shared latent.
        W_u: (dim_t, du) — weights on the X-specific latent u_x.
        noise_std: target noise standard deviation (> 0).
    """

    W_s: torch.Tensor
    W_u: torch.Tensor
    noise_std: float = 0.1

    def __post_init__(self):
        self.W_s = torch.as_tensor(self.W_s, dtype=torch.float64)
        self.W_u = torch.as_tensor(self.W_u, dtype=torch.float64)
        if self.W_s.dim() == 1:
            self.W_s = self.W_s[None]
        if self.W_u.dim() == 1:
            self.W_u = self.W_u[None]
        if self.W_s.shape[0] != self.W_u.shape[0]:
            raise ValueError(f"GaussianTarget: W_s and W_u need the same number of rows (dim_t), "
                             f"got {tuple(self.W_s.shape)} and {tuple(self.W_u.shape)}")
        if self.noise_std <= 0:
            raise ValueError(f"GaussianTarget.noise_std must be > 0, got {self.noise_std}")

    @property
    def dim_t(self) -> int:
        return self.W_s.shape[0]


def joint_covariance(model: TwoViewGaussian, target: GaussianTarget) -> torch.Tensor:
    """(dim_x + dim_y + dim_t)² float64 covariance of the stacked vector (X, Y, T)."""
    if target.W_s.shape[1] != model.ds or target.W_u.shape[1] != model.du:
        raise ValueError(f"joint_covariance: target weights must be (dim_t, ds={model.ds}) and "
                         f"(dim_t, du={model.du}), got {tuple(target.W_s.shape)} and "
                         f"{tuple(target.W_u.shape)}")
    mx, my = model.latent_maps()
    mt = torch.zeros(target.dim_t, model.latent_dim, dtype=torch.float64)
    mt[:, :model.ds], mt[:, model.ds:model.ds + model.du] = target.W_s, target.W_u
    m = torch.cat([mx, my, mt], 0)
    noise = torch.cat([torch.full((model.dim_x + model.dim_y,), model.noise_std ** 2),
                       torch.full((target.dim_t,), target.noise_std ** 2)]).double()
    return m @ m.T + torch.diag(noise)


def covariance_block(c: torch.Tensor, idx) -> torch.Tensor:
    """The sub-covariance ``c[idx][:, idx]`` of the coordinates ``idx`` (a list of ints), in order."""
    idx = list(idx)
    return c[idx][:, idx]


def information_decomposition(model: TwoViewGaussian, target: GaussianTarget) -> Dict[str, float]:
    """Split the task information of view X about T into a shared and a specific part (nats).

    With the covariance Σ of (X, Y, T), and h(A) = 0.5 log det Σ_AA (+ constants that cancel):

    * ``I_XT``         = I(X;T)   = h(X) + h(T) - h(X,T)
    * ``I_XT_given_Y`` = I(X;T|Y) = h(X,Y) + h(Y,T) - h(Y) - h(X,Y,T)      (view-specific part)
    * ``I_XYT``        = I(X;Y;T) = I(X;T) - I(X;T|Y)                       (shared co-information)
    * ``I_XY``, ``I_YT``: I(X;Y) and I(Y;T), for reference.

    ``I_XYT`` can be negative (synergy): e.g. if T depends only on u_x, then I(Y;T) = 0 and
    I(X;Y;T) = -I(Y;T|X) <= 0.
    """
    c = joint_covariance(model, target)
    dx, dy, dt = model.dim_x, model.dim_y, target.dim_t
    ix, iy, it = list(range(dx)), list(range(dx, dx + dy)), list(range(dx + dy, dx + dy + dt))

    def h(idx):
        return 0.5 * float(_logdet(covariance_block(c, idx)))

    i_xt = h(ix) + h(it) - h(ix + it)
    i_xt_given_y = h(ix + iy) + h(iy + it) - h(iy) - h(ix + iy + it)
    return {
        "I_XT": i_xt,
        "I_XT_given_Y": i_xt_given_y,
        "I_XYT": i_xt - i_xt_given_y,
        "I_XY": h(ix) + h(iy) - h(ix + iy),
        "I_YT": h(iy) + h(it) - h(iy + it),
    }


def feature_target_information(model: TwoViewGaussian, target: GaussianTarget,
                               weight: torch.Tensor) -> float:
    """I(Z;T) in nats for linear features Z = weight @ X of view X (closed form, Gaussian).

    Args:
        weight: (dim_z, dim_x) — e.g. ``torch.cat([res.shared_x.weight, res.specific_x.weight])``
            of a :class:`TrainResult`; must have full row rank.
    """
    w = torch.as_tensor(weight, dtype=torch.float64).detach()
    if w.dim() != 2 or w.shape[1] != model.dim_x:
        raise ValueError(f"feature_target_information: weight must be (dim_z, dim_x={model.dim_x}), "
                         f"got {tuple(w.shape)}")
    c = joint_covariance(model, target)
    dx, dy = model.dim_x, model.dim_y
    it = list(range(dx + dy, dx + dy + target.dim_t))
    sxx, sxt, stt = c[:dx, :dx], c[:dx, it], covariance_block(c, it)
    czt = torch.cat([torch.cat([w @ sxx @ w.T, w @ sxt], 1), torch.cat([sxt.T @ w.T, stt], 1)], 0)
    return gaussian_mutual_information(czt, w.shape[0])


# ------------------------------------------------------------------------------------------ notebook sizes
RUN_SIZES = {"lite": {"n_steps": 300, "n_batches": 20, "n_probe": 4000},    # seconds on a 2-core CPU
             "full": {"n_steps": 2000, "n_batches": 100, "n_probe": 20000}}


def run_sizes(preset: str, **given) -> dict:
    """Notebook 01's sizes: the preset's ``RUN_SIZES`` with every value in ``given`` that is not None
    on top (so a ``papermill -p n_steps ...`` always wins over the preset)."""
    if preset not in RUN_SIZES:
        raise ValueError(f"run_sizes: preset must be one of {sorted(RUN_SIZES)}, got {preset!r}")
    unknown = set(given) - set(RUN_SIZES[preset])
    if unknown:
        raise ValueError(f"run_sizes: unknown sizes {sorted(unknown)}; expected {sorted(RUN_SIZES[preset])}")
    return {**RUN_SIZES[preset], **{k: v for k, v in given.items() if v is not None}}

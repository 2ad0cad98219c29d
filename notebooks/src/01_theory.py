# %% [markdown]
# # 01 — Is contrastive distillation enough? The theory in a Gaussian toy
#
# CMCR's starting claim (paper §1, reconstructed in `docs/paper.md` §1.2) is that image→LiDAR
# contrastive distillation learns only what the two modalities **share**, and that the
# information specific to the LiDAR must come from somewhere else — reconstruction.
# Here we check that argument exactly, on two Gaussian "views" $X$ (think: point cloud) and
# $Y$ (think: image) for which every mutual information has a closed form.
#
# You will learn:
# - **§a** why $\log N - \mathcal{L}_{\text{NCE}}$ is a lower bound on $I(X;Y)$, and watch it rise to — never above — the exact value, as the batch size $N$ and the training steps grow;
# - **§b** that encoders trained only with InfoNCE keep the shared latent and throw away the view-specific one, and that a reconstruction term brings it back;
# - **§c** how task information splits into a shared part $I(X;Y;T)$ and a specific part $I(X;T\mid Y)$, and which part each kind of encoder keeps.
#
# All logic lives in `cmcr_lite/theory.py`; information is in **nats** throughout.

# %%
import math
import pathlib

import matplotlib
import matplotlib.pyplot as plt
import torch

from cmcr_lite import theory as T

matplotlib.rcParams["figure.dpi"] = 90

# %% tags=["parameters"]
seed = 0
preset = "lite"                  # "lite": seconds on a 2-core CPU; "full": more steps and batches
n_steps = None                   # Adam steps per training run (§a, §b); None: the preset's (lite 300, full 2000)
batch_size = 256                 # N used for training
batch_sizes = [2, 4, 8, 16, 32, 64, 128, 256, 512]   # N swept in §a
n_batches = None                 # batches averaged per InfoNCE estimate; None: the preset's (20, 100)
n_probe = None                   # samples to fit / to test the linear probes (§b); None: the preset's (4000, 20000)
output_dir = "../outputs/01_theory"

# %%
# the preset's sizes, under any value passed explicitly (papermill -p n_steps 500 keeps 500)
sizes = T.run_sizes(preset, n_steps=n_steps, n_batches=n_batches, n_probe=n_probe)
n_steps, n_batches, n_probe = sizes["n_steps"], sizes["n_batches"], sizes["n_probe"]
print(f"{preset} preset: {n_steps} steps, {n_batches} batches per estimate, {n_probe} probe samples")
torch.manual_seed(seed)
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The toy model: two views of a partly shared latent
#
# A shared latent $s\in\mathbb{R}^2$ and one specific latent per view, $u_x, u_y\in\mathbb{R}^2$,
# all standard normal and independent, are mixed into 8-d views with noise $\sigma=0.5$:
#
# $$x = A_x\begin{bmatrix}s\\u_x\end{bmatrix} + \sigma\,\varepsilon_x,\qquad
#   y = A_y\begin{bmatrix}s\\u_y\end{bmatrix} + \sigma\,\varepsilon_y .$$
#
# $u_x$ is the LiDAR's "exact geometry": a large part of $x$ that $y$ knows nothing about.

# %%
model = T.make_two_view_gaussian(dim_x=8, dim_y=8, ds=2, du=2, noise_std=0.5, seed=seed)
x, y, s, u_x, u_y = model.sample(5, torch.Generator().manual_seed(seed))
assert x.shape == (5, 8) and s.shape == (5, 2) and x.dtype == torch.float32
print("A_x:", tuple(model.A_x.shape), " x:", tuple(x.shape), " s:", tuple(s.shape), " u_x:", tuple(u_x.shape))

# %% [markdown]
# ## §a  InfoNCE is a lower bound on $I(X;Y)$
#
# For jointly Gaussian views the mutual information is a ratio of covariance determinants:
#
# $$I(X;Y) = \tfrac12 \log \frac{\det\Sigma_{XX}\,\det\Sigma_{YY}}{\det\Sigma}\quad\text{nats.}$$

# %%
mi = T.analytic_mutual_information(model)
print(f"I(X;Y) = {mi:.3f} nats")
assert 0 < mi < math.log(batch_size)

# %% [markdown]
# InfoNCE scores each positive pair $(x_i, y_i)$ against the $N-1$ other $y_j$ of the batch
# with a critic $f$, and for **any** critic (`docs/paper.md` §1.2, step 2):
#
# $$I(X;Y)\;\ge\;I(Z_x;Z_y)\;\ge\;\log N-\mathcal{L}_{\text{NCE}},\qquad
#   \mathcal{L}_{\text{NCE}} = -\frac1N\sum_i \log\frac{e^{f(x_i,y_i)}}{\sum_j e^{f(x_i,y_j)}} .$$
#
# The best critic is the log density ratio $f^*(x,y)=\log\frac{p(x,y)}{p(x)p(y)}$, known in
# closed form here. Even with $f^*$ the bound cannot exceed $\log N$: small batches
# *underestimate* $I(X;Y)$.

# %%
gen = torch.Generator().manual_seed(seed)
est = [T.infonce_optimal_critic_estimate(model, n, n_batches, gen) for n in batch_sizes]
for n, (m_, se) in zip(batch_sizes, est):
    assert m_ <= min(mi, math.log(n)) + 3 * se + 1e-3, (n, m_, mi)
print("log N - L (optimal critic):", [round(m_, 3) for m_, _ in est])

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.errorbar(batch_sizes, [m_ for m_, _ in est], yerr=[se for _, se in est], marker="o",
            label=r"$\log N-\mathcal{L}_{NCE}$, optimal critic $f^*$")
ax.axhline(mi, color="k", ls="--", label=f"analytic $I(X;Y)$ = {mi:.2f}")
ax.plot(batch_sizes, [math.log(n) for n in batch_sizes], color="gray", ls=":", label=r"$\log N$")
ax.set(xscale="log", xlabel="batch size N (pairs)", ylabel="information (nats)",
       ylim=(0, mi * 1.4), title="InfoNCE bound vs batch size")
ax.legend(fontsize=8)
fig.savefig(out / "a_bound_vs_N.png", bbox_inches="tight")

# %% [markdown]
# The estimate stays below both $\log N$ and $I(X;Y)$: it rises with $N$, saturates at the
# analytic value from $N\approx128$ on, and never goes above it (within its standard error).
#
# Now we **learn** the critic: two linear shared heads $z_x = W_x x$, $z_y = W_y y$ with
# $\dim z = 2$ and the critic
#
# $$f(x,y) = z_x^\top z_y-\tfrac{\gamma}{2}\left(\lVert z_x\rVert^2+\lVert z_y\rVert^2\right),$$
#
# which in canonical coordinates has the exact form of $f^*$ for Gaussians ($\gamma$ learnt;
# $\gamma=0$ is the plain dot product). Each step draws a fresh batch of $N$ = `batch_size` pairs.

# %%
nce = T.train_infonce_encoders(model, n_steps=n_steps, batch_size=batch_size, seed=seed)
dot = T.train_infonce_encoders(model, n_steps=n_steps, batch_size=batch_size, seed=seed, learn_gamma=False)
held_out = {k: r.infonce_estimate(model, batch_size, n_batches, gen) for k, r in (("gamma", nce), ("dot", dot))}
print(f"held-out log N - L: learnt gamma {held_out['gamma']:.3f}, dot product {held_out['dot']:.3f}, "
      f"I(X;Y) {mi:.3f} nats")
assert held_out["gamma"] <= mi + 0.05 and held_out["dot"] <= mi + 0.05
assert held_out["gamma"] > 0.9 * mi > held_out["dot"]
assert sum(nce.history[-20:]) / 20 > sum(nce.history[:20]) / 20 + 0.5   # the bound rises

# %%
def smooth(h, k=20):
    return [sum(h[max(0, i - k + 1):i + 1]) / len(h[max(0, i - k + 1):i + 1]) for i in range(len(h))]

fig, ax = plt.subplots(figsize=(5.5, 3.6))
for res, lab, c in ((nce, r"learnt $\gamma$", "C0"), (dot, r"dot product ($\gamma=0$)", "C1")):
    ax.plot(res.history, color=c, alpha=0.25)
    ax.plot(smooth(res.history), color=c, label=lab)
ax.axhline(mi, color="k", ls="--", label="analytic $I(X;Y)$")
ax.set(xlabel="training step", ylabel=r"$\log N-\mathcal{L}_{NCE}$ (nats)", title="InfoNCE bound during training")
ax.legend(fontsize=8)
fig.savefig(out / "a_bound_vs_steps.png", bbox_inches="tight")

# %% [markdown]
# With the learnt $\gamma$, training pushes $\log N-\mathcal{L}$ up to the analytic $I(X;Y)$ and
# stops there. Single batches (faint) can poke above it — the bound holds *in expectation* — but the
# held-out mean does not. The dot-product critic cannot express the marginal terms of $f^*$ and
# plateaus well below: a looser bound, not a wrong one.
#
# ## §b  What InfoNCE keeps, and what reconstruction adds
#
# $\mathcal{L}_{\text{NCE}}$ only depends on $x$ through what it says about $y$, i.e. through
# $s$; $u_x$ is pure noise to the critic, so a head with room for 2 dimensions spends them all on
# $s$. Reconstruction instead raises a lower bound on how much of its **own** input a
# representation keeps (Barber–Agakov, `docs/paper.md` §1.2, step 3):
#
# $$I(Z;X)\;\ge\;H(X)+\mathbb{E}\log q(X\mid Z),\qquad -\log q = \text{MSE (Gaussian } q).$$
#
# CMCR-style, `train_with_reconstruction` adds a 2-d *specific* head and a linear decoder from
# [shared; specific] back to $x$: $\mathcal{L} = \mathcal{L}_{\text{NCE}} + \lVert \hat x - x\rVert^2$.
# A linear probe (least squares, $R^2$ on held-out samples) then measures what each representation holds.

# %%
rec = T.train_with_reconstruction(model, n_steps=n_steps, batch_size=batch_size, seed=seed)
fit, test = model.sample(n_probe, gen), model.sample(n_probe, gen)   # (x, y, s, u_x, u_y) each
feats = {"raw x": (fit[0], test[0]),                                  # (fit, test) features of x
         "InfoNCE only": (nce.encode(*fit[:2])[0], nce.encode(*test[:2])[0]),
         "InfoNCE + recon.": (rec.encode(*fit[:2])[0], rec.encode(*test[:2])[0])}
r2 = {k: {lat: T.linear_probe_r2(zf, fit[i], zt, test[i]) for lat, i in (("s", 2), ("u_x", 3))}
      for k, (zf, zt) in feats.items()}
print({k: {lat: round(v, 3) for lat, v in d.items()} for k, d in r2.items()})

# %%
assert r2["InfoNCE only"]["s"] > r2["raw x"]["s"] - 0.05          # keeps all X knows about s
assert r2["InfoNCE only"]["u_x"] < 0.2                            # ... and discards u_x
assert r2["InfoNCE + recon."]["u_x"] > 0.5                        # reconstruction brings it back
assert r2["InfoNCE + recon."]["s"] > r2["raw x"]["s"] - 0.05

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.4))
names = list(r2)
for j, lat in enumerate(("s", "u_x")):
    ax.bar([i + 0.38 * j for i in range(len(names))], [r2[k][lat] for k in names], width=0.36,
           label="shared $s$" if lat == "s" else r"specific $u_x$")
ax.set_xticks([i + 0.19 for i in range(len(names))], names)
ax.set(ylabel=r"held-out linear-probe $R^2$ (unitless)", ylim=(0, 1), title="What each representation of $x$ keeps")
ax.legend(fontsize=8)
fig.savefig(out / "b_probe_r2.png", bbox_inches="tight")

# %% [markdown]
# The InfoNCE-only features predict $s$ as well as the raw view does but $u_x$ not at all
# ($R^2\approx0$); adding reconstruction recovers $u_x$ without losing $s$.
#
# ## §c  Splitting task information into shared and specific parts
#
# Take a downstream target $T = w_s^\top s + w_u^\top u_x + 0.1\,\varepsilon$ that depends on
# both latents. With $\Sigma$ the covariance of the stacked $(X, Y, T)$, each term is a
# log-determinant ratio of blocks of $\Sigma$.

# %%
target = T.GaussianTarget(W_s=[[0.5, 0.5]], W_u=[[0.5, 0.5]], noise_std=0.1)
C = T.joint_covariance(model, target)                       # (8 + 8 + 1)² covariance of (X, Y, T)
ix, iy, it = list(range(8)), list(range(8, 16)), [16]

# %% [markdown]
# What the view $X$ knows about the task: $\;I(X;T)=\tfrac12\log\dfrac{\det\Sigma_{XX}\det\Sigma_{TT}}{\det\Sigma_{[XT][XT]}}$

# %%
I_XT = T.gaussian_mutual_information(T.covariance_block(C, ix + it), len(ix))

# %% [markdown]
# The **specific** part — what $X$ adds once $Y$ is known, by the chain rule:
# $\;I(X;T\mid Y) = I(X;\,Y,T) - I(X;Y)$

# %%
I_X_YT = T.gaussian_mutual_information(C, len(ix))                            # I(X; Y,T)
I_XT_given_Y = I_X_YT - T.gaussian_mutual_information(T.covariance_block(C, ix + iy), len(ix))

# %% [markdown]
# The **shared** part (co-information), what remains: $\;I(X;Y;T) = I(X;T) - I(X;T\mid Y)$

# %%
I_XYT = I_XT - I_XT_given_Y
print(f"I(X;T) = {I_XT:.3f} = I(X;Y;T) {I_XYT:.3f} + I(X;T|Y) {I_XT_given_Y:.3f} nats")
ref = T.information_decomposition(model, target)            # the same terms, via entropies
assert abs(ref["I_XT"] - I_XT) < 1e-9 and abs(ref["I_XT_given_Y"] - I_XT_given_Y) < 1e-9
assert I_XT_given_Y > 0.5 * I_XT                            # most of this task is LiDAR-specific

# %% [markdown]
# Now sweep the target from purely shared ($\theta=0$: $T$ depends on $s$) to purely specific
# ($\theta=90°$: $T$ depends on $u_x$), and compare with what the trained features of §b keep,
# $I(Z;T)$ for $Z = W x$ (still Gaussian, so still exact).

# %%
W_nce = nce.shared_x.weight
W_rec = torch.cat([rec.shared_x.weight, rec.specific_x.weight])
rows = []
for deg in range(0, 91, 10):
    c_, s_ = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    tgt = T.GaussianTarget(W_s=[[c_ / 2 ** 0.5] * 2], W_u=[[s_ / 2 ** 0.5] * 2], noise_std=0.1)
    rows.append((deg, T.information_decomposition(model, tgt), T.feature_target_information(model, tgt, W_nce),
                 T.feature_target_information(model, tgt, W_rec)))

# %%
for deg, d, i_nce, i_rec in rows:
    assert abs(d["I_XYT"] + d["I_XT_given_Y"] - d["I_XT"]) < 1e-9
    assert i_nce <= d["I_XT"] + 1e-6 and i_rec <= d["I_XT"] + 1e-6      # data processing inequality
assert rows[0][1]["I_XYT"] > 0 and rows[-1][1]["I_XYT"] <= 1e-9      # co-information: shared -> synergy
assert rows[-1][2] < 0.05 * rows[-1][1]["I_XT"] and rows[-1][3] > 0.9 * rows[-1][1]["I_XT"]

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
degs = [r[0] for r in rows]
ax.plot(degs, [r[1]["I_XT"] for r in rows], "k-", lw=2, label="$I(X;T)$")
ax.plot(degs, [r[1]["I_XYT"] for r in rows], "C2--", label="shared $I(X;Y;T)$")
ax.plot(degs, [r[1]["I_XT_given_Y"] for r in rows], "C3--", label=r"specific $I(X;T\mid Y)$")
ax.plot(degs, [r[2] for r in rows], "C0o-", ms=4, label=r"$I(Z;T)$, InfoNCE only")
ax.plot(degs, [r[3] for r in rows], "C1s:", ms=4, label=r"$I(Z;T)$, InfoNCE + recon.")
ax.axhline(0, color="gray", lw=0.5)
ax.set(xlabel=r"target angle $\theta$ (degrees; 0 = depends on $s$, 90 = on $u_x$)", ylabel="information (nats)",
       title="Task information: shared vs specific")
ax.legend(fontsize=7)
fig.savefig(out / "c_decomposition.png", bbox_inches="tight")

# %% [markdown]
# As the task moves from $s$ to $u_x$, the shared part shrinks to zero and then turns slightly
# negative (synergy: knowing $Y$ helps decode $u_x$ from $X$), and the InfoNCE-only features lose
# almost all of the task information, while the features trained with reconstruction keep it.
# Note that even a purely shared task ($\theta=0$) has a small $I(X;T\mid Y)>0$: $Y$ sees $s$ only
# through noise, so $X$ still adds something.
#
# ## Summary
#
# - $\log N-\mathcal{L}_{\text{NCE}}$ is a lower bound on $I(X;Y)$: capped by $\log N$, tight only with a good critic and a large batch (§a).
# - InfoNCE rewards only the shared latent; a contrastive head discards the view-specific $u_x$, and a reconstruction term is what keeps it (§b) — the motivation for CMCR's MIM and occupancy objectives.
# - Task information splits as $I(X;T)=I(X;Y;T)+I(X;T\mid Y)$; contrastive-only features keep at most the part $X$ can read off the shared latent (§c).
#
# ## Exercises
#
# 1. *Implement it yourself* (easy, 5 min): the mutual information of a bivariate Gaussian with correlation $\rho$ is
#    $I = -\tfrac12\log(1-\rho^2)$ nats. Check it against `T.gaussian_mutual_information` on the 2×2
#    covariance $\begin{pmatrix}1&\rho\\\rho&1\end{pmatrix}$ for a few $\rho$. Hint: `dx=1`. Expected:
#    equal to floating-point precision, and growing without bound as $\rho \to 1$ (which is why the
#    InfoNCE bound, capped at $\log M$, needs ever larger batches). The check cell below holds a solution.
# 2. (medium, 15 min) Give the InfoNCE-only encoder a wider head, `T.train_infonce_encoders(model, dim_shared=4)`, and rerun §b.
#    Hint: InfoNCE's optimum depends only on the shared latent. Expected: $u_x$ does not reliably reappear in
#    the probe: the extra dimensions are neither rewarded nor penalised, so whatever they hold is left over
#    from initialisation, not learnt. The check cell below asserts that training does not raise it.
# 3. (medium, 10 min) Set `noise_std=0.1` in `make_two_view_gaussian` and rerun §a. Hint: the bound is at most $\log M$.
#    The check cell below does it for you and asserts the expected behaviour.
#    Expected: $I(X;Y)$ grows; once it exceeds $\log M$ of the batch, the bound saturates below it, and
#    only a larger batch lets it climb further.
# 4. (medium, 15 min) Train with `normalize=True, tau=0.1` (cosine logits, as in CMCR's shared heads) and compare the plateau
#    of §a with the dot-product critic. Hint: a cosine critic is bounded by $1/\tau$. Expected: a lower plateau
#    when the optimal critic needs large logits; normalising throws away the feature norm.
#    The check cell below compares the two held-out bounds.

# %%
# Check for exercise 1 (a solution; replace it with yours)
for rho in (0.1, 0.5, 0.9, 0.99):
    mine = -0.5 * math.log(1 - rho ** 2)
    assert math.isclose(mine, T.gaussian_mutual_information([[1.0, rho], [rho, 1.0]], dx=1), rel_tol=1e-9)

# %%
# Check for exercise 3: less noise, more shared information, and the bound saturates at log N
sharp_model = T.make_two_view_gaussian(dim_x=8, dim_y=8, ds=2, du=2, noise_std=0.1, seed=seed)
mi_sharp = T.analytic_mutual_information(sharp_model)
gen3 = torch.Generator().manual_seed(seed)
est3 = {n: T.infonce_optimal_critic_estimate(sharp_model, n, n_batches, gen3) for n in batch_sizes}
print(f"I(X;Y) = {mi_sharp:.2f} nats at noise 0.1 (was {mi:.2f} at 0.5); optimal-critic bound per N: "
      + ", ".join(f"{n}: {m_:.2f}" for n, (m_, _) in est3.items()))
assert mi_sharp > mi
assert all(m_ <= math.log(n) + 3 * se + 1e-3 for n, (m_, se) in est3.items())      # capped by log N
assert all(m_ <= mi_sharp + 3 * se for m_, se in est3.values())                     # and by I(X;Y)

# %%
# Check for exercise 2: a 4-d InfoNCE head holds u_x only as much as its random start did
def u_x_r2(result):
    return T.linear_probe_r2(result.encode(*fit[:2])[0], fit[3], result.encode(*test[:2])[0], test[3])


start4 = T.train_infonce_encoders(model, dim_shared=4, n_steps=1, batch_size=batch_size, seed=seed)
wide4 = T.train_infonce_encoders(model, dim_shared=4, n_steps=n_steps, batch_size=batch_size, seed=seed)
print(f"R² of u_x from the 4-d InfoNCE head: {u_x_r2(start4):.3f} after 1 step, {u_x_r2(wide4):.3f} after {n_steps}")
assert u_x_r2(wide4) <= u_x_r2(start4) + 0.02

# %%
# Check for exercise 4: the cosine critic (tau = 0.1) plateaus lower than the dot product
cosine = T.train_infonce_encoders(model, n_steps=n_steps, batch_size=batch_size, seed=seed, normalize=True, tau=0.1)
bounds = {"dot product": held_out["dot"], "cosine, tau 0.1": cosine.infonce_estimate(model, batch_size, n_batches, gen)}
print("held-out bound (nats):", {k: round(v, 3) for k, v in bounds.items()}, f"I(X;Y) = {mi:.3f}")
assert bounds["cosine, tau 0.1"] < bounds["dot product"]

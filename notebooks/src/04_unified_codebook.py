# %% [markdown]
# # 04 · The multi-modal unified codebook
#
# CMCR quantises the *shared* features of both modalities with **one** codebook: 400 codes of 64
# dimensions, updated by an exponential moving average (EMA, decay 0.999) instead of the optimiser,
# with a commitment loss (β = 0.25), a **cross-modal code matching** loss (CMCM) that asks a LiDAR
# point and the pixel it projects to for the same code distribution, and the straight-through (ST)
# estimator that lets the quantised features feed the decoders. The idea, borrowed from CMG
# (NeurIPS'23): if a point and its pixel must pick the same discrete code, the codes should become a
# shared vocabulary of the two modalities. Whether they do is measured here, and every sentence about a
# measured number is rendered from the run or held by an `assert`. You will learn
#
# * what each of the four parts computes, each formula next to the line of `cmcr_lite` that computes it;
# * on a fast synthetic toy (no network): how the EMA pulls codes towards paired features, how
#   perplexity and dead codes behave, why the ST gradient is the identity, and how little CMCM can move;
# * in a short lite CMCR pretraining (ablation step "+ codebook"): code usage and perplexity for
#   points and pixels step by step, whether the two modalities share codes, and what happens to the
#   codes nobody picks.
#
# Paper: Zhang & Hou, IJCV 2026, §3.3 and §4.3; facts about the official code: `docs/paper.md` §4.3.
# Module: `cmcr_lite/losses/codebook.py` (the codebook), `cmcr_lite/analysis/codebook.py` (the diagnostics).

# %% tags=["parameters"]
preset = "lite"               # "lite": embedded data, CPU; "full": the paper's setting on real nuScenes
dataroot = None               # None: the embedded synthetic dataset
version = "v1.0-synthetic"    # full: "v1.0-trainval"
image_weights = None          # full: MoCo-v2 ResNet-50 weights path
pretrain_epochs = 3           # lite default (4 steps each); None keeps the preset's (full: the paper's 10)
toy_steps = 100               # EMA steps of the synthetic toy (§3)
seed = 0
output_dir = "../outputs/04_unified_codebook"

# %%
import inspect
import math
from dataclasses import replace

from IPython.display import Markdown, display
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch
import torch.nn.functional as F

from cmcr_lite.classes import CLASS_NAMES_16, class_index
from cmcr_lite.cmcr import ABLATION_STEPS
from cmcr_lite.analysis.codebook import (CodebookRecorder, co_occurrence, code_sharing, feature_spread, laplace_floor,
                                         paired_codes, perplexity_from_counts, quantisation_memory,
                                         toy_paired_features)
from cmcr_lite.data.pipeline import PairedScanDataset, collate_pairs
from cmcr_lite.losses.codebook import UnifiedCodebook, cmcm_loss
from cmcr_lite.notebook import start_notebook
from cmcr_lite.runtime import resolve_device
from cmcr_lite.pretrain import build_image_encoder, build_model, pretrain
from cmcr_lite.viz import save_figure

session = start_notebook(preset, dataroot, version, output_dir, seed, image_weights)
out = session.out


def source_lines(fn, *needles):
    """Print the lines of ``fn``'s source that contain any of ``needles`` (the code behind a formula)."""
    for line in inspect.getsource(fn).splitlines():
        if any(n in line for n in needles):
            print(line.strip())


# %% [markdown]
# ## 1 · Quantisation and the straight-through estimator
#
# Each shared feature $x_i$ (a voxel's $F^{3D}$ or a pixel's $F^{2D}$, unit length, 64-d) goes to its
# nearest code, measured on the **detached** feature; the straight-through estimator then passes the
# code forward and the identity backward:
#
# $$k^*_i = \arg\min_k \lVert \mathrm{sg}[x_i] - e_k \rVert^2, \qquad
#   \bar x_i = x_i + \mathrm{sg}[e_{k^*_i} - x_i], \qquad \frac{\partial \bar x_i}{\partial x_i} = I .$$
#
# In CMCR, $\bar F^{3D} + G^{3D}$ feeds the occupancy decoder and $\bar F^{2D} + G^{2D}$ the image
# decoder (notebooks 05–06). The lines that compute it:

# %%
source_lines(UnifiedCodebook.nearest, "argmin")
source_lines(UnifiedCodebook.quantize, "idx = ", "q = self.embedding", "return x + ")

cb = UnifiedCodebook(num_codes=400, dim=64)  # the paper's size: 400 codes x 64-d, U(-1,1) then L2-normalised
g = torch.Generator().manual_seed(seed)
x = F.normalize(torch.randn(8, 64, generator=g), dim=1).requires_grad_()
target = torch.randn(8, 64, generator=g)
x_bar, idx = cb.quantize(x)
loss = ((x_bar - target) ** 2).sum()        # any loss on the quantised features
loss.backward()
print("codes:", idx.tolist())
print("forward value == code:", torch.allclose(x_bar, cb.embedding[idx]))
print("gradient reaching x == dL/dx_bar evaluated at the code:", torch.allclose(x.grad, 2 * (cb.embedding[idx] - target)))
assert torch.allclose(x_bar, cb.embedding[idx], atol=1e-6)
assert torch.allclose(x.grad, 2 * (cb.embedding[idx] - target), atol=1e-5)
assert cb.embedding.norm(dim=1).sub(1).abs().max() < 1e-5 and len(list(cb.parameters())) == 0  # buffers, no parameters

# %% [markdown]
# The codebook has **no parameters**: the optimiser never touches the codes. They move only through
# the EMA of §2, and the gradient of a loss on $\bar x$ goes straight to the encoder that produced
# $x$, as if quantisation were not there.
#
# ## 2 · The EMA update, drawn in two dimensions
#
# On $M$ paired features (point $p_i$, pixel $v_i$; the paper draws 2,048 pairs apart from the NCE
# pairs) with hard assignments $k^*(\cdot)$, and $n_p[k]$ the number of points that chose code $k$:
#
# $$N_k \leftarrow \gamma N_k + (1-\gamma)\, n_p[k], \qquad
#   N_k \leftarrow \frac{N_k + \varepsilon}{\sum_j N_j + K\varepsilon}\sum_j N_j \quad\text{(Laplace smoothing)}$$
#
# $$W_k \leftarrow \gamma W_k + \tfrac{1-\gamma}{2}\sum_{i:\,k^*(p_i)=k} p_i + \tfrac{1-\gamma}{2}\sum_{i:\,k^*(p_i)=k} v_i$$
#
# then the same with the roles of points and pixels swapped, then (under `torchrun`) an all-reduce
# average of $N$ and $W$ over the processes, then $e_k = W_k / N_k$, L2-normalised (a CMCR addition).
# $\gamma = 0.999$, $\varepsilon = 10^{-5}$. **A code is pulled half towards the points that chose it
# and half towards their paired pixels** — this is what makes it a *unified* code. The lines:

# %%
source_lines(UnifiedCodebook._ema_half_step, "counts = ", "ema_count.mul_", "ema_count.copy_", "own_sum = ",
             "paired_sum = ", "ema_weight.mul_", "paired_sum, alpha")
source_lines(UnifiedCodebook.ema_update, "_ema_half_step(", "all_reduce", "self.embedding = ")

# %% [markdown]
# A check by hand first: one EMA step of a 2-d codebook, recomputed with plain numpy from the formulas
# above, must give the same codes.

# %%
K2, gamma, eps = 12, 0.999, 1e-5
cb2 = UnifiedCodebook(num_codes=K2, dim=2, decay=gamma, eps=eps).double().train()
angles = np.linspace(0, 2 * np.pi, K2, endpoint=False) + 0.1
cb2.embedding.copy_(torch.from_numpy(np.stack([np.cos(angles), np.sin(angles)], 1)))
cb2.ema_weight.copy_(cb2.embedding)
concepts = np.array([0.6, 2.4, 4.3])           # three "concepts" on the circle (radians)
half_gap = 0.35                                # points sit at +0.35 rad from their concept, pixels at -0.35


def toy_2d(n, rng):
    """n pairs: a concept angle, the point at +half_gap and its pixel at -half_gap, with 0.08 rad noise."""
    a = concepts[rng.integers(0, len(concepts), n)]
    unit = lambda t: np.stack([np.cos(t), np.sin(t)], 1)  # noqa: E731
    return (torch.from_numpy(unit(a + half_gap + 0.08 * rng.standard_normal(n))),
            torch.from_numpy(unit(a - half_gap + 0.08 * rng.standard_normal(n))))


rng = np.random.default_rng(seed)
p, v = toy_2d(256, rng)
E, N, W = cb2.embedding.numpy().copy(), cb2.ema_count.numpy().copy(), cb2.ema_weight.numpy().copy()
for own, other in ((p.numpy(), v.numpy()), (v.numpy(), p.numpy())):     # points first, then pixels
    k = ((own[:, None, :] - E[None]) ** 2).sum(-1).argmin(1)          # assignments use the codes before the step
    N = gamma * N + (1 - gamma) * np.bincount(k, minlength=K2)
    N = (N + eps) / (N.sum() + K2 * eps) * N.sum()
    W = gamma * W + (1 - gamma) / 2 * (np.eye(K2)[k].T @ own) + (1 - gamma) / 2 * (np.eye(K2)[k].T @ other)
E_hand = W / N[:, None]
E_hand /= np.linalg.norm(E_hand, axis=1, keepdims=True)
cb2(p, v)
print("max |codes by hand - codebook| =", np.abs(E_hand - cb2.embedding.numpy()).max())
assert np.allclose(E_hand, cb2.embedding.numpy(), atol=1e-10)

# %% [markdown]
# Now 60 steps at the paper's $\gamma = 0.999$ (the codebook of the previous cell, already one step in).
# `CodebookRecorder` logs every training call of any `UnifiedCodebook` through a global forward hook:

# %%
with CodebookRecorder(keep_codes=True) as rec2:
    for _ in range(60):
        cb2(*toy_2d(256, rng))
traj = rec2.arrays()["codes"]                  # (steps, K, 2)
p, v = toy_2d(300, rng)
fig, ax = plt.subplots(1, 2, figsize=(10, 4.4))
t = np.linspace(0, 2 * np.pi, 200)
ax[0].plot(np.cos(t), np.sin(t), color="0.85", lw=1)
ax[0].scatter(p[:, 0], p[:, 1], s=4, c="tab:blue", alpha=0.4, label="points $p_i$ (3D)")
ax[0].scatter(v[:, 0], v[:, 1], s=4, c="tab:orange", alpha=0.4, label="pixels $v_i$ (2D)")
start = np.stack([np.cos(angles), np.sin(angles)], 1)
moved = np.linalg.norm(traj[-1] - start, axis=1) > 0.05
for k in range(K2):
    ax[0].plot(traj[:, k, 0], traj[:, k, 1], "k-", lw=1)
ax[0].scatter(start[:, 0], start[:, 1], marker="o", facecolors="none", edgecolors="k", s=50, label="codes at start")
ax[0].scatter(traj[-1, moved, 0], traj[-1, moved, 1], marker="*", c="tab:red", s=140, zorder=3, label="codes after 61 steps")
ax[0].set_aspect("equal"); ax[0].set_xlabel("feature dim 1"); ax[0].set_ylabel("feature dim 2")
ax[0].legend(fontsize=7, loc="lower left"); ax[0].set_title("EMA pulls codes between paired points and pixels")
a2 = rec2.arrays()
code_angle = np.arctan2(traj[:, :, 1], traj[:, :, 0]) % (2 * np.pi)     # (steps, K)
for c in concepts:
    ax[1].axhspan(c - half_gap - 0.08, c - half_gap + 0.08, color="tab:orange", alpha=0.15)
    ax[1].axhspan(c + half_gap - 0.08, c + half_gap + 0.08, color="tab:blue", alpha=0.15)
    ax[1].axhline(c, color="0.5", lw=0.8, ls="--")
for k in np.flatnonzero(moved):
    ax[1].plot(np.arange(1, len(traj) + 1), code_angle[:, k], "k-", lw=1)
ax[1].set_xlabel("EMA step"); ax[1].set_ylabel("code angle (rad)")
ax[1].set_title("moving codes (black); points (blue), pixels (orange), concept (dashed)", fontsize=9)
save_figure(fig, out / "ema_2d.png")

final = code_angle[-1, moved]
print("codes that moved:", int(moved.sum()), "of", K2, "| their angles (rad):", np.round(np.sort(final), 2),
      "| concepts:", concepts)
print(f"pairs whose point and pixel chose the same code: {a2['agreement'][0]:.2f} at the first step, "
      f"{a2['agreement'][-1]:.2f} at the last")
assert K2 - moved.sum() >= 2                      # some codes never win a pair and never move
# every concept ends with a code within 0.15 rad of it, i.e. between its points and its pixels (+-0.35 rad)
assert all(np.min(np.abs(np.angle(np.exp(1j * (final - c))))) < 0.15 for c in concepts)
start_gap = np.abs(np.angle(np.exp(1j * (code_angle[0, moved][:, None] - concepts)))).min(1)
end_gap = np.abs(np.angle(np.exp(1j * (final[:, None] - concepts)))).min(1)
assert np.all(end_gap <= start_gap + 1e-9)          # each moving code got closer to its concept
assert max(a2["agreement"][0], a2["agreement"][-1]) < 0.1  # each modality keeps its own codes, first to last

# %% [markdown]
# Every code that wins pairs is dragged towards the **midpoint** between its points and their pixels
# (dashed lines), because its $W_k$ collects both. Look at *how* it gets there: with these codes, the
# points of a concept and its pixels (0.7 rad apart) first chose *different* codes, one on each side,
# and both codes now approach the midpoint from their own side. Neither ever becomes nearer to the
# other modality's features, so the agreement stays below 10 % from the first step to the last
# (asserted): in this small 2D example each modality keeps its own code, and the two codes become
# near-duplicates. Sharing needs a code that
# both modalities pick at some point; the EMA then keeps it between them (§3). The codes that never
# win a pair never move: nothing in the EMA touches them. Those are the **dead codes**.
#
# ## 3 · The paper's size: 400 × 64 codes on synthetic paired features
#
# Same mechanism at $K = 400$, $D = 64$, $\gamma = 0.999$, with 16 "concepts" and a constant modality
# gap: $p_i = \mathrm{normalize}(c_{y_i} + \delta + \sigma\epsilon)$,
# $v_i = \mathrm{normalize}(c_{y_i} - \delta + \sigma\epsilon')$ (`toy_paired_features`), 512 pairs
# per step. Perplexity is the effective number of codes in use,
# $\exp(-\sum_k u_k \log u_k)$ over the usage frequencies $u_k$ of one step. We compare the official
# behaviour (no dead-code reset; the official reset is commented out) with our opt-in reset
# (`reset_dead_codes=True`: a code whose $N_k$ falls below `dead_threshold` becomes a random feature of the batch).

# %%
C_TOY, M_TOY = 16, 512


def toy_run(gap, g, **codebook_options):
    """(codebook, recorded arrays) after ``toy_steps`` EMA steps on the toy's paired features with
    modality gap ``gap`` (64,), drawing from the generator ``g`` (reseeded first)."""
    torch.manual_seed(seed)
    g.manual_seed(seed + 1)
    cb64 = UnifiedCodebook(num_codes=400, dim=64, decay=0.999, **codebook_options).train()
    with CodebookRecorder() as rec:
        for _ in range(toy_steps):
            cb64(*toy_paired_features(M_TOY, centres, gap, noise=0.3, generator=g)[:2])
    return cb64, rec.arrays()


g = torch.Generator().manual_seed(seed)
centres = F.normalize(torch.randn(C_TOY, 64, generator=g), dim=1)
gap = 0.4 * F.normalize(torch.randn(64, generator=g), dim=0)
toy = {"official (no reset)": toy_run(gap, g), "opt-in dead-code reset": toy_run(gap, g, reset_dead_codes=True)}

fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
for name, (_, a) in toy.items():
    ax[0].plot(a["perplexity_points"], label=f"{name}, points")
    ax[0].plot(a["perplexity_pixels"], "--", label=f"{name}, pixels")
    ax[1].plot(a["agreement"], label=name)
    ax[2].plot(a["never_used"], label=f"{name}: never chosen so far")
a_off = toy["official (no reset)"][1]
ax[2].plot((a_off["ema_count"] < 1e-3).sum(1), ":", label="official: ema_count < 1e-3 (dead_codes())")
ax[0].axhline(C_TOY, color="0.5", lw=0.8); ax[0].text(1, C_TOY + 3, "16 concepts", fontsize=7)
ax[0].set_ylabel("perplexity (codes)"); ax[1].set_ylabel("fraction of pairs on one code"); ax[2].set_ylabel("codes")
for a_ in ax:
    a_.set_xlabel("EMA step"); a_.legend(fontsize=6)
save_figure(fig, out / "toy_400x64.png")
for name, (_, a) in toy.items():
    print(f"{name:24s} perplexity points {a['perplexity_points'][0]:5.1f} -> {a['perplexity_points'][-1]:5.1f}, "
          f"pixels {a['perplexity_pixels'][0]:5.1f} -> {a['perplexity_pixels'][-1]:5.1f}; agreement "
          f"{a['agreement'][0]:.2f} -> {a['agreement'][-1]:.2f}; never chosen: {a['never_used'][-1]} of 400")
a_reset = toy["opt-in dead-code reset"][1]
assert a_off["agreement"][-1] > a_off["agreement"][0] + 0.3         # the unified codes emerge
assert a_off["never_used"][-1] > 200                                 # most of the 400 codes are never used
assert abs(a_off["perplexity_points"][-1] - C_TOY) < 0.25 * C_TOY   # ~ one code per concept
assert a_reset["perplexity_points"][-1] > 2 * a_off["perplexity_points"][-1]
assert a_reset["agreement"][-1] < a_off["agreement"][-1]

# %% [markdown]
# What the curves show (γ = 0.999, no network, fixed feature distribution):
#
# * **Official behaviour.** Perplexity *falls* from the random-code start (noise and the modality gap
#   scatter pairs over many codes) to about the number of concepts, as the winning codes move onto
#   the concepts and take over their neighbours' pairs. Meanwhile the **agreement** between a point's
#   code and its pixel's code rises: the codes sit between the modalities. Most of the 400 codes are
#   never chosen, and they stay dead forever.
# * **The reset raises perplexity but breaks the sharing.** Re-seeding dead codes on single features
#   puts codes *on* the point side and *on* the pixel side of the gap, so each modality gets its own
#   codes: perplexity climbs and agreement collapses. A higher perplexity is not what a *unified*
#   codebook is for; agreement (or the mutual information of §5) is the number to watch.
# * **`dead_codes()` on `ema_count` is a slow and then a wrong test.** The Laplace smoothing adds about
#   $\varepsilon$ to every count at each half-step, so a never-chosen code's $N_k$ climbs towards the
#   fixed point $\varepsilon r/(1-\gamma r) \approx \varepsilon/(1-\gamma) = 0.01$ ($r = M/(M+K\varepsilon)$,
#   `laplace_floor`), ten times the default threshold of $10^{-3}$ (dotted curve). It gets there only as
#   $1-(\gamma r)^{2t}$ after $t$ steps, over a thousand steps; but it passes the threshold much earlier,
#   and from then on `dead_codes()` misses the dead codes. Count "never chosen" instead, as
#   `CodebookRecorder` does; a fixed threshold above the floor has its own cost (below):

# %%
floor = laplace_floor(0.999, 1e-5, num_codes=400, pairs=M_TOY)
never = a_off["counts_points"].sum(0) + a_off["counts_pixels"].sum(0) == 0
cb_off = toy["official (no reset)"][0]
print(f"Laplace floor eps*r/(1-gamma*r) = {floor:.5f};  ema_count of never-chosen codes now: "
      f"{cb_off.ema_count[torch.from_numpy(never)].min():.5f} .. {cb_off.ema_count[torch.from_numpy(never)].max():.5f}")
print(f"steps until a never-chosen code passes 1e-3: ~{math.log(1 - 1e-3 / floor) / (2 * math.log(0.999)):.0f}")
print("dead_codes() with the default threshold:", len(cb_off.dead_codes()), "| with threshold 2 x floor:",
      len(cb_off.dead_codes(2 * floor)), "| never chosen:", int(never.sum()))
if toy_steps >= 60:
    assert len(cb_off.dead_codes()) < never.sum() and len(cb_off.dead_codes(2 * floor)) >= never.sum()
never_t = torch.from_numpy(never)
n_never = cb_off.ema_count[never_t].max().item() if never.any() else float("nan")
steps_to = lambda frac: math.log(1 - frac) / (2 * math.log(0.999))  # noqa: E731  steps until 1-(gamma)^(2t) = frac
flag2 = torch.zeros(400, dtype=torch.bool); flag2[cb_off.dead_codes(2 * floor)] = True
display(Markdown(
    f"After {toy_steps} steps the never-chosen codes' `ema_count` is at most {n_never:.5f}, "
    f"{n_never / floor:.0%} of the floor {floor:.5f}; it passes the default threshold $10^{{-3}}$ after about "
    f"{steps_to(1e-3 / floor):.0f} steps and reaches 90 % of the floor after about {steps_to(0.9):.0f}. Now "
    f"`dead_codes()` flags {len(cb_off.dead_codes())} of the {int(never.sum())} never-chosen codes. A threshold of "
    f"2 × floor flags {int(flag2.sum())}: {int((flag2 & never_t).sum())} never-chosen codes and "
    f"{int((flag2 & ~never_t).sum())} live codes that "
    f"points or pixels did choose, whose counts decayed below it (a code chosen rarely carries a count of "
    f"the same order as the floor)."))

# %% [markdown]
# ## 4 · The losses: cross-modal code matching and commitment
#
# **CMCM.** Soft assignments with gradient, $P[i,k] = \mathrm{softmax}_k(-\lVert x_i - e_k\rVert)$ (a
# distance, not a squared one), then an InfoNCE at temperature 1 over the $M \times M$ matrix
#
# $$S = P_p \log P_v^\top + P_v \log P_p^\top, \qquad
#   \mathcal{L}_\text{CMCM} = -\frac{1}{M}\sum_i \log\frac{\exp S_{ii}}{\sum_j \exp S_{ij}} .$$
#
# $S_{ij}$ is minus the sum of the two cross-entropies between point $i$'s and pixel $j$'s code
# distributions: each point should share its code distribution with its own pixel more than with the
# other pixels.
#
# **Commitment**, β = 0.25, with $q_p = e_{k^*(p)}$, $q_v = e_{k^*(v)}$ (the codes before this step's EMA):
#
# $$\mathcal{L}^{3D}_\text{commit} = 2\beta\,\mathrm{MSE}(p, \mathrm{sg}[q_p]) + \beta\,\mathrm{MSE}(p, \mathrm{sg}[q_v]), \qquad
#   \mathcal{L}^{2D}_\text{commit} = 2\beta\,\mathrm{MSE}(v, \mathrm{sg}[q_v]) + \beta\,\mathrm{MSE}(v, \mathrm{sg}[q_p])$$
#
# Each modality is pulled to its own code and, with half the weight, to the other modality's code.
# All three enter CMCR's loss with weight 1.

# %%
source_lines(UnifiedCodebook.soft_assign_log, "log_softmax")
source_lines(cmcm_loss, "s = log_p_points", "cross_entropy")
source_lines(UnifiedCodebook.forward, "commit_p = ", "commit_v = ")

# %% [markdown]
# With unit-length features and codes, distances lie in $[0, 2]$, so $\mathrm{softmax}(-d)$ over 400
# codes is nearly uniform: even a feature sitting *exactly* on a code gives that code only a small
# share of the mass (rendered below; at most $1/(1+399e^{-2})\approx 1.8\,\%$ even if every other code were
# at the largest distance 2). CMCM therefore barely moves below $\log M$ — even for perfectly matched pairs:

# %%
cb_fresh = UnifiedCodebook(400, 64)
M = 1024
on_codes = cb_fresh.embedding[torch.randint(0, 400, (M,), generator=g)]       # pairs on one code each, p = v
random_pairs = [F.normalize(torch.randn(M, 64, generator=g), dim=1) for _ in range(2)]
best = cmcm_loss(cb_fresh.soft_assign_log(on_codes), cb_fresh.soft_assign_log(on_codes)).item()
rand = cmcm_loss(*(cb_fresh.soft_assign_log(r) for r in random_pairs)).item()
p_max = cb_fresh.soft_assign_log(on_codes).exp().max(1).values.mean().item()
print(f"log M = {math.log(M):.4f} | CMCM, unrelated pairs: {rand:.4f} | CMCM, perfect pairs: {best:.4f} "
      f"| largest soft-assignment mass of a feature on a code: {p_max:.3f}")

# gradients reaching the features from each loss, on the toy pairs
p, v, _ = toy_paired_features(M, centres, gap, noise=0.3, generator=g)
p.requires_grad_(); v.requires_grad_()
res = cb_fresh.eval()(p, v)        # eval: no EMA update
grads = {}
for k in ("cmcm", "commit_points", "commit_pixels"):
    gp, gv = torch.autograd.grad(res[k], (p, v), retain_graph=True, allow_unused=True)
    grads[k] = [0.0 if gr is None else gr.norm().item() for gr in (gp, gv)]   # None: the loss does not use it
    print(f"{k:14s} value {res[k].item():.4f}   |grad wrt points| {grads[k][0]:.2e}   |grad wrt pixels| {grads[k][1]:.2e}")
assert math.log(M) - 0.1 < best < rand <= math.log(M) + 0.01
assert p_max < 0.05
grad_ratio = grads["cmcm"][0] / grads["commit_points"][0]
assert 0.1 < grad_ratio < 10                      # CMCM's gradient: the same order as the commitment's
display(Markdown(f"A feature on a code gives it {p_max:.1%} of the soft-assignment mass; perfect pairs score "
                 f"{math.log(M) - best:.3f} nats below $\\log M$, unrelated ones {rand - math.log(M):+.4f} nats from it. "
                 f"CMCM's gradient on the points is {grad_ratio:.2f} × the commitment loss's."))

# %% [markdown]
# So, with the paper's temperature of 1 on unit features, **CMCM is almost flat**: its best possible
# value is less than 0.1 nat below $\log M$ (asserted). Its gradient is not zero (within a factor 10 of
# the commitment term's, asserted), but it can only reshape nearly uniform code distributions. (CMG, where
# it comes from, does not normalise its features, so its distances, and its soft assignments, are
# sharper.) In the pretraining below, expect the logged CMCM to sit at $\log M$; the commitment
# terms and the EMA do the work of tying the modalities to shared codes.
#
# **Inert by construction, measured on the bench.** The toy above shows the most CMCM could do; the committed
# measurement `python -m experiments mechanism` (`experiments/results/mechanism.json`) reads what it does in a
# bench-length CMCR pretraining (20 epochs, the bench's recipe): the trained model's soft assignments,
# CMCM in every epoch of the bench's five CMCR runs, and CMCM's share of the gradient that reaches the
# 3D trunk (`cmcr_lite.gradients`: $\langle g_\text{CMCM}, g\rangle / \lVert g\rVert^2$, the shares of all
# terms add up to 1). This cell only reads it:

# %%
import json

from cmcr_lite.paths import REPO_ROOT

mechanism_file = REPO_ROOT / "experiments" / "results" / "mechanism.json"
if mechanism_file.is_file():
    mech = json.loads(mechanism_file.read_text())
    cbm, table = mech["codebook"], mech["lite"]["table"]
    cmcm_runs = [v for v in mech["curves"]["CMCR"]["cmcm"].values()]
    lo, hi = min(min(c) for c in cmcm_runs), max(max(c) for c in cmcm_runs)
    assert cbm["log_k"] - cbm["entropy"] < 0.05          # soft assignments within 0.05 nat of uniform
    assert cbm["log_m"] - lo < 0.1 and hi <= cbm["log_m"] + 0.01
    assert abs(table["cmcm"]["share"]["median"]) < 0.01  # under 1 % of the trunk's gradient
    display(Markdown(
        f"After 20 bench epochs the trained codebook's soft assignments have an entropy of {cbm['entropy']:.4f} "
        f"nats against $\\log K$ = {cbm['log_k']:.4f} (uniform), and the largest probability of a feature's "
        f"distribution is {cbm['max_p']:.4f} on average against $1/K$ = {cbm['one_over_k']:.4f}. In the "
        f"{len(cmcm_runs)} bench runs of CMCR, CMCM stays between {lo:.4f} and {hi:.4f} over every epoch, against "
        f"$\\log M$ = {cbm['log_m']:.4f} for unrelated pairs. Its share of the gradient on the 3D trunk is "
        f"{table['cmcm']['share']['median']:+.4f} (median over {len(mech['lite']['records'])} measured steps), its "
        f"gradient norm {table['cmcm']['norm']['median']:.4f} against the NCE's {table['nce']['norm']['median']:.3f}. "
        "So the released formulation (temperature 1 on distances of unit vectors) is inert by construction: the "
        "distances span at most 2, the soft assignments stay near uniform, and the matching term neither moves "
        "nor moves the trunk. Exercise 3 sharpens the temperature to see what it would take; the defaults stay "
        "the paper's."))
else:
    print(f"{mechanism_file} not found: run `python -m experiments mechanism`")

# %% [markdown]
# ## 5 · Lite CMCR pretraining with the codebook
#
# The ablation step `ABLATION_STEPS["+ codebook"]`: point–pixel InfoNCE, decoupled heads with
# $\mathcal{L}_\text{orth}$, and the codebook losses (CMCM + both commitments). No decoder is on in
# this step, so the ST-quantised features feed nothing yet; the codebook acts on the 3D and 2D heads
# only through CMCM and commitment. `CodebookRecorder` logs every training step of the run.

# %%
def pretrain_config():
    # MIM and occupancy are off in this step: the config reads no masks, query points or superpixels
    return session.pretrain_config("cmcr_codebook", method="cmcr", cmcr=ABLATION_STEPS["+ codebook"],
                               epochs=pretrain_epochs)


cfg = pretrain_config()
train_kf = session.keyframes("train")
teacher = build_image_encoder(cfg)

# before training: a fresh model (train mode, so BatchNorm uses batch statistics, as in the first step)
torch.manual_seed(seed)
dev = resolve_device(cfg.device)
fresh = build_model(cfg, teacher)  # as pretrain builds it (the teacher is copied)
fresh_batch = collate_pairs([PairedScanDataset(train_kf, cfg.pipeline, seed=seed)[i] for i in range(cfg.batch_size)])
pc0 = paired_codes(fresh.to(dev).train(), fresh_batch, dev, return_features=True)
spread0 = {m: feature_spread(pc0[f"{m}_feats"]) for m in ("point", "pixel")}
print(f"fresh heads: mean cosine between two features: points {spread0['point']:.2f}, pixels {spread0['pixel']:.2f} "
      f"(random directions in 64-d: 0.00)")
assert min(spread0.values()) > 0.1    # fresh heads: features in a cone, far from random directions
del fresh

# %%
steps_file = out / "cmcr_codebook" / "codebook_steps.npz"
cached = steps_file.is_file() and (out / "cmcr_codebook" / "checkpoint.pt").is_file() \
    and int(np.load(steps_file)["epochs"]) == cfg.epochs
with CodebookRecorder() as rec:
    run = pretrain(cfg, resume=cached, keyframes=train_kf, image_trunk=teacher, progress=False)
if cached:
    steps = dict(np.load(steps_file))
else:
    steps = rec.arrays()
    np.savez(steps_file, epochs=cfg.epochs, **steps)
hist = run["history"]
print(f"{len(hist)} epochs, {len(steps['perplexity_points'])} steps ({'from the cache' if cached else 'trained now'})")
for h in hist:
    print(f"epoch {h['epoch'] + 1}: " + "  ".join(f"{k} {h[k]:.3f}" for k in
                                                  ("nce", "orth", "cmcm", "commit_points", "commit_pixels")))

# %%
K = cfg.cmcr.num_codes
M = cfg.cmcr.codebook_matches or cfg.num_matches  # pairs per codebook step (None: as many as the NCE)
t_ = np.arange(1, len(steps["agreement"]) + 1)    # training steps
ep = [h["epoch"] + 1 for h in hist]
cmcm_gap = np.array([math.log(M) - h["cmcm"] for h in hist])   # nats below log M (the NB01 bound)
fig, ax = plt.subplots(1, 5, figsize=(18, 3.2))
ax[0].plot(t_, steps["perplexity_points"], "o-", ms=3, label="points (3D)")
ax[0].plot(t_, steps["perplexity_pixels"], "s-", ms=3, label="pixels (2D)")
ax[0].set_ylabel("perplexity (codes)"); ax[0].set_title("codes in effective use per step")
ax[1].plot(t_, steps["agreement"], "o-", ms=3, label="paired points and pixels")
ax[1].set_ylabel("fraction of pairs"); ax[1].set_title("point and its pixel on one code")
ax[2].plot(t_, steps["never_used"], "o-", ms=3, label="never chosen so far")
ax[2].plot(t_, (steps["counts_points"] + steps["counts_pixels"] > 0).sum(1), "s-", ms=3, label="chosen in this step")
ax[2].set_yscale("log"); ax[2].set_ylabel(f"codes (of {K})"); ax[2].set_title("dead and live codes")
for k, style in (("commit_points", "s-"), ("commit_pixels", "^-")):
    ax[3].plot(ep, [h[k] / hist[0][k] for h in hist], style, ms=3, label=k)
ax[3].set_ylabel("loss / its epoch-1 value"); ax[3].set_title("commitment losses")
ax[4].plot(ep, cmcm_gap, "o-", ms=3, label="log M − L_CMCM")
if np.all(cmcm_gap > 0):
    ax[4].set_yscale("log")
ax[4].set_ylabel("nats below log M"); ax[4].set_title(f"CMCM (log M = {math.log(M):.3f})")
for i, a_ in enumerate(ax):
    a_.set_xlabel("training step" if i < 3 else "epoch"); a_.legend(fontsize=7)
    a_.xaxis.set_major_locator(MaxNLocator(integer=True))
save_figure(fig, out / "pretrain_codebook_curves.png")
assert all(np.isfinite(h["loss"]) for h in hist) and hist[-1]["loss"] < hist[0]["loss"]
assert np.all((steps["perplexity_points"] >= 1) & (steps["perplexity_points"] <= K))
assert np.all(np.diff(steps["never_used"]) <= 0)                   # "never chosen so far" can only shrink
assert abs(hist[-1]["cmcm"] - math.log(M)) < 0.1  # CMCM stays at log M (section 4)

# %%
pp, pv_, agr = steps["perplexity_points"], steps["perplexity_pixels"], steps["agreement"]
third = lambda x: next((i + 1 for i, v in enumerate(x) if v < x[0] / 3), None)  # noqa: E731  first step below 1/3
ever = (steps["counts_points"] + steps["counts_pixels"]).sum(0) > 0
ema_never = steps["ema_count"][-1][~ever]
cb_floor = laplace_floor(cfg.cmcr.ema_decay, run["model"].codebook.eps, K, M)
fall = lambda x: f"{x[0]:.1f} → {x[-1]:.1f} codes" + (f" (below a third of the start from step {third(x)})"  # noqa: E731
                                                      if third(x) else "")
display(Markdown(
    f"**What this run shows** ({len(hist)} epochs, {len(t_)} steps, {M} pairs per codebook step):\n\n"
    f"* Perplexity, points {fall(pp)}; pixels {fall(pv_)}. The fresh heads' features sit in a cone "
    f"(mean cosine between two features: points {spread0['point']:.2f}, pixels {spread0['pixel']:.2f}; "
    f"0 for random directions).\n"
    f"* Never chosen after {len(t_)} steps: {steps['never_used'][-1]} of {K} codes; chosen in the last step: "
    f"{int((steps['counts_points'][-1] + steps['counts_pixels'][-1] > 0).sum())}.\n"
    f"* Agreement (a point and its pixel on one code): {agr[0]:.3f} at the first step, at most {agr.max():.3f}, "
    f"{agr[-1]:.3f} at the last" + (": a point and its pixel almost never share a code."
                                    if agr.max() < 0.1 else ".") + "\n"
    f"* CMCM stays within {np.abs(cmcm_gap).max():.4f} nats of $\\log M$ = {math.log(M):.3f} (asserted within "
    f"0.1); the commitment losses go {hist[0]['commit_points']:.4f} → {hist[-1]['commit_points']:.4f} (points) and "
    f"{hist[0]['commit_pixels']:.4f} → {hist[-1]['commit_pixels']:.4f} (pixels).\n"
    f"* With γ = 0.999 and {len(t_)} steps, the never-chosen codes' `ema_count` is at most "
    f"{ema_never.max() if len(ema_never) else float('nan'):.5f}, "
    f"{(ema_never.max() if len(ema_never) else float('nan')) / cb_floor:.0%} of the Laplace floor {cb_floor:.4f} of §3; "
    f"`dead_codes()` flags {len(run['model'].codebook.dead_codes())} codes, the never-chosen are "
    f"{int((~ever).sum())}."))

# %% [markdown]
# Why the perplexity falls: the fresh heads (a random 1×1 convolution on the frozen image trunk, and
# on the MinkUNet trunk) put their features in a cone, not over the sphere (asserted: mean cosine above
# 0.1). The few codes nearest that cone win, the EMA pulls exactly those codes towards the features, and
# they win even more: the rich-get-richer of §3, now with features that are themselves concentrated.
# With no dead-code reset nothing revives the other codes; the official code has no reset either.
# Unlike the toy of §3, where the pairs' features are fixed and the winning codes settle between the
# modalities, here the two heads' cones need not overlap, and a code near the points need not be near
# the pixels: the agreement above says how often a pair lands on one code. CMCM cannot force it
# (§4), and the commitment losses pull each feature to its own code at twice the weight of its
# partner's.
#
# ## 6 · Which codes do points and pixels share?
#
# After training, with the codebook in **eval mode** (the EMA is frozen), we quantise every
# point–pixel pair of the validation scans, without augmentation. A histogram of code usage per
# modality, the co-occurrence matrix $C[a, b]$ = number of pairs whose point chose code $a$ and whose
# pixel chose code $b$, and the mutual information $I(k_p; k_v)$ between the two (nats), bounded by
# $\min(H_p, H_v)$.
#
# One trap: after a dozen steps at BatchNorm momentum 0.05, the MinkUNet's *running* statistics are
# still far from the batch statistics it trained with, so in full eval mode the 3D features are not
# the ones the codebook saw (asserted below: in full eval mode the points use fewer codes). We therefore
# read the features as in training — BatchNorm on batch statistics (`batch_statistics=True`, which
# restores the model afterwards) — and freeze only the codebook.

# %%
model = run["model"]
device = next(model.parameters()).device
val_kf = session.keyframes("val", nusc=train_kf.nusc)
val_ds = PairedScanDataset(val_kf, replace(cfg.pipeline, augment=False), seed=seed)
val_batch = collate_pairs([val_ds[i] for i in range(min(3, len(val_ds)))])
codes_before = model.codebook.embedding.clone()
# BatchNorm on batch statistics as in training, the codebook in eval mode; the model's state is restored after
pc = paired_codes(model, val_batch, device, return_features=True, batch_statistics=True)
assert torch.equal(model.codebook.embedding, codes_before)   # eval mode: the codes did not move
cooc = co_occurrence(pc["points"], pc["pixels"], K)
share = code_sharing(cooc)
for k, val in share.items():
    print(f"{k:24s} {val:.3f}" if isinstance(val, float) else f"{k:24s} {val}")
spread = {m: feature_spread(pc[f"{m}_feats"]) for m in ("point", "pixel")}
print(f"trained heads: mean cosine between two features: points {spread['point']:.2f}, pixels {spread['pixel']:.2f}")
pc_eval = paired_codes(model.eval(), val_batch, device)
perp_eval = perplexity_from_counts(np.bincount(pc_eval['points'].numpy(), minlength=K))
print(f"point perplexity, BatchNorm running statistics (full eval mode): {perp_eval:.2f} "
      f"vs batch statistics: {share['perplexity_points']:.2f}")
assert perp_eval < share["perplexity_points"]

# %%
usage_p = np.bincount(pc["points"].numpy(), minlength=K)
usage_v = np.bincount(pc["pixels"].numpy(), minlength=K)
usage_vox = np.bincount(pc["voxels"].numpy(), minlength=K)
top = np.argsort(-(usage_p + usage_v))[: max(1, min(12, int(((usage_p + usage_v) > 0).sum())))]
fig, ax = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.3, 1, 1.3]})
xs = np.arange(len(top))
ax[0].bar(xs - 0.27, usage_vox[top] / usage_vox.sum(), 0.27, label="all voxels")
ax[0].bar(xs, usage_p[top] / usage_p.sum(), 0.27, label="paired points")
ax[0].bar(xs + 0.27, usage_v[top] / usage_v.sum(), 0.27, label="paired pixels")
ax[0].set_xticks(xs); ax[0].set_xticklabels(top, fontsize=7, rotation=90)
ax[0].set_xlabel("code index (most used first)"); ax[0].set_ylabel("fraction of features"); ax[0].legend(fontsize=7)
ax[0].set_title("code usage after training (val scans)")
sub = cooc[np.ix_(top, top)]
im = ax[1].imshow(np.ma.masked_equal(sub / max(1, cooc.sum()), 0), cmap="viridis", norm=LogNorm(vmin=1e-4, vmax=1))
ax[1].set_xticks(xs); ax[1].set_xticklabels(top, fontsize=6, rotation=90)
ax[1].set_yticks(xs); ax[1].set_yticklabels(top, fontsize=6)
ax[1].set_xlabel("pixel code"); ax[1].set_ylabel("point code"); ax[1].set_title("co-occurrence (fraction of pairs, log)")
fig.colorbar(im, ax=ax[1], fraction=0.046)
labels = pc["labels"].numpy()
present = [c for c in range(1, len(CLASS_NAMES_16)) if (labels == c).any()]
cls_by_code = np.array([[np.sum((pc["points"].numpy() == k) & (labels == c)) for k in top] for c in present], float)
no_points = cls_by_code.sum(0) == 0  # codes used only by pixels: no class to show
cls_by_code /= np.maximum(cls_by_code.sum(0, keepdims=True), 1)
im2 = ax[2].imshow(np.ma.masked_array(cls_by_code, np.broadcast_to(no_points, cls_by_code.shape)), aspect="auto",
                   cmap="magma")
ax[2].set_facecolor("0.85")  # grey columns: codes no point chose
ax[2].set_yticks(range(len(present))); ax[2].set_yticklabels([CLASS_NAMES_16[c] for c in present], fontsize=7)
ax[2].set_xticks(xs); ax[2].set_xticklabels(top, fontsize=6, rotation=90)
ax[2].set_xlabel("point code"); ax[2].set_title("classes of the points on each code (grey: no point)")
fig.colorbar(im2, ax=ax[2], fraction=0.046, label="fraction of the code's points")
save_figure(fig, out / "code_usage_cooccurrence.png")

assert cooc.sum() == len(pc["points"]) == len(val_batch["pair_voxels"])
assert 0 <= share["mutual_information"] <= share["max_mutual_information"] + 1e-9
assert share["used_points"] >= 1 and share["used_pixels"] >= 1

# %% [markdown]
# How to read it: the fraction of pairs on one code (`agreement`), how many codes both modalities use,
# and how much a point's code tells about its pixel's code (`mutual_information`, in nats, against its
# bound). The right panel reads the codes as a vocabulary: a code that collects the points of one class
# means something; a code that every class lands on does not. What this run shows:

# %%
name = lambda c: CLASS_NAMES_16[c]  # noqa: E731
frac_p, frac_v = usage_p / usage_p.sum(), usage_v / usage_v.sum()
kp, kv = int(np.argmax(usage_p)), int(np.argmax(usage_v))
shared_vocab = share["agreement"] >= 0.5
lines = [f"* Agreement {share['agreement']:.3f}; codes used: {share['used_points']} by points, {share['used_pixels']} by "
         f"pixels, {share['used_both']} by both; mutual information {share['mutual_information']:.3f} of at most "
         f"{share['max_mutual_information']:.3f} nats.",
         f"* The points' most used code, {kp}, holds {frac_p[kp]:.0%} of the points and {frac_v[kp]:.1%} of the "
         f"pixels; the pixels' most used code, {kv}, holds {frac_v[kv]:.0%} of the pixels and {frac_p[kv]:.1%} of the "
         f"points. " + ("Points and pixels mostly share codes." if shared_vocab else "Points and pixels mostly use "
                        "*different* codes: the codebook is not a shared vocabulary after this run.")]
cls_p = {c: np.bincount(pc["points"].numpy()[labels == c], minlength=K) for c in present}
big = usage_p >= max(50, 0.01 * usage_p.sum())           # point codes with at least 1 % of the points (or 50)
rich = {}
for c in [c for c in present if name(c) in ("car", "truck")]:
    share_c = np.where(big, cls_p[c] / np.maximum(usage_p, 1), 0)
    k = rich[name(c)] = int(np.argmax(share_c))
    mix = sorted(present, key=lambda d: -cls_p[d][k])[:3]
    lines.append(f"* The point code with the largest share of {name(c)} (among codes with ≥ 1 % of the points): code {k}, "
                 f"{', '.join(f'{cls_p[d][k] / usage_p[k]:.0%} {name(d)}' for d in mix)}; {usage_p[k]:,} points, {cls_p[c][k] / max(1, cls_p[c].sum()):.0%} of all "
                 f"{name(c)} points; pixels on it: {usage_v[k]:,}.")
twins_split = len(rich) == 2 and rich["car"] != rich["truck"] and all(
    cls_p[class_index(c)][k] > 0.5 * usage_p[k] for c, k in rich.items())
if twins_split:
    no_pix = all(frac_v[k] < 0.01 for k in rich.values())
    lines.append(f"* Codes {rich['car']} and {rich['truck']} hold mostly car and mostly truck points: they separate the "
                 f"geometry twins among the LiDAR features, LiDAR-specific structure that the cameras (which render the "
                 f"twins alike, notebook 00) cannot share. " + ("The pixels (almost) never use them: codes of the "
                 "points alone, the opposite of what a unified codebook is for." if no_pix else
                 "Some pixels use them too."))
else:
    lines.append("* No two point codes hold a majority of car and a majority of truck points: in this run the "
                 "codes mix the geometry twins" + (", and the pixels (almost) never use the codes richest in them."
                                                   if all(frac_v[k] < 0.01 for k in rich.values()) else "."))
display(Markdown("\n".join(lines) + f"\n* Mean cosine between two features, trained vs fresh heads (§5): points "
                 f"{spread['point']:.2f} vs {spread0['point']:.2f}, pixels {spread['pixel']:.2f} vs {spread0['pixel']:.2f}."))

# %% [markdown]
# ## 7 · Engineering notes
#
# * **Multi-GPU.** Under `torchrun` every process sees different pairs, so `ema_update` all-reduces
#   (averages) $N$ and $W$ before computing the codes; every process then holds the same codebook.
#   Without an initialised `torch.distributed` the all-reduce is skipped (the official code needs one).
# * **Eval mode freezes the codebook.** The EMA runs only when `self.training` is true; the official code
#   has no such guard and keeps moving the codes during evaluation. §6 asserted the codes did not move.
# * **Quantise only what the losses need.** The official training step quantises *every* pixel of the
#   upsampled 12 × 224 × 416 maps with one distance matrix:

# %%
official_rows = 12 * 224 * 416
ours = {"official: every pixel of 12 x 224 x 416": official_rows,
        "ours, codebook losses: 2 x 2,048 sampled pairs": 2 * 2048,
        "ours, 2D decoder input: ResNet-50 maps at stride 32 (12 x 7 x 13)": 12 * 7 * 13,
        "ours, any chunk of UnifiedCodebook.quantize (chunk_size rows)": UnifiedCodebook().chunk_size}
for name, rows in ours.items():
    mem = quantisation_memory(rows, num_codes=400, dim=64)
    print(f"{name:68s} {rows:>9,d} rows -> distances {mem['distances'] / 1e9:7.3f} GB")
assert quantisation_memory(official_rows)["distances"] == 1_789_132_800

# %% [markdown]
# The official step allocates about **1.8 GB** of distances (400 floats per pixel, before the
# temporaries of `addmm`) on every step and every GPU, and then discards most of them. We quantise the
# sampled pairs for the losses, and the 2D maps at the trunk's own resolution before upsampling: the
# shared head is a 1×1 convolution followed by bilinear upsampling, so the low-resolution map holds all
# its information (`cmcr_lite/cmcr.py`). `quantize` also works in chunks, so its peak is
# `chunk_size × K` floats (26 MB) whatever the number of rows.
#
# ## Summary
#
# * One codebook, 400 × 64, no parameters: codes move only by the EMA, half towards the points that
#   chose them and half towards their paired pixels, so winning codes settle **between** the
#   modalities; in the toy of §3, with fixed features and a moderate gap, points and pixels come to share
#   them (asserted). The ST estimator passes gradients through quantisation unchanged (§1).
# * The codes nobody picks never move: without a reset they stay dead, and in the toy most of the 400
#   do (asserted). A simple reset raises perplexity but re-creates modality-specific codes (§3,
#   asserted). `ema_count` is a poor dead-code test: a never-chosen code's count climbs towards the
#   Laplace floor $\approx\varepsilon/(1-\gamma)$ over a thousand steps, passes the default threshold much
#   earlier, and a threshold above the floor also flags rarely chosen live codes (§3 renders the counts).
# * With unit features and temperature 1, CMCM is nearly flat: perfect pairs score less than 0.1 nat
#   below $\log M$ (§4), and in training it stays within 0.1 nat of $\log M$ (§5; both asserted).
# * In the lite pretraining the perplexity falls within a few steps (§5 renders how far), and whether
#   the run ends with a shared vocabulary, or with points and pixels on mostly different codes, §6
#   renders from the code counts, together with the point codes that split car from truck.
#
# **Exercises**
# 1. *Implement it yourself* (easy, 10 min): the perplexity of §3, $\exp(-\sum_k u_k\log u_k)$ with $u_k = n_k/\sum_j n_j$,
#    from the code counts `usage_p` of §6, checked against `perplexity_from_counts` and
#    `share["perplexity_points"]`. Hint: drop the codes with $n_k = 0$ first ($0\log 0 = 0$). Expected:
#    equal to float precision, between 1 and the number of codes used. The check cell below holds a
#    solution; replace it with yours.
# 2. *Predict, then measure* (medium, 15 min): in §3, remove the modality gap (`gap = 0.0 * F.normalize(...)`),
#    then double it (`0.8 * ...`). Hint: watch the agreement curve and the `never_used` count, not the
#    perplexity. Expected: without a gap a point and its pixel end on one code almost always; at twice the
#    gap the agreement stays far below the default's. The check cell below runs all three gaps and asserts
#    that order.
# 3. (medium, 15 min) In §4, sharpen the soft assignments: `F.log_softmax(-20 * code_distances(x, cb.embedding).sqrt(), 1)`
#    (`code_distances` from `cmcr_lite.losses.codebook`) in place of `soft_assign_log`. Hint: with
#    $M$ pairs on $K$ codes, several pairs share each code and tie in $S$. Expected: CMCM of perfect pairs
#    falls from near $\log M$ to about the log of the number of pairs per code. The check cell below
#    computes it.
# 4. (medium, 10 min) In §3, give the opt-in reset a threshold above the Laplace floor
#    (`UnifiedCodebook(..., reset_dead_codes=True, dead_threshold=2 * floor)`). Hint: at the start every
#    count is below $2\times$ floor. Expected: as with the default reset, or worse: perplexity far above 16
#    and agreement below the official run's, because live codes are re-seeded too. The check cell below
#    runs it and asserts both.

# %%
# Check for exercise 1 (a solution; replace it with yours)
def my_perplexity(counts):
    u = np.asarray(counts, float)
    u = u[u > 0] / u.sum()
    return float(np.exp(-(u * np.log(u)).sum()))


assert math.isclose(my_perplexity(usage_p), perplexity_from_counts(usage_p), rel_tol=1e-9)
assert math.isclose(my_perplexity(usage_p), share["perplexity_points"], rel_tol=1e-9)
assert 1 <= my_perplexity(usage_p) <= (usage_p > 0).sum()

# %%
# Check for exercise 3: temperature 1/20 on the distances, perfect pairs of §4
from cmcr_lite.losses.codebook import code_distances

sharp = F.log_softmax(-20 * code_distances(on_codes, cb_fresh.embedding).sqrt(), 1)
sharp_best = cmcm_loss(sharp, sharp).item()
per_code = len(on_codes) / len(torch.unique(cb_fresh.nearest(on_codes)))
print(f"CMCM of perfect pairs: temperature 1 {best:.3f}, sharpened {sharp_best:.3f}; log M = {math.log(len(on_codes)):.3f}, "
      f"log(pairs per code used) = {math.log(per_code):.3f}")
assert sharp_best < best - 1

# %%
# Check for exercise 2: the toy of §3 at three modality gaps (official codebook, no reset)
by_gap = {scale: (lambda a: (a["agreement"][-1], a["perplexity_points"][-1]))(toy_run(gap * scale / 0.4,
                                                                                     torch.Generator())[1])
          for scale in (0.0, 0.4, 0.8)}
print("gap scale -> (agreement, perplexity of points):", {k: (round(a, 2), round(p, 1)) for k, (a, p) in by_gap.items()})
assert by_gap[0.0][0] > by_gap[0.4][0] > by_gap[0.8][0]

# %%
# Check for exercise 4: the opt-in reset with a threshold of twice the Laplace floor
a_2x = toy_run(gap, torch.Generator(), reset_dead_codes=True, dead_threshold=2 * floor)[1]
agree_2x, perplexity_2x = a_2x["agreement"][-1], a_2x["perplexity_points"][-1]
print(f"threshold 2 x floor: agreement {agree_2x:.2f}, perplexity {perplexity_2x:.1f} "
      f"(official: {a_off['agreement'][-1]:.2f}, {a_off['perplexity_points'][-1]:.1f})")
assert perplexity_2x > 16 and agree_2x < a_off["agreement"][-1]

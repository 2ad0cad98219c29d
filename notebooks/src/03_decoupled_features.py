# %% [markdown]
# # 03 · Decoupled features: shared and specific heads, and the orthogonality loss
#
# Contrastive distillation (notebook 02) gives each modality one head whose features must agree
# across modalities — the **shared** features $F^{3D}$, $F^{2D}$. CMCR's first addition is a second
# head per branch for **modality-specific** features $G^{3D}$, $G^{2D}$, kept apart from the shared
# ones by an orthogonality loss $\mathcal{L}_\text{orth}$. Later notebooks feed $G$ to the
# modality-specific objectives (masked image modelling, occupancy); here we look at the decoupling
# alone and measure what each head carries:
#
# 1. the two heads on both branches, and $\mathcal{L}_\text{orth}$ next to the line that computes it;
# 2. a lite CMCR pretrained with **decoupling only** (`ABLATION_STEPS["+ decoupling"]`), and the same
#    with the orthogonality weight set to 0;
# 3. the cross-correlation matrix $|\hat F^\top \hat G|$ with and without the loss (heatmaps);
# 4. linear probes of $F^{3D}$, $G^{3D}$ and the trunk under them on the geometry-only and
#    appearance-only twins of notebook 00.
#
# Paper: Zhang & Hou, IJCV 2026, §3 (method figure); facts and the released code's choices:
# `../shared/paper.md` §3.1, §4.2, §6.2. Defaults run in under two minutes on a 2-core CPU.

# %% tags=["parameters"]
preset = "lite"               # "lite": embedded data, CPU; "full": the paper's setting on real nuScenes
dataroot = None               # None: the embedded synthetic dataset
version = "v1.0-synthetic"    # full: "v1.0-trainval"
image_weights = None          # full: MoCo-v2 ResNet-50 weights path
pretrain_epochs = 2           # lite; None keeps the preset's (full: the paper's 10)
orth_weight = 0.1             # the paper's weight on L_orth (pretrain/lightning_trainer.py:229)
probe_alpha = 1.0             # ridge penalty of the linear probes
seed = 0
output_dir = "../outputs/03_decoupled_features"

# %%
import copy
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.linalg import hadamard

from cmcr_lite.classes import APPEARANCE_ONLY_TWINS, GEOMETRY_ONLY_TWINS, class_index
from cmcr_lite.cmcr import ABLATION_STEPS, CMCRModel, CMCROptions
from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
from cmcr_lite.losses.orthogonality import orthogonality_loss
from cmcr_lite.notebook import start_notebook
from cmcr_lite.pretrain import build_image_encoder, pretrain
from cmcr_lite.viz import save_figure

t_start = time.perf_counter()
session = start_notebook(preset, dataroot, version, output_dir, seed, image_weights)
out = session.out


def config(name, options):
    """The preset's PretrainConfig for CMCR with ``options``. Decoupling alone reads no MIM masks, no
    occupancy queries and no superpixels; the config derives that from the options and leaves them out."""
    return session.pretrain_config(name, method="cmcr", cmcr=options, epochs=pretrain_epochs)


options = {"with L_orth": replace(ABLATION_STEPS["+ decoupling"], orth_weight=orth_weight),
           "without L_orth": replace(ABLATION_STEPS["+ decoupling"], orth_weight=0.0)}
train_kf = session.keyframes("train")
val_kf = session.keyframes("val", nusc=train_kf.nusc)
teacher = build_image_encoder(config("teacher", options["with L_orth"]))
print(train_kf, val_kf, sep="\n")

# %% [markdown]
# ## 1 · Two heads on each branch
#
# Both branches end in a trunk — the sparse MinkUNet in 3D, the frozen image network in 2D — and two
# 1×1 convolutions read it (paper.md §3.1–3.2):
#
# $$F^{3D} = \frac{h^{sh}_{3D}(z^{3D})}{\|h^{sh}_{3D}(z^{3D})\|_2}, \qquad G^{3D} = h^{sp}_{3D}(z^{3D}),
#   \qquad F^{2D} = \frac{h^{sh}_{2D}(z^{2D})}{\|\cdot\|_2}, \qquad G^{2D} = h^{sp}_{2D}(z^{2D}),$$
#
# with $z$ the trunk's per-voxel or per-pixel features. Only $F$ is L2-normalised, because only $F$
# enters the InfoNCE (notebook 02); $G$ goes unnormalised to the decoders of notebooks 05–06. In the
# released code the 2D trunk (ResNet-50, MoCo-v2) is **frozen**: the "specific 2D features" are a
# linear projection of fixed features, and only the two 1×1 heads learn in 2D.
# `CMCRModel.features_3d` / `features_2d` compute them:

# %%
cfg = config("init", options["with L_orth"])


def fresh_model():
    """CMCR as `pretrain` builds it: same seed, same construction order, so this is the starting
    point of both runs of §3 (MinkowskiEngine modules do not survive copy.deepcopy: build anew)."""
    torch.manual_seed(seed)
    return CMCRModel(cfg.backbone, copy.deepcopy(teacher), cfg.feature_dim, cfg.tau, cfg.num_matches, cfg.cmcr)


init_model = fresh_model()  # kept untouched for §4-5
demo = fresh_model()        # §1-2 run it in training mode (BatchNorm updates its running statistics)
item = PairedScanDataset(train_kf, cfg.pipeline, seed=seed)[0]
batch = collate_pairs([item])
x = batch_to_sparse_tensor(batch)
with torch.no_grad():
    f3d, g3d = demo.features_3d(x)
    f2d, f2d_low, g2d, g2d_low = demo.features_2d(batch["images"])
print(f"3D trunk {init_model.backbone.trunk_dim}-d -> F3d {tuple(f3d.shape)}, G3d {tuple(g3d.shape)}   (voxels x channels)")
print(f"2D trunk {init_model.image_encoder.trunk_dim}-d -> F2d {tuple(f2d.shape)}, G2d {tuple(g2d.shape)}  "
      f"(images x channels x rows x columns); at the trunk's resolution {tuple(f2d_low.shape[-2:])}")
trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
print(f"trainable parameters: 2D trunk {trainable(init_model.image_encoder.trunk)}, 2D heads "
      f"{trainable(init_model.image_encoder.shared) + trainable(init_model.image_encoder.specific)}, "
      f"3D trunk {trainable(init_model.backbone)}, 3D heads {trainable(init_model.head3d) + trainable(init_model.head3d_specific)}")
assert torch.allclose(f3d.norm(dim=1), torch.ones(len(f3d)), atol=1e-5)
assert torch.allclose(f2d.norm(dim=1), torch.ones_like(f2d[:, 0]), atol=1e-5)
assert f3d.shape == g3d.shape and f2d.shape == g2d.shape
assert trainable(init_model.image_encoder.trunk) == 0  # the 2D trunk is frozen

# %% [markdown]
# ## 2 · The orthogonality loss
#
# With $\hat F, \hat G \in \mathbb{R}^{N\times D}$ the shared and specific features of all $N$ voxels
# of the batch, rows L2-normalised ($\hat G$ is normalised **only for this loss**), and $D = 64$:
#
# $$\mathcal{L}_\text{orth} = \frac{\|\hat F^\top \hat G\|_F}{D^2}, \qquad
#   \mathcal{L} = \mathcal{L}_\text{NCE} + 0.1\,\mathcal{L}_\text{orth}.$$
#
# $(\hat F^\top\hat G)_{ab} = \sum_n \hat F_{na}\hat G_{nb}$ correlates channel $a$ of $F$ with channel
# $b$ of $G$ over the voxels: the loss vanishes when every shared channel, seen as an $N$-vector, is
# orthogonal to every specific channel. It is a sum over voxels, not a mean, so its size grows with
# $N$ (the weight 0.1 was tuned for the released batch). In `CMCRModel.forward` the two lines are
# `orth = orthogonality_loss(f3d, g3d)` and `terms["orth"], weights["orth"] = orth, o.orth_weight`;
# with `orth_2d=True` (the paper's figure) the same loss on the 2D heads is added, at the trunk's
# resolution. Check on the batch above:

# %%
flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731  (B, D, h, w) -> (B*h*w, D)
with torch.no_grad():
    orth_3d = orthogonality_loss(f3d, g3d)                       # L_orth on the 3D branch
    orth_2d = orthogonality_loss(flat(f2d_low), flat(g2d_low))   # the figure's L_orth on the 2D branch
    terms = demo(batch, x, torch.Generator().manual_seed(seed))
print(f"L_orth 3D {orth_3d:.3f} ({len(f3d)} voxels), 2D {orth_2d:.3f} ({len(flat(f2d_low))} trunk pixels)")
print(f"L_NCE {terms['nce']:.3f}; L = L_NCE + {orth_weight} L_orth = {terms['loss']:.3f}")
assert torch.isclose(terms["orth"], orth_3d + orth_2d, rtol=1e-4)
assert torch.isclose(terms["loss"], terms["nce"] + orth_weight * terms["orth"], rtol=1e-5)
# bounds: 0 for orthogonal channel spaces, at most N * D / D^2 (each row adds a rank-one term of norm <= 1)
# (columns of a Hadamard matrix: orthogonal, and every row has the same norm, so row-normalising keeps them so)
h = torch.from_numpy(hadamard(8)).double()
assert orthogonality_loss(h[:, :4], h[:, 4:]) < 1e-12 and 0 < orth_3d <= len(f3d) / 64

# %% [markdown]
# ## 3 · Pretraining with and without $\mathcal{L}_\text{orth}$
#
# Two lite runs of CMCR with decoupling only (no codebook, MIM or occupancy): InfoNCE on $F$, plus
# $\mathcal{L}_\text{orth}$ with weight 0.1 — or 0. With the weight at 0 the specific heads receive no
# gradient at all and stay at their random initialisation; the logged $\mathcal{L}_\text{orth}$ is
# then only measured. Checkpoints are cached: a re-run loads them.

# %%
runs = {}
for name, opt in options.items():
    t0 = time.perf_counter()
    runs[name] = pretrain(config(name, opt), resume=True, keyframes=train_kf, image_trunk=teacher, progress=False)
    h = runs[name]["history"]
    print(f"{name:15s} ({time.perf_counter() - t0:4.1f} s)  L_NCE {[round(e['nce'], 2) for e in h]}  "
          f"L_orth {[round(e['orth'], 2) for e in h]}")
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
for name, r in runs.items():
    ep = [e["epoch"] + 1 for e in r["history"]]
    ax[0].plot(ep, [e["nce"] for e in r["history"]], "o-", label=name)
    ax[1].plot(ep, [e["orth"] for e in r["history"]], "o-", label=name)
ax[0].set_ylabel("L_NCE (nats)"); ax[1].set_ylabel("L_orth (3D + 2D, unitless)")
for a in ax:
    a.set_xlabel("epoch"); a.legend(fontsize=8)
save_figure(fig, out / "pretrain_terms.png")
h_on, h_off = runs["with L_orth"]["history"], runs["without L_orth"]["history"]
assert all(np.isfinite(e["loss"]) for e in h_on + h_off)
assert h_on[-1]["orth"] < h_on[0]["orth"]          # the loss does what it asks
assert h_on[-1]["orth"] < h_off[-1]["orth"]        # and more than training without it

# %% [markdown]
# ## 4 · The cross-correlation matrix, before and after
#
# On the points of the `val` split (no augmentation) we compute
# $C = |\hat F^\top \hat G| / N$ — the matrix inside $\mathcal{L}_\text{orth}$, divided by the number
# of points so that entries lie in $[0, 1]$ (`probes.cross_correlation`; $\mathcal{L}_\text{orth} =
# N\|C\|_F/D^2$) — for the untrained model, the run without the loss and the run with it, in 3D
# (voxel features given to each point) and in 2D (pixels of the trunk's resolution).

# %%
from cmcr_lite.analysis.probes import cross_correlation, point_features

models = {"random init": init_model, **{name: r["model"] for name, r in runs.items()}}
val_feats = {name: point_features(m, val_kf, cfg.pipeline.crop_size) for name, m in models.items()}
corr = {(name, br): cross_correlation(f[f"shared{sfx}"], f[f"specific{sfx}"])
        for name, f in val_feats.items() for br, sfx in (("3D", ""), ("2D", "_2d"))}
vmax = max(c.max().item() for c in corr.values())
fig, axes = plt.subplots(2, 3, figsize=(11, 7))
for j, name in enumerate(models):
    for i, br in enumerate(("3D", "2D")):
        c = corr[(name, br)]
        im = axes[i, j].imshow(c.numpy(), vmin=0, vmax=vmax, cmap="viridis")
        axes[i, j].set_title(f"{br}, {name}\n||C||_F = {torch.linalg.matrix_norm(c):.3f}", fontsize=9)
        axes[i, j].set_xlabel("specific channel b of G")
for i in range(2):
    axes[i, 0].set_ylabel("shared channel a of F")
fig.colorbar(im, ax=axes, shrink=0.6, label="|mean over points of F_a G_b| (unitless)")
fig.savefig(out / "cross_correlation.png", dpi=80); plt.show()
for name in models:
    print(f"{name:15s} ||C||_F  3D {torch.linalg.matrix_norm(corr[(name, '3D')]):.3f}   "
          f"2D {torch.linalg.matrix_norm(corr[(name, '2D')]):.3f}   max |C| 3D {corr[(name, '3D')].max():.3f}")
norm3d = {name: torch.linalg.matrix_norm(corr[(name, "3D")]).item() for name in models}
assert all(0 <= c.min() and c.max() <= 1 for c in corr.values())
assert norm3d["with L_orth"] < norm3d["without L_orth"]

# %% [markdown]
# On validation points the loss never saw, the 3D matrix of the run with $\mathcal{L}_\text{orth}$ has
# a smaller Frobenius norm than the run without it (asserted) — a small drop after two lite epochs
# at weight 0.1 (seeds 0–2: 2–5 % lower), not orthogonality; single entries can even grow. In 2D the
# drop is larger, although only the two 1×1 heads can move there: the trunk under them is frozen.
#
# ## 5 · What does each head carry? Linear probes on the twins
#
# A ridge classifier (closed form, `probes.ridge_probe`) is fitted on the per-point features of the
# `train` scenes and scored on the `val` scene, separately for each twin pair of notebook 00:
# **geometry-only** twins render identically in the cameras and differ in a fine relief only the
# LiDAR resolves; **appearance-only** twins have the same shape, differ in colour, and in the LiDAR
# only through a faint intensity shift. Score: balanced accuracy of the pair (0.5 = chance).
# We probe $F^{3D}$, $G^{3D}$ and the trunk $z^{3D}$ both heads read.

# %%
from cmcr_lite.analysis.probes import twin_probe

train_feats = {name: point_features(m, train_kf, cfg.pipeline.crop_size) for name, m in models.items()}
pairs = {"geometry-only": GEOMETRY_ONLY_TWINS, "appearance-only": APPEARANCE_ONLY_TWINS}
probes = {}
for name in models:
    for key, label in (("shared", "F3d"), ("specific", "G3d"), ("trunk", "trunk")):
        tr, va = train_feats[name], val_feats[name]
        probes[(name, label)] = {group: twin_probe(tr[key], tr["labels"], va[key], va["labels"], p, probe_alpha)
                                 for group, p in pairs.items()}
all_pairs = [p for ps in pairs.values() for p in ps]
by_pair = {k: {p: a for res in v.values() for p, a in res.items()} for k, v in probes.items()}
print(f"{'model':15s} {'feats':6s} " + " ".join(f"{a[:8]}/{b[:8]:>8s}" for a, b in all_pairs))
for (name, label), res in by_pair.items():
    print(f"{name:15s} {label:6s} " + " ".join(f"{res[p]:17.3f}" for p in all_pairs))
print("pairs without points of both classes in train and val (NaN):",
      [p for p, a in by_pair[("random init", "trunk")].items() if np.isnan(a)])

# %%
group_mean = {k: {g: np.nanmean(list(v[g].values())) for g in pairs} for k, v in probes.items()}
fig, ax = plt.subplots(figsize=(10, 3.4))
keys = list(probes)
for i, g in enumerate(pairs):
    ax.bar(np.arange(len(keys)) + 0.4 * i, [group_mean[k][g] for k in keys], 0.4, label=f"{g} twins")
ax.axhline(0.5, color="k", lw=0.8, ls="--", label="chance")
ax.set_xticks(np.arange(len(keys)) + 0.2)
ax.set_xticklabels([f"{n}\n{l}" for n, l in keys], fontsize=7)
ax.set_ylabel("balanced accuracy (fraction)"); ax.set_ylim(0.3, 1); ax.legend(fontsize=8, ncol=3)
save_figure(fig, out / "twin_probes.png")
for k, v in probes.items():
    assert all(np.isnan(a) or 0 <= a <= 1 for res in v.values() for a in res.values()), k
# G3d is a 1x1 convolution of the trunk: when the trunk is no wider than the head, the map is
# injective and a linear probe on G reads exactly what the trunk holds
if init_model.backbone.trunk_dim <= cfg.feature_dim:
    for name in models:
        for g in pairs:
            assert abs(group_mean[(name, "G3d")][g] - group_mean[(name, "trunk")][g]) < 0.02, (name, g)

# %% [markdown]
# **What the probes show, and why.** The numbers of this run, read from the table above (not from
# our expectations):

# %%
from IPython.display import Markdown, display

spread = {g: max(max(group_mean[(n, l)][g] for l in ("F3d", "G3d", "trunk"))
                 - min(group_mean[(n, l)][g] for l in ("F3d", "G3d", "trunk")) for n in models) for g in pairs}
geometry_first = [k for k in keys if group_mean[k]["geometry-only"] > group_mean[k]["appearance-only"]]
nan_pairs = [f"{a}/{b}" for (a, b), acc in by_pair[("random init", "trunk")].items() if np.isnan(acc)]
rnd = group_mean[("random init", "trunk")]
trained = [n for n in models if n != "random init"]
moved = {g: np.mean([group_mean[(n, "trunk")][g] for n in trained]) - rnd[g] for g in pairs}
val_counts = {c: int((val_feats["random init"]["labels"] == class_index(c)).sum()) for c in ("car", "truck")}
display(Markdown(
    f"* Within one model, $F^{{3D}}$, $G^{{3D}}$ and the trunk differ by at most "
    f"{spread['geometry-only']:.3f} (geometry twins) and {spread['appearance-only']:.3f} (appearance twins) "
    f"in balanced accuracy.\n"
    f"* Geometry twins score above appearance twins for {len(geometry_first)} of the {len(keys)} feature sets.\n"
    f"* The random-init trunk scores {rnd['geometry-only']:.3f} on geometry twins and "
    f"{rnd['appearance-only']:.3f} on appearance twins (0.5 = chance); the trained trunks move them by "
    f"{moved['geometry-only']:+.3f} and {moved['appearance-only']:+.3f} on average.\n"
    f"* The val scene holds {val_counts['car']:,} car and {val_counts['truck']:,} truck points; pairs "
    f"without points of both classes: {', '.join(nan_pairs) if nan_pairs else 'none'}."))

# %% [markdown]
# Why the three feature sets read alike: $G^{3D} = W z^{3D} + b$ with $W$ a 1×1 convolution from the
# trunk (32-d in lite) to 64 channels, an injective linear map, so a linear probe on $G$ sees exactly
# the trunk (asserted above); $F$ is the same up to the row normalisation. $\mathcal{L}_\text{orth}$
# rotates the heads so that their channels decorrelate (§4), but it cannot remove information from a
# head unless it makes $W$ rank-deficient. So with decoupling alone the probes measure the trunk, and
# whatever the twins' scores are, no head was asked to carry anything of its own. In the paper's setting the trunk
# is 96-d and each head 64-d, so the two heads *can* split the trunk's space; what $G$ is *for* comes
# only from the losses that read it (MIM, occupancy), which decoupling alone does not have.
#
# ## 6 · Paper figure vs released code
#
# | | paper (method figure) | released code | here |
# |---|---|---|---|
# | specific heads $h^{sp}$ | both branches | both branches (`final_class_level`, `decoder2`) | both (`CMCRModel`) |
# | $\mathcal{L}_\text{orth}$ on 3D | yes | yes, weight 0.1, $\|\hat F^\top\hat G\|_F/64^2$ | yes, weight `orth_weight`, $/D^2$ |
# | $\mathcal{L}_\text{orth}$ on 2D | yes | **no** | `CMCROptions.orth_2d` (default on; `released_code()` turns it off) |
# | 2D trunk | not stated | frozen MoCo-v2 ResNet-50; the 2D heads are 1×1 convs on it | frozen (small self-supervised teacher in lite) |
# | $\mathcal{L}_{kl}$ on $G^{3D}$ | yes | **absent** | absent (cannot be recovered, paper.md §6.2) |
# | heads after pretraining | — | neither head transfers, only the trunk | the probes above read the trunk too |

# %%
released = CMCROptions.released_code()
print(f"orth_2d: paper figure {ABLATION_STEPS['+ decoupling'].orth_2d}, released code {released.orth_2d}; "
      f"orth_weight {released.orth_weight}")
runtime = time.perf_counter() - t_start
print(f"notebook runtime after imports: {runtime:.0f} s")

# %% [markdown]
# ## Summary
#
# * CMCR gives both branches a second, unnormalised **specific** head next to the shared one; the
#   orthogonality loss $\|\hat F^\top\hat G\|_F/D^2$ (weight 0.1) decorrelates their channels over
#   the voxels of a batch. The released code applies it to 3D only; the 2D heads sit on a frozen
#   image encoder, so in 2D it can only rotate two 1×1 projections.
# * Trained with the loss, the 3D cross-correlation on held-out points is lower than without it.
# * Decorrelated is not the same as different content: a linear probe reads as much from $G^{3D}$
#   as from the trunk, because the head is a linear map of it. With decoupling alone, nothing tells
#   $G$ what to carry; notebooks 05–06 give it a job (reconstruction and occupancy).
#
# **Exercises**
# 1. Set `orth_weight = 1.0` and rerun: how far does $\|C\|_F$ drop, and does $\mathcal{L}_\text{NCE}$ suffer?
# 2. Use `CMCROptions.released_code()`'s choice `orth_2d=False` in `options`: which heatmaps change?
# 3. Give the probe less room: project $F^{3D}$ and $G^{3D}$ on their top 4 principal components before
#    `twin_probe`. Do the two heads now differ, and which twins does each keep?

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
# 3. the cross-correlation matrix $\hat F^\top \hat G$ with and without the loss (the distribution of its
#    entries and its singular values);
# 4. linear probes of $F^{3D}$, $G^{3D}$ and the trunk under them on the geometry-only and
#    appearance-only twins of notebook 00.
#
# Every sentence below about a measured number is rendered from the run or held by an `assert`; the
# runs are two lite epochs, a mechanics check, not converged models.
#
# Paper: Zhang & Hou, IJCV 2026, §3 (method figure); facts and the released code's choices:
# `docs/paper.md` §3.1, §4.2, §6.2. Defaults run in under two minutes on a 2-core CPU.

# %% tags=["parameters"]
preset = "lite"               # "lite": embedded data, CPU; "full": the paper's setting on real nuScenes
dataroot = None               # None: the embedded synthetic dataset
version = "v1.0-synthetic"    # full: "v1.0-trainval"
image_weights = None          # full: MoCo-v2 ResNet-50 weights path
pretrain_epochs = 2           # lite; None keeps the preset's (full: the paper's 10)
orth_weight = 0.1             # the paper's weight on L_orth (pretrain/lightning_trainer.py:229)
orth_2d = True                # L_orth on the 2D heads too (the paper's figure); False: the released code (3D only)
probe_alpha = 1.0             # ridge penalty of the linear probes
seed = 0
output_dir = "../outputs/03_decoupled_features"

# %%
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.linalg import hadamard

from cmcr_lite.classes import APPEARANCE_ONLY_TWINS, GEOMETRY_ONLY_TWINS, class_index
from cmcr_lite.cmcr import ABLATION_STEPS, CMCROptions
from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
from cmcr_lite.losses.orthogonality import orthogonality_loss
from cmcr_lite.notebook import start_notebook
from cmcr_lite.pretrain import build_image_encoder, build_model, pretrain
from cmcr_lite.viz import save_figure
from IPython.display import Markdown, display

t_start = time.perf_counter()
session = start_notebook(preset, dataroot, version, output_dir, seed, image_weights)
out = session.out


def config(name, options):
    """The preset's PretrainConfig for CMCR with ``options``. Decoupling alone reads no MIM masks, no
    occupancy queries and no superpixels; the config derives that from the options and leaves them out."""
    return session.pretrain_config(name, method="cmcr", cmcr=options, epochs=pretrain_epochs)


options = {"with L_orth": replace(ABLATION_STEPS["+ decoupling"], orth_weight=orth_weight, orth_2d=orth_2d),
           "without L_orth": replace(ABLATION_STEPS["+ decoupling"], orth_weight=0.0, orth_2d=orth_2d)}


def run_name(name, opt):
    """The run's output folder: the default configs keep their names, any other config gets its own
    folder, because `pretrain(resume=True)` refuses a checkpoint written with other config fields."""
    default = opt.orth_weight == (0.1 if name == "with L_orth" else 0.0) and opt.orth_2d
    return name if default else f"{name} (orth_weight {opt.orth_weight:g}, orth_2d {opt.orth_2d})"


train_kf = session.keyframes("train")
val_kf = session.keyframes("val", nusc=train_kf.nusc)
teacher = build_image_encoder(config("teacher", options["with L_orth"]))
print(train_kf, val_kf, sep="\n")

# %% [markdown]
# ## 1 · Two heads on each branch
#
# Both branches end in a trunk — the sparse MinkUNet in 3D, the frozen image network in 2D — and two
# 1×1 convolutions read it (`docs/paper.md` §3.1–3.2):
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
    """CMCR as `pretrain` builds it (`build_model`, which copies the teacher), from the same seed, so
    this is the starting point of both runs of §3 (MinkowskiEngine modules do not survive
    copy.deepcopy: build anew)."""
    torch.manual_seed(seed)
    return build_model(cfg, teacher)


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
# $N$ (the weight 0.1 was tuned for the released batch). In `CMCRModel` the term is
# `orthogonality_term`, which starts from `orth = orthogonality_loss(f3d, g3d)`; `forward` stores it as
# `terms["orth"]` and `term_weights()` gives it the weight `orth_weight`. With `orth_2d=True` (the
# paper's figure) the same loss on the 2D heads is added, at the trunk's resolution. Check on the
# batch above:

# %%
flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731  (B, D, h, w) -> (B*h*w, D)
with torch.no_grad():
    l_orth_3d = orthogonality_loss(f3d, g3d)                       # L_orth on the 3D branch
    l_orth_2d = orthogonality_loss(flat(f2d_low), flat(g2d_low))   # the figure's L_orth on the 2D branch
    terms = demo(batch, x, torch.Generator().manual_seed(seed))
print(f"L_orth 3D {l_orth_3d:.3f} ({len(f3d)} voxels), 2D {l_orth_2d:.3f} ({len(flat(f2d_low))} trunk pixels)")
print(f"L_NCE {terms['nce']:.3f}; L = L_NCE + {orth_weight} L_orth = {terms['loss']:.3f}")
assert torch.isclose(terms["orth"], l_orth_3d + (l_orth_2d if orth_2d else 0), rtol=1e-4)
assert torch.isclose(terms["loss"], terms["nce"] + orth_weight * terms["orth"], rtol=1e-5)
# bounds: 0 for orthogonal channel spaces, at most N * D / D^2 (each row adds a rank-one term of norm <= 1)
# (columns of a Hadamard matrix: orthogonal, and every row has the same norm, so row-normalising keeps them so)
h = torch.from_numpy(hadamard(8)).double()
assert orthogonality_loss(h[:, :4], h[:, 4:]) < 1e-12 and 0 < l_orth_3d <= len(f3d) / 64

# %% [markdown]
# ## 3 · Pretraining with and without $\mathcal{L}_\text{orth}$
#
# Two lite runs of CMCR with decoupling only (no codebook, MIM or occupancy): InfoNCE on $F$, plus
# $\mathcal{L}_\text{orth}$ with weight `orth_weight` (0.1) — or 0. With the weight at 0 the specific
# heads get a zero gradient; only AdamW's weight decay (0.01) shrinks them, so they stay their random
# initialisation up to a factor (asserted below), and the logged $\mathcal{L}_\text{orth}$ is only
# measured. Checkpoints are cached: a re-run loads them. The left panel shows both $\mathcal{L}_\text{NCE}$
# curves, the middle one their difference, which the left panel cannot resolve.

# %%
runs = {}
for name, opt in options.items():
    t0 = time.perf_counter()
    runs[name] = pretrain(config(run_name(name, opt), opt), resume=True, keyframes=train_kf, image_trunk=teacher,
                          progress=False)
    h = runs[name]["history"]
    print(f"{name:15s} ({time.perf_counter() - t0:4.1f} s)  L_NCE {[round(e['nce'], 3) for e in h]}  "
          f"L_orth {[round(e['orth'], 2) for e in h]}")
h_on, h_off = runs["with L_orth"]["history"], runs["without L_orth"]["history"]
ep = [e["epoch"] + 1 for e in h_on]
d_nce = np.array([a["nce"] - b["nce"] for a, b in zip(h_on, h_off)])
fig, ax = plt.subplots(1, 3, figsize=(12, 3))
for name, r in runs.items():
    ax[0].plot(ep, [e["nce"] for e in r["history"]], "o-", label=name)
    ax[2].plot(ep, [e["orth"] for e in r["history"]], "o-", label=name)
ax[1].bar(ep, d_nce, 0.5, color="0.4"); ax[1].axhline(0, color="k", lw=0.8)
ax[0].set_ylabel("L_NCE (nats)"); ax[1].set_ylabel("L_NCE with − without (nats)")
ax[2].set_ylabel("L_orth (3D + 2D, unitless)")
for a in ax:
    a.set_xlabel("epoch"); a.set_xticks(ep)
ax[0].legend(fontsize=8); ax[2].legend(fontsize=8)
save_figure(fig, out / "pretrain_terms.png")
assert all(np.isfinite(e["loss"]) for e in h_on + h_off)
assert h_on[-1]["orth"] < h_on[0]["orth"]          # the loss does what it asks
assert h_on[-1]["orth"] < h_off[-1]["orth"]        # and more than training without it
spec = lambda m: m.head3d_specific.kernel.detach().flatten()  # noqa: E731
cos_spec = torch.nn.functional.cosine_similarity(spec(runs["without L_orth"]["model"]), spec(init_model), dim=0)
assert cos_spec > 0.999                            # weight 0: G3d's head keeps its initial direction

# %%
rel = np.abs(d_nce).max() / h_off[-1]["nce"]
display(Markdown(
    f"With the loss, $\\mathcal{{L}}_\\text{{orth}}$ goes {h_on[0]['orth']:.2f} → {h_on[-1]['orth']:.2f} over "
    f"{len(ep)} epochs; without it (only measured) {h_off[0]['orth']:.2f} → {h_off[-1]['orth']:.2f}. "
    f"$\\mathcal{{L}}_\\text{{NCE}}$ with minus without: {', '.join(f'{d:+.3f}' for d in d_nce)} nats per epoch, "
    f"at most {rel:.1%} of $\\mathcal{{L}}_\\text{{NCE}}$: "
    + (f"at weight {orth_weight:g}, $\\mathcal{{L}}_\\text{{orth}}$ costs nothing measurable in the distillation loss."
       if rel < 0.01 else f"at weight {orth_weight:g} the two runs' distillation losses differ by more than 1 %, "
       f"{'higher' if d_nce[-1] > 0 else 'lower'} with $\\mathcal{{L}}_\\text{{orth}}$ at the last epoch.")
    + f" The specific head of the run without the loss keeps its initial direction (cosine {cos_spec:.4f} to "
      f"its random initialisation)."))

# %% [markdown]
# ## 4 · The cross-correlation matrix, before and after
#
# On the points of the `val` split (no augmentation) we compute
# $C = \hat F^\top \hat G / N$ — the matrix inside $\mathcal{L}_\text{orth}$, divided by the number
# of points so that entries lie in $[-1, 1]$ ($\mathcal{L}_\text{orth} = N\|C\|_F/D^2$;
# `probes.cross_correlation` returns $|C|$) — for the untrained model, the run without the loss and the
# run with it, in 3D (voxel features given to each point) and in 2D (pixels of the trunk's resolution).
# A heatmap of $|C|$ cannot show a change of a few per cent, so we draw the distribution of its $D^2$
# entries and its singular values $\sigma_1 \ge \dots \ge \sigma_D$, with $\|C\|_F^2 = \sum_i \sigma_i^2$.
# If the features of all points share a mean direction (they sit in a cone, not over the sphere),
# $C \approx \bar f\,\bar g^\top$ with $\bar f, \bar g$ the mean rows of $\hat F, \hat G$: a rank-one
# matrix, $\sigma_1 \approx \|\bar f\|\,\|\bar g\|$, seen in a heatmap as stripes.

# %%
from cmcr_lite.analysis.probes import cross_correlation, point_features

unit = lambda t: torch.nn.functional.normalize(t, dim=1)  # noqa: E731
models = {"random init": init_model, **{name: r["model"] for name, r in runs.items()}}
val_feats = {name: point_features(m, val_kf, cfg.pipeline.crop_size) for name, m in models.items()}
pair = lambda f, br: (f["shared" + br], f["specific" + br])  # noqa: E731
branches = {"3D": "", "2D": "_2d"}
corr = {(n, br): unit(pair(f, s)[0]).T @ unit(pair(f, s)[1]) / len(pair(f, s)[0])
        for n, f in val_feats.items() for br, s in branches.items()}
sv = {k: torch.linalg.svdvals(c) for k, c in corr.items()}
mean_norm = {(n, br): [unit(t).mean(0).norm().item() for t in pair(f, s)]   # |mean row of F^|, |mean row of G^|
             for n, f in val_feats.items() for br, s in branches.items()}
mean_term = {k: a * b for k, (a, b) in mean_norm.items()}
fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
for i, br in enumerate(branches):
    for name in models:
        c = corr[(name, br)]
        axes[i, 0].hist(c.abs().flatten().numpy(), bins=40, histtype="step", lw=1.5,
                        label=f"{name}: ||C||_F = {torch.linalg.matrix_norm(c):.3f}")
        axes[i, 1].semilogy(np.arange(1, len(sv[(name, br)]) + 1), sv[(name, br)].numpy(), ".-", label=name)
    axes[i, 0].set_yscale("log"); axes[i, 0].set_ylabel(f"{br}: entries of |C| (count of {c.numel()})")
    axes[i, 0].set_xlabel("|C_ab| (unitless)"); axes[i, 0].legend(fontsize=7)
    axes[i, 1].set_ylabel(f"{br}: singular value of C"); axes[i, 1].set_xlabel("index i"); axes[i, 1].legend(fontsize=7)
save_figure(fig, out / "cross_correlation.png")
norm = {k: torch.linalg.matrix_norm(c).item() for k, c in corr.items()}
for k, c in corr.items():
    print(f"{k[0]:15s} {k[1]}  ||C||_F {norm[k]:.3f}  max |C| {c.abs().max():.3f}  sigma_1 {sv[k][0]:.3f}  "
          f"sigma_1^2 / ||C||_F^2 {sv[k][0] ** 2 / norm[k] ** 2:.2f}  |mean f| |mean g| {mean_term[k]:.3f}")
assert all(torch.allclose(c.abs(), cross_correlation(*pair(val_feats[n], branches[br])), atol=1e-5)
           for (n, br), c in corr.items())
assert all(abs(sv[k].square().sum().sqrt().item() - norm[k]) < 1e-4 for k in corr)
assert norm[("with L_orth", "3D")] < norm[("without L_orth", "3D")]

# %%
drop = {br: 1 - norm[("with L_orth", br)] / norm[("without L_orth", br)] for br in branches}
top_share = {k: (sv[k][0] ** 2 / norm[k] ** 2).item() for k in corr}
rank_one = lambda br: min(top_share[(n, br)] for n in models)  # noqa: E731
display(Markdown(
    f"On validation points the loss never saw, $\\|C\\|_F$ of the run with $\\mathcal{{L}}_\\text{{orth}}$ is "
    f"{drop['3D']:.1%} lower than without it in 3D (asserted: lower) and {drop['2D']:.1%} lower in 2D, where only the "
    f"two 1×1 heads can move (the trunk under them is frozen). After {len(ep)} lite epochs at weight "
    f"{orth_weight:g} that is decorrelation, not orthogonality.\n\n" + "\n".join(
        f"* {br}: the top singular value carries at least {rank_one(br):.1%} of $\\|C\\|_F^2$ in the three models; "
        f"the mean rows have norms $\\|\\bar f\\|$ = "
        f"{', '.join(f'{mean_norm[(n, br)][0]:.2f}' for n in models)} and $\\|\\bar g\\|$ = "
        f"{', '.join(f'{mean_norm[(n, br)][1]:.2f}' for n in models)} (random init, with, without; 1 = every point "
        f"has the same direction), and $\\sigma_1 / \\|\\bar f\\|\\|\\bar g\\|$ = "
        f"{', '.join(f'{sv[(n, br)][0].item() / mean_term[(n, br)]:.2f}' for n in models)}."
        + (" $C$ is the outer product of the mean rows: the heads' features barely vary around one direction, "
           "and $\\mathcal{L}_\\text{orth}$ can only fall as far as they spread around zero mean per channel."
           if rank_one(br) > 0.9 and all(abs(sv[(n, br)][0].item() / mean_term[(n, br)] - 1) < 0.05 for n in models)
           else " $C$ is not just the product of the mean rows here: the features vary around them.")
        for br in branches)))

# %% [markdown]
# ## 5 · What does each head carry? Linear probes on the twins
#
# A ridge classifier (closed form, `probes.ridge_probe`) is fitted on the per-point features of the
# `train` scenes and scored on the `val` scene, separately for each twin pair of notebook 00:
# **geometry-only** twins render identically in the cameras and differ in a relief (the truck's
# ribbed panels) that only the LiDAR resolves; **appearance-only** twins have the same shape, differ
# in colour, and in the LiDAR only through an intensity shift (notebook 00 §7 measures both). Score: balanced accuracy of the pair (0.5 = chance), averaged over the
# pairs of a group. We probe $F^{3D}$, $G^{3D}$ and the trunk $z^{3D}$ both heads read.

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
for k, v in probes.items():
    assert all(np.isnan(a) or 0 <= a <= 1 for res in v.values() for a in res.values()), k
# G3d is a 1x1 convolution of the trunk: when the trunk is no wider than the head, the map is
# injective and a linear probe on G reads exactly what the trunk holds
if init_model.backbone.trunk_dim <= cfg.feature_dim:
    for name in models:
        for g in pairs:
            assert abs(group_mean[(name, "G3d")][g] - group_mean[(name, "trunk")][g]) < 0.02, (name, g)
trained = [n for n in models if n != "random init"]
rnd = group_mean[("random init", "trunk")]
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for i, name in enumerate(trained):
    ax.bar(np.arange(len(pairs)) + 0.3 * (i - 0.5), [group_mean[(name, "trunk")][g] for g in pairs], 0.3, label=name)
for j, g in enumerate(pairs):
    ax.hlines(rnd[g], j - 0.35, j + 0.35, color="k", lw=2, label="random init" if j == 0 else None)
ax.axhline(0.5, color="k", lw=0.8, ls="--", label="chance")
ax.set_xticks(range(len(pairs))); ax.set_xticklabels([f"{g} twins" for g in pairs])
ax.set_ylabel("balanced accuracy (fraction)"); ax.set_ylim(0.3, 1); ax.legend(fontsize=8, ncol=2)
ax.set_title(f"trunk features, one seed, {len(ep)} epochs (F3d and G3d read the same: table above)", fontsize=9)
save_figure(fig, out / "twin_probes.png")

# %% [markdown]
# **What the probes show.** The numbers of this run, read from the table above:

# %%
spread = {g: max(max(group_mean[(n, l)][g] for l in ("F3d", "G3d", "trunk"))
                 - min(group_mean[(n, l)][g] for l in ("F3d", "G3d", "trunk")) for n in models) for g in pairs}
keys = list(probes)
geometry_first = [k for k in keys if group_mean[k]["geometry-only"] > group_mean[k]["appearance-only"]]
nan_pairs = [f"{a}/{b}" for (a, b), acc in by_pair[("random init", "trunk")].items() if np.isnan(acc)]
moved = {g: np.mean([group_mean[(n, "trunk")][g] for n in trained]) - rnd[g] for g in pairs}
val_counts = {c: int((val_feats["random init"]["labels"] == class_index(c)).sum()) for c in ("car", "truck")}
order = ("geometry twins are told apart better than appearance twins" if len(geometry_first) == len(keys) else
         "appearance twins are told apart at least as well as geometry twins" if not geometry_first else
         "neither group is told apart better in every feature set")
dip = [f"{n} ({group_mean[(n, 'trunk')]['appearance-only'] - rnd['appearance-only']:+.3f})" for n in trained
       if group_mean[(n, "trunk")]["appearance-only"] < rnd["appearance-only"]]
display(Markdown(
    f"* Within one model, $F^{{3D}}$, $G^{{3D}}$ and the trunk differ by at most "
    f"{spread['geometry-only']:.3f} (geometry twins) and {spread['appearance-only']:.3f} (appearance twins) "
    f"in balanced accuracy.\n"
    f"* Geometry twins score above appearance twins for {len(geometry_first)} of the {len(keys)} feature sets: "
    f"{order}.\n"
    f"* The random-init trunk scores {rnd['geometry-only']:.3f} on geometry twins and "
    f"{rnd['appearance-only']:.3f} on appearance twins (0.5 = chance); the trained trunks move them by "
    f"{moved['geometry-only']:+.3f} and {moved['appearance-only']:+.3f} on average.\n"
    + (f"* The appearance-twin probe is *below* random init after {len(ep)} epochs for {', '.join(dip)}. These "
       f"trunks are read in eval mode with BatchNorm running statistics that still remember the start of a "
       f"short run, while random init's are the identity; notebook 02 §6 reads short runs both ways and shows "
       f"what such a dip is made of before anything is concluded from it.\n"
       if dip else "")
    + f"* The val scene holds {val_counts['car']:,} car and {val_counts['truck']:,} truck points; pairs "
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
# | $\mathcal{L}_{kl}$ on $G^{3D}$ | yes | **absent** | absent (cannot be recovered, `docs/paper.md` §6.2) |
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
# * Trained with the loss, the 3D cross-correlation on held-out points is lower than without it
#   (asserted in §4; §3–4 render by how much, and what it costs in $\mathcal{L}_\text{NCE}$). Most of
#   $C$ is the outer product of the two heads' mean directions.
# * Decorrelated is not the same as different content: a linear probe reads as much from $G^{3D}$
#   as from the trunk, because the head is a linear map of it. With decoupling alone, nothing tells
#   $G$ what to carry; notebooks 05–06 give it a job (reconstruction and occupancy).
# * Two lite epochs are a mechanics check: §5 renders where the twin probes land against random init.
#   A short run read in eval mode carries stale BatchNorm statistics (notebook 02 §6).
#
# **Exercises**
# 1. *Implement it yourself* (easy, 10 min): write $\mathcal{L}_\text{orth} = \|\hat F^\top\hat G\|_F/D^2$ in three lines
#    and check it against `orthogonality_loss` on the features `f3d`, `g3d` of §1. Hint: normalise the rows
#    with `t / t.norm(dim=1, keepdim=True)`, then `torch.linalg.matrix_norm(..., ord="fro")`. Expected: equal
#    to float precision; then check the bound of §2 ($\le N/D$) on your version. The check cell below holds
#    a solution; replace it with yours.
# 2. (easy, 10 min) Set `orth_weight = 1.0` in the parameters and rerun (the run gets its own output folder, so the
#    resume guard does not refuse it; about a minute on 2 cores). Hint: read the rendered sentences of §3
#    and §4. Expected: $\|C\|_F$ in 3D drops further below the run without the loss than at 0.1, and
#    $\mathcal{L}_\text{NCE}$ still barely moves. The check cell asserts the first when `orth_weight > 0.1`.
# 3. (easy, 10 min) Set `orth_2d = False` (the released code's choice) and rerun (own output folders again). Hint: with
#    $\mathcal{L}_\text{orth}$ on 3D only, nothing but the InfoNCE reaches the 2D heads. Expected: the 2D
#    $\|C\|_F$ of the two trained runs become close (the check asserts within 10 %), while the 3D ones still
#    differ.
# 4. (medium, 20 min) Give the probe less room: project $F^{3D}$ and $G^{3D}$ on their top 4 principal components (fitted on
#    `train`) before `twin_probe`. Hint: `torch.pca_lowrank(x, q=4)`, then `(x - mean) @ V`. Expected: both
#    heads lose most of what the full features give (the table of §5), and they still read alike: the
#    top directions of $F^{3D}$ and $G^{3D}$ are two linear views of the same trunk. The check cell below
#    runs it for the run with $\mathcal{L}_\text{orth}$ and asserts only that no projection beats the full
#    features by more than 0.05.

# %%
# Check for exercise 1 (a solution; replace it with yours)
def my_orthogonality(f, g):
    f, g = f / f.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
    return torch.linalg.matrix_norm(f.T @ g, ord="fro") / f.shape[1] ** 2


assert torch.isclose(my_orthogonality(f3d, g3d), orthogonality_loss(f3d, g3d), rtol=1e-5)
assert my_orthogonality(f3d, g3d) <= len(f3d) / f3d.shape[1]

# %%
# Checks for exercises 2 and 3 (they assert only when the parameters were changed)
if orth_weight > 0.1:
    assert drop["3D"] > 0, "a larger weight should lower ||C||_F in 3D below the run without L_orth"
if not orth_2d:
    assert abs(norm[("with L_orth", "2D")] / norm[("without L_orth", "2D")] - 1) < 0.1, norm
print(f"orth_weight {orth_weight:g}, orth_2d {orth_2d}: ||C||_F with / without L_orth: "
      f"3D {1 - drop['3D']:.3f}, 2D {1 - drop['2D']:.3f}")

# %%
# Check for exercise 4: top-4 principal components of each head (fitted on train), then the twin probes
def top4(train_x, val_x, q=4):
    mean = train_x.mean(0)
    _, _, v = torch.pca_lowrank(train_x - mean, q=q, center=False)
    return (train_x - mean) @ v, (val_x - mean) @ v


tr, va = train_feats["with L_orth"], val_feats["with L_orth"]
for key in ("shared", "specific"):
    xt, xv = top4(tr[key], va[key])
    res = {g: np.nanmean(list(twin_probe(xt, tr["labels"], xv, va["labels"], p, probe_alpha).values()))
           for g, p in pairs.items()}
    full = {g: group_mean[("with L_orth", "F3d" if key == "shared" else "G3d")][g] for g in pairs}
    print(f"top-4 PCs of {key:8s}: " + ", ".join(f"{g} twins {a:.3f} (all 64 channels: {full[g]:.3f})"
                                                 for g, a in res.items()))
    assert all(0 <= a <= full[g] + 0.05 for g, a in res.items())

# %% [markdown]
# # 06 · Occupancy estimation: what only the LiDAR knows
#
# Contrastive distillation teaches the 3D network what the camera also sees (notebook 02). CMCR's
# 3D-specific objective asks for something a camera does not measure: **where space is empty and
# where it is solid**. Every LiDAR return says that the ray from the sensor to it is free and that
# the space just behind it is occupied. CMCR borrows this self-supervision from ALSO (Boulch et al.,
# CVPR 2023): query points are drawn along the rays, and a small decoder must classify them from the
# features of the LiDAR points around them. Its input is the 3D **specific** features $G^{3D}$ plus the
# codebook-quantised **shared** features $\bar F^{3D}$; an intensity head rides along.
#
# You will learn how the query points are drawn, how the neighbourhood decoder and its two losses
# work, and what a short pretraining run with the `"+ occupancy"` ablation step learns: accuracy per
# query kind on a validation scan, and bird's-eye and 3D renderings of the predicted occupancy next
# to the LiDAR ground truth.
#
# **"Occupancy" here means implicit point-query occupancy along LiDAR rays: there is no voxel
# occupancy grid**, in the loss or in the labels, as in the released code (`docs/paper.md` §4.5). The
# paper's figure draws dense "occupancy ground truth", but the code (and ours) only ever labels
# points on rays. The grids in §6–§7 only *sample* the trained implicit function to draw it.
#
# Paper: Zhang & Hou, IJCV 2026, §3 (figure); facts in `docs/paper.md` §2 ("Occupancy query
# points"), §3.3 and §4.5. Code: `cmcr_lite/data/occupancy_queries.py`, `cmcr_lite/losses/occupancy.py`,
# `cmcr_lite/cmcr.py`, `cmcr_lite/analysis/occupancy.py`.

# %% tags=["parameters"]
preset = "lite"               # "lite": embedded data, CPU; "full": the paper's setting on real nuScenes
dataroot = None               # None: the embedded synthetic dataset
version = "v1.0-synthetic"    # full: "v1.0-trainval"
image_weights = None          # full: MoCo-v2 ResNet-50 weights path
pretrain_epochs = 3           # lite default; None keeps the preset's (full: the paper's 10)
decoder_steps = 150           # §5: steps of the decoder-only fit on frozen features (0 skips it)
use_converged = True          # lite: also read the bench's converged occupancy-only model (experiments/results/trunks/)
seed = 0
output_dir = "../outputs/06_occupancy"

# %%
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import torch

from cmcr_lite.cmcr import ABLATION_STEPS
from cmcr_lite.data.pipeline import PairedScanDataset, collate_pairs
from cmcr_lite.notebook import start_notebook
from cmcr_lite.pretrain import build_image_encoder, pretrain
from cmcr_lite.viz import save_figure

t_start = time.time()
session = start_notebook(preset, dataroot, version, output_dir, seed, image_weights)
out = session.out


def config():
    """The preset's CMCR PretrainConfig with the "+ occupancy" ablation step (no MIM: the config reads
    no image masks and no superpixels)."""
    return session.pretrain_config("cmcr_occupancy", method="cmcr", cmcr=ABLATION_STEPS["+ occupancy"],
                               epochs=pretrain_epochs)


cfg = config()
train_kf = session.keyframes("train")
val_kf = session.keyframes("val", nusc=train_kf.nusc)
print(f"{len(train_kf)} train / {len(val_kf)} val keyframes;",
      f"{cfg.pipeline.occupancy_queries} queries per scan, band {cfg.pipeline.occupancy_band} m,",
      f"radius {cfg.pipeline.occupancy_radius} m, neighbour cap {cfg.pipeline.occupancy_max_neighbours}")

# %% [markdown]
# ## 1 · Query points along the rays
#
# For a LiDAR point $p$ seen from the sensor at the origin, with unit ray $\hat p = p/\|p\|$ and
# $u \sim \mathcal U(0, 1)$ drawn per query, the band $b = 0.1$ m gives three kinds of queries, a third
# each (2,048 per scan in the paper: 684 / 682 / 682):
#
# | kind | position | label $y$ | intensity target |
# |---|---|---|---|
# | in | $p + b\,u\,\hat p$ (just behind the surface) | 1 (occupied) | intensity of $p$ |
# | out | $p - b\,u\,\hat p$ (just in front of it) | 0 (free) | intensity of $p$ |
# | out-far | $u\,p$ (anywhere on the ray) | 0 (free) | none ($-1$) |
#
# They are drawn on the un-augmented scan (sensor frame) and then rotated and flipped *with* the
# points, in one call of the augmentation (`transform_queries`). `sample_query_points` draws them:

# %%
from cmcr_lite.data.occupancy_queries import KIND_IN, KIND_OUT, KIND_OUT_FAR, sample_query_points
from cmcr_lite.analysis.occupancy import KIND_NAMES, queries_bev_figure

scan = val_kf[0]
xyz, intensity = scan.points[:, :3], scan.points[:, 3]
q = sample_query_points(xyz, intensity, np.random.default_rng(seed), n_queries=2048, band=0.1)
print({KIND_NAMES[k]: int((q["kind"] == k).sum()) for k in KIND_NAMES})
src = xyz[q["source_index"]]
along = np.einsum("ij,ij->i", q["queries"] - src, src / np.linalg.norm(src, axis=1, keepdims=True))  # metres
for k, name in KIND_NAMES.items():
    print(f"{name:8s} signed distance behind the surface along the ray: [{along[q['kind'] == k].min():+.3f}, "
          f"{along[q['kind'] == k].max():+.3f}] m")
assert [(q["kind"] == k).sum() for k in (KIND_IN, KIND_OUT, KIND_OUT_FAR)] == [684, 682, 682]
assert np.all((along[q["kind"] == KIND_IN] >= -1e-4) & (along[q["kind"] == KIND_IN] <= 0.1 + 1e-4))
assert np.all((along[q["kind"] == KIND_OUT] <= 1e-4) & (along[q["kind"] == KIND_OUT] >= -0.1 - 1e-4))
assert np.all(q["occupied"] == (q["kind"] == KIND_IN)) and np.all((q["intensity"] < 0) == (q["kind"] == KIND_OUT_FAR))

# zoom on a surface hit by an "in" query whose source point is a vehicle
from cmcr_lite.classes import class_index

vehicle = np.isin(scan.labels[q["source_index"]], [class_index(c) for c in ("car", "bus", "truck")])
cand = np.nonzero((q["kind"] == KIND_IN) & vehicle & (np.abs(src[:, :2]).max(1) < 15))[0]
zoom = tuple(src[cand[0], :2]) if len(cand) else None
# for the figure only: 10x denser queries, so that the 0.1 m bands are visible in the zoom
dense = sample_query_points(xyz, intensity, np.random.default_rng(seed + 1), n_queries=20480, band=0.1)
fig = queries_bev_figure(scan.points, dense["queries"], dense["kind"], centre=(0.0, 0.0), half_size=15.0,
                         zoom_centre=zoom, zoom_half=1.0)
fig.savefig(out / "queries_bev.png", dpi=80); plt.show()

# %% [markdown]
# (Drawn with 20,480 queries instead of 2,048, so the bands show.) Out-far queries (green) fill the
# free space between the sensor and every surface; in (red) and out (blue) queries sit in a 0.1 m
# band on either side of the hit, along the ray (dashed, right panel): in behind the surface, out in
# front of it. Most of the scan is
# ground, so most queries straddle the road.
#
# ## 2 · The neighbourhood decoder and its two losses
#
# A query $q$ is decoded from every LiDAR point $p_j$ within $r = 1$ m of it (same scan; a k-d tree,
# `scipy.spatial.cKDTree.query_ball_point`). Each *pair* $(q, j)$ goes through one MLP $D$
# (Linear 67→128, [ReLU, Linear 128→128]×2, ReLU, Linear 128→2) whose input is the latent of $p_j$'s
# voxel $v(j)$ and the relative position:
#
# $$z_j = G^{3D}_{v(j)} + \bar F^{3D}_{v(j)}, \qquad
#   (o_{qj}, \hat\iota_{qj}) = D\big([\,z_j \,\|\, q - p_j\,]\big).$$
#
# With $E$ the set of pairs, $y_q$ the query's label and $\iota_q$ its intensity target (raw, /255):
#
# $$\mathcal L_\text{occ} = \frac{1}{|E|}\sum_{(q,j)\in E} \mathrm{BCE}\big(\sigma(o_{qj}),\, y_q\big), \qquad
#   \mathcal L_\text{int} = \frac{1}{|E_\iota|}\sum_{(q,j)\in E_\iota} \big|\hat\iota_{qj} - \iota_q/255\big|,$$
#
# where $E_\iota$ keeps the pairs of in and out queries. As in ALSO, **every pair** is scored against
# its query's label: nothing is averaged over neighbours before the loss (`aggregate=None`). Both
# weights are 1. The code: `neighbourhood_pairs` → `OccupancyDecoder.forward_pairs` → `occupancy_losses`.

# %%
from cmcr_lite.losses.occupancy import OccupancyDecoder, neighbourhood_pairs, occupancy_losses

qi, pi = neighbourhood_pairs(q["queries"], xyz, radius=1.0)
counts = np.bincount(qi.numpy(), minlength=len(q["queries"]))
for k, name in KIND_NAMES.items():
    c = counts[q["kind"] == k]
    print(f"{name:8s} neighbours within 1 m: median {np.median(c):5.0f}, none for {100 * (c == 0).mean():4.1f} % of queries")
# brute force for a few queries: the k-d tree finds exactly the points within 1 m
for i in np.linspace(0, len(q["queries"]) - 1, 6).astype(int):
    brute = np.nonzero(np.linalg.norm(xyz - q["queries"][i], axis=1) <= 1.0)[0]
    assert np.array_equal(np.sort(pi[qi == i].numpy()), brute)
assert counts[q["kind"] != KIND_OUT_FAR].min() >= 1   # an in/out query lies within 0.1 m of its own point

torch.manual_seed(seed)
dec = OccupancyDecoder(latent_dim=64)
print(dec)
pred = dec.forward_pairs(torch.randn(len(xyz), 64), torch.from_numpy(q["queries"]), torch.from_numpy(xyz), qi, pi)
losses = occupancy_losses(pred, torch.from_numpy(q["occupied"]), torch.from_numpy(q["intensity"]), qi)
print(f"{len(qi)} pairs -> pred {tuple(pred.shape)}; untrained: L_occ {losses['occupancy']:.3f} "
      f"(log 2 = {np.log(2):.3f}), L_int {losses['intensity']:.3f}")
assert pred.shape == (len(qi), 2) and abs(losses["occupancy"].item() - np.log(2)) < 0.2

fig, ax = plt.subplots(figsize=(6.5, 3))
bins = np.concatenate([[0], np.logspace(0, np.log10(max(counts.max(), 2) + 1), 30)])  # log x: a long tail
for k, name in KIND_NAMES.items():
    ax.hist(np.maximum(counts[q["kind"] == k], 0.5), bins=np.maximum(bins, 0.5), alpha=0.6, label=name)
ax.axvline(32, color="k", ls="--", lw=0.9, label="cap: 32 neighbours kept")
ax.set_xscale("log")
ax.set_xlabel("neighbours within 1 m (points; 0 drawn at 0.5)"); ax.set_ylabel("queries"); ax.legend(fontsize=8)
save_figure(fig, out / "neighbour_counts.png")

# %% [markdown]
# In/out queries sit on surfaces, so they always have neighbours (often hundreds on the dense
# ground). Every preset keeps at most 32 per query, as the official code does without saying so: it
# calls `torch_geometric.nn.radius` without `max_num_neighbors`, so PyG's default of 32 applies, and
# that search keeps the first 32 points in index order (not the nearest).
# `pipeline.occupancy_max_neighbours="all"` keeps every neighbour, `occupancy_neighbour_pick="random"`
# a uniform subset.
# Out-far queries high up a ray have none: they get no prediction and no loss. The pair-level loss
# also weights a query by its number of neighbours.
#
# ## 3 · Pretraining with the occupancy objective
#
# The `"+ occupancy"` ablation step of notebook 07: PPKT's InfoNCE, decoupled shared and specific heads
# with $\mathcal L_\text{orth}$, the unified codebook, and $\mathcal L_\text{occ} + \mathcal L_\text{int}$
# (no MIM). The checkpoint is cached: rerunning the notebook reloads it.

# %%
t0 = time.time()
teacher = build_image_encoder(cfg)
run = pretrain(cfg, resume=True, keyframes=train_kf, image_trunk=teacher, progress=False)
model, hist = run["model"].eval(), run["history"]
print(f"pretraining: {time.time() - t0:.0f} s, {sum(h['steps'] for h in hist)} steps")
for h in hist:
    print(f"epoch {h['epoch'] + 1}: loss {h['loss']:.3f}  nce {h['nce']:.3f}  occupancy {h['occupancy']:.4f}  "
          f"intensity {h['intensity']:.4f}")
fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
# the total includes L_CMCM, which stays near log M in a short run, so the total's level says little
for ax, k, unit in zip(axes, ("loss", "occupancy", "intensity"), ("total (incl. L_CMCM ≈ log M)", "BCE (nats)",
                                                                 "L1 (intensity/255)")):
    ax.plot([h["epoch"] + 1 for h in hist], [h[k] for h in hist], "o-")
    ax.set_title(k); ax.set_xlabel("epoch"); ax.set_ylabel(unit)
    ax.xaxis.get_major_locator().set_params(integer=True)
axes[1].axhline(np.log(2), ls="--", c="0.5", label="log 2 (chance)"); axes[1].legend(fontsize=8)
save_figure(fig, out / "pretrain_terms.png")
assert all(np.isfinite(h[k]) for h in hist for k in ("loss", "occupancy", "intensity"))
assert hist[-1]["loss"] < hist[0]["loss"]
assert hist[-1]["occupancy"] < 0.75   # not diverged (chance is log 2 = 0.693)

# %% [markdown]
# ## 4 · Occupancy accuracy per query kind, on a validation scan
#
# A fresh set of 2,048 queries on the un-augmented validation scan. *Pair accuracy* is what the loss
# trains (the sign of every (query, neighbour) logit); *query accuracy* first averages each query's
# logits over its neighbours. The reference is the trivial "everything is free" answer, right on
# every out and out-far query and wrong on every in query.

# %%
from IPython.display import Markdown, display

from cmcr_lite.analysis.occupancy import accuracy_per_kind, predict_queries

val_pipe = replace(cfg.pipeline, augment=False, occupancy_queries=2048)
val_item = PairedScanDataset(val_kf, val_pipe, seed=seed)[0]
val_batch = collate_pairs([val_item])
cap = cfg.pipeline.occupancy_max_neighbours


def accuracy_table(name, decoder=None, of=None):
    """Predict every (query, neighbour) pair of the val scan with the model ``of`` (default: this
    notebook's), print and return accuracy per kind."""
    p = predict_queries(model if of is None else of, val_batch, decoder=decoder)  # the pipeline's neighbourhoods, as in training
    acc = accuracy_per_kind(p["pred"], val_item["query_occupied"], val_item["query_kind"], p["query_index"])
    print(f"{name}\n{'kind':8s} {'queries':>7s} {'w/ nbrs':>7s} {'pairs':>6s} {'pair acc':>8s} {'query acc':>9s} "
          f"{'pred occ':>8s} {'all free':>8s}")
    for k, r in acc.items():
        print(f"{k:8s} {r['queries']:7d} {r['with_neighbours']:7.2f} {r['pairs']:6d} {r['pair_accuracy']:8.3f} "
              f"{r['query_accuracy']:9.3f} {r['predicted_occupied']:8.3f} {r['all_free_accuracy']:8.3f}")
    assert all(0 <= r["pair_accuracy"] <= 1 and 0 <= r["query_accuracy"] <= 1 for r in acc.values())
    assert acc["in"]["with_neighbours"] == acc["out"]["with_neighbours"] == 1.0
    return p, acc


pred_pre, acc_pre = accuracy_table(f"pretrained head ({len(hist)} epochs)")
print(f"the pretrained head calls {100 * acc_pre['all']['predicted_occupied']:.1f} % of pairs occupied; "
      f"pair accuracy {acc_pre['all']['pair_accuracy']:.3f} vs {acc_pre['all']['all_free_accuracy']:.3f} for 'all free'")

# %% [markdown]
# Read the `pred occ` column first: it is the fraction of pairs the head calls occupied. A head that
# has learnt only the class prior answers "free" everywhere: right on out and out-far queries, wrong
# on in queries, exactly the "all free" column. What this run's head does, rendered:

# %%
steps = sum(h["steps"] for h in hist)
occ_pre, beats = acc_pre["all"]["predicted_occupied"], acc_pre["all"]["pair_accuracy"] > acc_pre["all"]["all_free_accuracy"] + 0.01
display(Markdown(
    f"After {steps} optimiser steps the occupancy loss is {hist[-1]['occupancy']:.3f} (log 2 = {np.log(2):.3f}); the head "
    f"calls {100 * occ_pre:.1f} % of the pairs occupied and its pair accuracy is {acc_pre['all']['pair_accuracy']:.3f} "
    f"against {acc_pre['all']['all_free_accuracy']:.3f} for \"all free\": "
    + ("it does better than the class prior." if beats else
       "it has learnt the class prior, not the geometry.")
    + " The released code runs 10 epochs of about 2,300 steps on real nuScenes."))

# %% [markdown]
# ### The same table for a converged occupancy model
#
# A few lite epochs are the start of the curve. The bench pretrained **occupancy only** (the
# occupancy and intensity losses alone, no InfoNCE: its LiDAR-only positive control) for 20 epochs on
# a 30-scene set of the same world, and its seed-0 model is committed (`experiments/results/trunks/`,
# written by `python -m experiments trunks`). Read on the same validation scan, with the same queries:

# %%
from cmcr_lite.pretrain import load_pretrained_model
from experiments.trunks import trunk_file

converged_file = trunk_file("occupancy only")
converged_model = None
if use_converged and preset == "lite" and converged_file.is_file():
    converged_model = load_pretrained_model(converged_file, teacher)[0]
    pred_conv, acc_conv = accuracy_table("occupancy only, converged (bench, 20 epochs)", of=converged_model)
    a_conv = acc_conv["all"]
    display(Markdown(
        f"The converged head calls {100 * a_conv['predicted_occupied']:.1f} % of the pairs occupied; its pair accuracy "
        f"is {a_conv['pair_accuracy']:.3f} against {a_conv['all_free_accuracy']:.3f} for \"all free\", and it calls "
        f"{100 * acc_conv['in']['query_accuracy']:.0f} % of the in queries occupied: "
        + ("occupancy *is* learnt when it is trained long enough and alone." if a_conv["pair_accuracy"] >
           a_conv["all_free_accuracy"] + 0.01 else "even the converged head does not beat the prior on this scan.")))
else:
    print(f"{converged_file} not used: run `python -m experiments trunks`, or set use_converged=True")

# %% [markdown]
# ## 5 · Is it learnable from these features? A decoder-only fit
#
# A diagnostic of ours, not part of CMCR: freeze the pretrained 3D network, compute the latents
# $z_j$ of every training scan once, and train a **copy** of the occupancy decoder alone for
# `decoder_steps` steps (same loss, same learning rate, one scan per step; 1,024 queries with at most
# 8 neighbours each, to keep the steps cheap). If the copy learns to
# separate in from out on the validation scan, the flat answer of §4 is a matter of training length,
# not of what the features or the head can express.

# %%
from cmcr_lite.analysis.occupancy import fit_decoder, frozen_query_scans



def decoder_fit(max_neighbours=8):
    """(a copy of the occupancy decoder fitted for ``decoder_steps`` steps on frozen latents, its history,
    the number of train scans): 1,024 queries of at most ``max_neighbours`` neighbours each, cheap steps."""
    fit_pipe = replace(cfg.pipeline, augment=False, occupancy_queries=1024, occupancy_max_neighbours=max_neighbours)
    scans = frozen_query_scans(model, PairedScanDataset(train_kf, fit_pipe, seed=seed))
    torch.manual_seed(seed)
    return (*fit_decoder(model.occupancy_decoder, scans, decoder_steps, lr=cfg.lr), len(scans))


fitted_decoder = None
if decoder_steps > 0:
    t0 = time.time()
    fitted_decoder, fit_hist, n_scans = decoder_fit()
    print(f"decoder-only fit: {time.time() - t0:.0f} s for {decoder_steps} steps")
    occ_curve = np.array([h["occupancy"] for h in fit_hist])
    smooth = np.convolve(occ_curve, np.ones(n_scans) / n_scans, mode="valid")  # mean over one pass
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.plot(occ_curve, lw=0.8, alpha=0.5, label="per step")
    ax.plot(np.arange(len(smooth)) + n_scans - 1, smooth, label=f"mean over {n_scans} scans")
    ax.axhline(np.log(2), ls="--", c="0.5", label="log 2")
    ax.set_xlabel("decoder-only step"); ax.set_ylabel("L_occ (BCE, nats)"); ax.legend(fontsize=8)
    save_figure(fig, out / "decoder_fit.png")
    assert np.all(np.isfinite(occ_curve))
    pred_fit, acc_fit = accuracy_table(f"decoder fitted on frozen features ({decoder_steps} steps)", fitted_decoder)
    assert model.occupancy_decoder is not fitted_decoder     # a copy: the pretrained head is untouched

# %%
if fitted_decoder is not None:
    a_fit, a_pre = acc_fit["all"], acc_pre["all"]
    display(Markdown(
        f"Decoder-only fit, {decoder_steps} steps: pair accuracy {a_fit['pair_accuracy']:.3f} against "
        f"{a_fit['all_free_accuracy']:.3f} for \"all free\" (the pretrained head: {a_pre['pair_accuracy']:.3f}); "
        f"in queries called occupied: {100 * acc_fit['in']['query_accuracy']:.0f} % at the query level, out "
        f"queries called free: {100 * acc_fit['out']['query_accuracy']:.0f} %. "
        + ("The frozen features carry enough to beat the prior." if a_fit["pair_accuracy"] >
           a_fit["all_free_accuracy"] + 0.01 else "Even the fit does not beat the prior on this scan.")))

# %% [markdown]
# ## 6 · Bird's-eye view of the predicted occupancy
#
# To *draw* the implicit function, we query it on a regular grid: every cell centre at one height
# becomes a query, its neighbours within 1 m are decoded and their logits averaged
# (`occupancy_grid`). The slice is 0.85 m above the road (the sensor sits at 1.84 m, the road at
# $z \approx -1.85$ m), through car bodies, walls and trunks. Grey cells have no LiDAR point within
# 1 m: the decoder has nothing to say there. Each head decodes its own model's latents.

# %%
from cmcr_lite.losses.occupancy import grid_centres, occupancy_grid
from cmcr_lite.analysis.occupancy import occupancy_bev_figure

points = val_item["points"][:, :3]
z_bev, bounds, res = -1.0, ((-15.0, 15.0), (-15.0, 15.0)), 0.25
heads = {"pretrained head": (model.occupancy_decoder, pred_pre["latents"])}  # name -> (decoder, its latents)
if fitted_decoder is not None:
    heads["decoder-only fit"] = (fitted_decoder, pred_pre["latents"])
if converged_model is not None:
    heads["occupancy only, converged"] = (converged_model.occupancy_decoder, pred_conv["latents"])
probs = {name: occupancy_grid(d, z, points, bounds, res, z=z_bev, radius=1.0, max_neighbours=cap)
         for name, (d, z) in heads.items()}
for name, prob in probs.items():
    print(f"{name:26s} P(occupied) over cells with neighbours: min {np.nanmin(prob):.2f}, "
          f"median {np.nanmedian(prob):.2f}, max {np.nanmax(prob):.2f}; no neighbour: {100 * np.isnan(prob).mean():.0f} % of cells")
    assert prob.shape == (120, 120) and np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1
fig = occupancy_bev_figure(val_item["points"], val_item["labels"], probs, bounds, z=z_bev, dz=0.25,
                           title="validation scan, 30 m x 30 m around the sensor")
fig.savefig(out / "occupancy_bev.png", dpi=80); plt.show()
called = {name: float(np.nanmean(prob > 0.5)) for name, prob in probs.items()}
display(Markdown("Cells called occupied (P > 0.5) among those with neighbours: " + "; ".join(
    f"{name} {100 * c:.1f} %" + (" (none: it marks no object occupied)" if c == 0 else "") for name, c in called.items())
    + "."))

# %% [markdown]
# ## 7 · A vertical slice in 3D, next to the labelled points
#
# The same function on a vertical plane through the sensor ($y = 0$, 0.25 m cells), drawn inside the
# labelled point cloud (plotly: rotate, zoom, click a class to hide it). The slice uses the converged
# occupancy-only model when it is there, else the decoder-only fit when §5 ran, else the pretrained
# head; holes are cells with no point within 1 m.
# The rays label the space just below the road "occupied" and the space above it "free": the two
# printed means say how much of that contrast the head reproduces.

# %%
from cmcr_lite.analysis.occupancy import occupancy_slice_3d_figure

slice_name = next(n for n in ("occupancy only, converged", "decoder-only fit", "pretrained head") if n in heads)
vbounds = ((-15.0, 15.0), (-0.125, 0.125), (-3.0, 1.0))
vol = occupancy_grid(*heads[slice_name], points, vbounds, res, radius=1.0, max_neighbours=cap)
xs, _, zs = grid_centres(vbounds, res)
slice_prob = vol[:, 0, :]
below, above = slice_prob[:, zs < -2.0], slice_prob[:, (zs > -1.6) & (zs < -1.0)]
print(f"{slice_name}: mean P(occupied) just below the road {np.nanmean(below):.2f}, "
      f"0.25-0.85 m above it {np.nanmean(above):.2f}")
assert vol.shape == (len(xs), 1, len(zs)) == (120, 1, 16)
fig3d = occupancy_slice_3d_figure(val_item["points"], val_item["labels"], slice_prob, xs, zs, y=0.0,
                                  bounds_xy=bounds[:2], title=f"P(occupied) on the plane y = 0 ({slice_name}) and the labelled points")
fig3d.write_html(out / "occupancy_slice_3d.html", include_plotlyjs="cdn")
fig3d.show()
print(f"notebook runtime so far: {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Summary
#
# * CMCR's occupancy is ALSO's: **implicit, point-query occupancy along LiDAR rays**, 2,048 queries a
#   scan in a ±0.1 m band around each hit plus free-space queries on the rays; no voxel grid. Each
#   (query, neighbour within 1 m) pair is classified from $G^{3D} + \bar F^{3D}$ of the neighbour and the
#   relative position, with a BCE per pair and an L1 on intensity.
# * The short lite pretraining (§3–§4) is at the very start of the occupancy curve; §4 says, from its
#   numbers, whether the head has learnt more than the class prior.
# * The decoder-only fit (§5) asks whether the task is learnable from the frozen features at all, and
#   the bench's converged occupancy-only model (§4, §6–§7) shows what a head trained long enough, and
#   alone, does; both are rendered above.
# * That is a statement about the head and these features, not evidence that occupancy pretraining
#   improves the 3D network; notebook 07's bench measures that (its "occupancy only" row).

# %% [markdown]
# **Exercises**
# 1. *Implement it yourself* (easy, 10 min): the pair-level occupancy BCE of §2, $\frac{1}{|E|}\sum_{(q,j)\in E}
#    \text{BCE}(\sigma(o_{qj}), y_q)$ (each pair against its query's label), in two lines on the untrained
#    decoder's `pred` and the query labels of §2, checked against `occupancy_losses(...)["occupancy"]`.
#    Hint: `F.binary_cross_entropy_with_logits(pred[:, 0], labels[qi])`. The check cell below holds a
#    solution; replace it with yours.
# 2. (easy, 10 min) Set `pretrain_epochs = 12` and `decoder_steps = 0` (the run continues from its
#    checkpoint). Hint: watch the `pred occ` column of §4. Expected: the occupancy loss keeps falling below
#    $\log 2$ (the check cell asserts it once `pretrain_epochs >= 12`); whether the head starts calling in
#    queries occupied within these few dozen steps is what to look for (the converged model of §4 does).
# 3. (medium, 15 min) In §5, fit with `decoder_fit(max_neighbours=4)` (fewer neighbours per query).
#    Expected: the fit still beats "all free"; fewer neighbours mean a noisier average per query, so watch
#    the query accuracy of the in queries. The check cell below runs that fit and asserts the first part.

# %%
# Check for exercise 1 (a solution; replace it with yours)
import torch.nn.functional as F

labels = torch.from_numpy(q["occupied"]).float()
mine = F.binary_cross_entropy_with_logits(pred[:, 0], labels[qi])
assert torch.isclose(mine, losses["occupancy"], atol=1e-6)

# %%
# Check for exercise 2 (runs once pretrain_epochs >= 12)
if pretrain_epochs is not None and pretrain_epochs >= 12:
    assert hist[-1]["occupancy"] < np.log(2), hist[-1]["occupancy"]
    print(f"occupancy loss {hist[-1]['occupancy']:.3f} < log 2 = {np.log(2):.3f}")
else:
    print(f"pretrain_epochs = {pretrain_epochs}: set it to 12 and rerun to check exercise 2")

# %%
# Check for exercise 3: the decoder-only fit with at most 4 neighbours per query
if decoder_steps > 0:
    decoder4 = decoder_fit(max_neighbours=4)[0]
    _, acc4 = accuracy_table("decoder fitted with at most 4 neighbours per query", decoder4)
    print(f"4 neighbours: pair accuracy {acc4['all']['pair_accuracy']:.3f} (all free {acc4['all']['all_free_accuracy']:.3f}), "
          f"in queries called occupied {100 * acc4['in']['query_accuracy']:.0f} % (8 neighbours: "
          f"{100 * acc_fit['in']['query_accuracy']:.0f} %)")
    assert acc4["all"]["pair_accuracy"] > acc4["all"]["all_free_accuracy"]

# %% [markdown]
# # 00 · The data: nuScenes keyframes, point↔pixel pairs, superpixels and voxels
#
# Image-to-LiDAR distillation (PPKT, SLidR, and CMCR after them) learns a 3D network by making the
# features of a LiDAR point agree with the features of the pixel it projects to. Everything
# therefore starts with **pairs**: which point lands on which pixel of which camera. This notebook
# walks one keyframe from the files on disk to a training batch:
#
# 1. the nuScenes format, table by table, through the official `nuscenes-devkit`;
# 2. a LiDAR sweep in 3D, coloured by its 16-class labels;
# 3. the projection into the six cameras (and a check against the devkit's own projection);
# 4. SLIC superpixels (the units of SLidR's loss);
# 5. sparse voxels and what they do to labels;
# 6. augmentations and MIM masking that keep pairs consistent (and the official code's masking bug);
# 7. the embedded dataset's *twins*: classes that differ only in geometry or only in appearance —
#    the distinction the CMCR paper is about.
#
# Paper: Zhang & Hou, *Is Contrastive Distillation Enough for Learning Comprehensive 3D
# Representations?* (IJCV 2026), §3 (data pipeline inherited from SLidR). At its defaults it reads the
# embedded synthetic dataset and, like every notebook of the course (README), runs on a 2-core CPU in
# a minute or two at most; point `dataroot` and `version` at a real nuScenes copy (`v1.0-mini` or
# `v1.0-trainval`) to run it on real data.

# %% tags=["parameters"]
dataroot = None            # None: the embedded synthetic dataset (generated on first use)
version = "v1.0-synthetic" # real data: "v1.0-mini" or "v1.0-trainval"
split = "all"              # "all", "train", "val" (+ "teacher" on the synthetic set)
keyframe_index = 0
max_points_3d = 15000      # points drawn in the interactive 3D view
output_dir = "../outputs/00_data"
seed = 0

# %%
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cmcr_lite.classes import CLASS_NAMES_16, class_group
from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
from cmcr_lite.paths import ensure_embedded_dataset
from cmcr_lite.viz import save_figure

warnings.filterwarnings("ignore", message=".*CPU_ONLY.*")
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
if dataroot is None:
    dataroot = ensure_embedded_dataset()
keyframes = NuScenesKeyframes(dataroot, version, split=split)
nusc = keyframes.nusc  # the devkit's NuScenes object: everything below reads through it
print(keyframes)

# %% [markdown]
# ## 1 · The nuScenes format, table by table
#
# A nuScenes version folder holds JSON tables of records linked by `token`s. A **scene** is a
# drive (20 seconds on nuScenes; the synthetic scenes are shorter, see the durations below); it points to its first **sample** (a *keyframe*, every 0.5 s); a sample's `data`
# maps each sensor channel to a **sample_data** record (one file: a `.pcd.bin` sweep or a `.jpg`
# image), which points to its **calibrated_sensor** (sensor → ego transform, camera intrinsics)
# and its **ego_pose** (ego → global transform *at that sensor's timestamp*). Labels for LiDAR
# segmentation live in `lidarseg/<version>/<lidar token>_lidarseg.bin`, one `uint8` per point. Objects
# (the `instance` and `sample_annotation` tables of boxes, counted as `#anns` below, and the
# nuScenes-panoptic labels) are notebook 09's subject.

# %%
nusc.list_scenes()
scene = nusc.scene[0]
sample = nusc.get("sample", scene["first_sample_token"])
print("sample keys:", sorted(sample))
print("channels of a keyframe:", sorted(sample["data"]))
lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
cam_sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
for name, rec in [("LIDAR_TOP sample_data", lidar_sd), ("CAM_FRONT sample_data", cam_sd),
                  ("CAM_FRONT calibrated_sensor", nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])),
                  ("CAM_FRONT ego_pose", nusc.get("ego_pose", cam_sd["ego_pose_token"]))]:
    print(f"\n{name}:")
    for k, v in rec.items():
        print(f"  {k:24s} {v}")
print("\nLiDAR and camera timestamps differ by", (cam_sd["timestamp"] - lidar_sd["timestamp"]) / 1e3, "ms")

# %% [markdown]
# **The splits.** The synthetic sets name their scenes' roles in `cmcr_splits.json`: `teacher` scenes
# train only the small 2D teacher (the 3D network never sees them), `train` scenes pretrain the 3D
# network and fit the probes, `val` scenes score them. Real nuScenes uses the devkit's splits.

# %%
import json
from pathlib import Path

splits_file = Path(keyframes.dataroot) / "cmcr_splits.json"
if splits_file.is_file():
    by_name = {s["name"]: s["nbr_samples"] for s in nusc.scene}
    for role, names in json.loads(splits_file.read_text()).items():
        print(f"{role:8s} {len(names)} scenes, {sum(by_name[n] for n in names)} keyframes: {', '.join(names)}")
else:
    print("no cmcr_splits.json: the devkit's train / val split applies")

# %% [markdown]
# ## 2 · One LiDAR sweep in 3D
#
# `NuScenesKeyframes[i]` reads a keyframe through the devkit: `LidarPointCloud.from_file` for the
# points (x, y, z in metres in the LiDAR frame, intensity), the lidarseg labels mapped from the
# 32 fine classes to the 16 challenge classes by the devkit's `LidarsegClassMapper`, and the six
# JPEGs. Rotate the view; click a class in the legend to hide it.

# %%
kf = keyframes[keyframe_index]
print(f"points {kf.points.shape}, labels {kf.labels.shape}, images {kf.images.shape}, "
      f"pairs {kf.pair_points.shape}")
counts = np.bincount(kf.labels, minlength=17)
for k in np.nonzero(counts)[0]:
    print(f"  {CLASS_NAMES_16[k]:22s} {counts[k]:6d} points   ({class_group(CLASS_NAMES_16[k])})")
assert kf.points.dtype == np.float32 and kf.points.shape[1] == 4 and len(kf.labels) == len(kf.points)

# %%
from cmcr_lite.viz import class_colours, points_3d_figure

fig3d = points_3d_figure(kf.points, kf.labels, max_points=max_points_3d, seed=seed)
fig3d.write_html(out / "sweep_3d.html", include_plotlyjs="cdn")
fig3d.show()

# %% [markdown]
# ## 3 · Projecting points into the six cameras
#
# A LiDAR point $p$ reaches pixel $(u, v)$ of camera $c$ through five transforms:
#
# $$\tilde p_c = T^{c \leftarrow e}_{\text{calib}}\; T^{e \leftarrow g}_{t_c}\; T^{g \leftarrow e}_{t_\ell}\;
#   T^{e \leftarrow \ell}_{\text{calib}}\; \tilde p, \qquad
#   \begin{pmatrix} u \\ v \\ 1 \end{pmatrix} = \frac{1}{z_c} K \,p_c$$
#
# where $t_\ell$ and $t_c$ are the LiDAR's and the camera's timestamps: the ego moves between
# them, so the two ego poses differ. A pair is kept when the depth $z_c > 1$ m and the pixel falls
# inside the image (with the devkit's 1-pixel margin). `project_points_to_cameras` composes the chain
# into one 4×4 matrix per camera and projects all six cameras in one batched product.

# %%
from cmcr_lite.data.projection import project_points_to_cameras

T, K, sizes = keyframes.projection_inputs(keyframes.lidar_record(kf.sample_token),
                                          keyframes.camera_records(kf.sample_token))
pair_points, pair_pixels, uv = project_points_to_cameras(kf.points[:, :3], T, K, sizes, min_depth=1.0)
print(f"{len(pair_points)} pairs from {len(kf.points)} points; "
      f"{len(np.unique(pair_points))} points are seen by at least one camera")

# %%
from cmcr_lite.viz import projections_figure

fig = projections_figure(kf.images, pair_pixels, kf.labels[pair_points], kf.camera_names, colours=class_colours(),
                         title="LiDAR points projected into the six cameras, coloured by class")
fig.savefig(out / "projections.png", dpi=80)
plt.show()

# %% [markdown]
# **Check against the devkit.** `nusc.explorer.map_pointcloud_to_image` is the devkit's own
# reference projection (one camera at a time, with a Python loop over transforms). Ours must keep
# the same points and land within half a pixel. The one allowed difference: a point that sits
# within a hundredth of a pixel of the 1-pixel margin (or of the 1 m depth limit) may fall on the
# other side of it, because the two chains round differently (ours is one float32 product, the
# devkit's four transforms through the global frame, hundreds of metres from the origin).

# %%
from scipy.spatial import cKDTree

for c, cam_token in enumerate(kf.camera_tokens):
    ref_uv = nusc.explorer.map_pointcloud_to_image(kf.lidar_token, cam_token)[0][:2].T
    ours = uv[pair_pixels[:, 0] == c]
    w, h = sizes[c]
    # |devkit - ours| from each side: every point one kept has a match within 0.5 px in the other...
    err_ours, _ = cKDTree(ref_uv).query(ours)
    err_ref, _ = cKDTree(ours).query(ref_uv)
    # ...or lies on the margin, where rounding decides (0.02 px is ample for float32 at 2 km)
    on_margin = lambda p: (np.abs(p[:, 0] - 1) < 0.02) | (np.abs(p[:, 0] - (w - 1)) < 0.02) | \
        (np.abs(p[:, 1] - 1) < 0.02) | (np.abs(p[:, 1] - (h - 1)) < 0.02)  # noqa: E731
    flips = int((err_ours > 0.5).sum() + (err_ref > 0.5).sum())
    print(f"{kf.camera_names[c]:16s} {len(ours):5d} pairs (devkit {len(ref_uv)}), "
          f"max |devkit - ours| = {max(err_ours[err_ours <= 0.5].max(), 0):.2e} px, {flips} margin flips")
    assert ((err_ours <= 0.5) | on_margin(ours)).all() and ((err_ref <= 0.5) | on_margin(ref_uv)).all()
    assert flips <= 0.005 * len(ref_uv)

# %% [markdown]
# ## 4 · Superpixels
#
# SLidR pools features over **superpixels** instead of single pixels: SLIC segments each image into
# regions of similar colour, aiming at 150 (`n_segments` is a target, not a count; compactness 6,
# Gaussian smoothing σ = 3, the paper's values).
# Points whose pixels fall in one superpixel form a *superpoint*. They are computed once and cached
# next to the dataset (`<dataroot>/superpixels/slic_150_6_3/<camera token>.png`), or in the folder
# `pipeline.superpixel_cache` names when the dataset folder is read-only; on real nuScenes,
# `python -m cmcr_lite.data.superpixels --dataroot ... --workers N` computes them all first. Only
# SLidR reads them: PPKT and CMCR pretraining never compute them.

# %%
from cmcr_lite.data.superpixels import SlicParams, load_or_compute_superpixels

params = SlicParams()
segments = [load_or_compute_superpixels(keyframes.dataroot, kf.camera_tokens[c], kf.images[c], params)
            for c in (0, 3)]
from cmcr_lite.viz import superpixels_figure

fig = superpixels_figure(kf.images[[0, 3]], segments, [kf.camera_names[0], kf.camera_names[3]])
fig.savefig(out / "superpixels.png", dpi=80)
plt.show()
sp_of_pair = segments[0][pair_pixels[pair_pixels[:, 0] == 0, 1], pair_pixels[pair_pixels[:, 0] == 0, 2]]
print(f"CAM_FRONT: {len(np.unique(segments[0]))} superpixels (target 150), {len(np.unique(sp_of_pair))} of them hold at least one point")

# %% [markdown]
# ## 5 · Sparse voxels
#
# The 3D network (a sparse MinkUNet) sees **voxels**, not points: coordinates are quantised to
# $\lfloor p / s \rfloor$ with $s = 0.1$ m (CMCR uses Cartesian voxels; SLidR cylindrical ones), one
# representative point per voxel gives its features, and the inverse map sends every point back to
# its voxel, so pairs become voxel↔pixel pairs and predictions are scored per point.

# %%
from cmcr_lite.data.voxelize import voxelize

sizes_m = [0.05, 0.1, 0.2, 0.4]
rows = []
for s in sizes_m:
    vox = voxelize(kf.points[:, :3], s)
    back = kf.labels[vox.point_of_voxel][vox.voxel_of_point]  # labels: points -> voxels -> points
    rows.append((s, len(vox), len(kf.points) / len(vox), (back != kf.labels).mean()))
    print(f"voxel {s:4.2f} m: {len(vox):6d} voxels, {len(kf.points) / len(vox):4.2f} points/voxel, "
          f"{100 * (back != kf.labels).mean():5.2f} % of point labels changed by the round trip")
assert rows[1][3] < 0.02  # at 0.1 m almost every voxel holds a single class

fig, ax = plt.subplots(1, 2, figsize=(11, 3.4))
ax[0].plot([r[0] for r in rows], [r[1] for r in rows], "o-")
ax[0].set_xlabel("voxel size (m)"); ax[0].set_ylabel("number of voxels")
ax[1].plot([r[0] for r in rows], [100 * r[3] for r in rows], "o-", color="C3")
ax[1].set_xlabel("voxel size (m)"); ax[1].set_ylabel("labels changed by round trip (%)")
save_figure(fig, out / "voxels.png")

# %% [markdown]
# ## 6 · A training sample: augmentations and MIM masks
#
# `PairedScanDataset` turns a keyframe into a training sample: a random rotation about z and axis
# flips for the points (pairs index points, so they need no change), a random resized crop to
# 224×416 (here the `lite` 112×208) and a horizontal flip per camera (these move pixels, so the
# pairs are remapped and those leaving the crop dropped). For masked image modelling, each image is
# masked with probability 0.5: 50 % of its 16×16 patches are zeroed, and the pairs on masked pixels
# are dropped with a **boolean** mask.

# %%
from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig

dataset = PairedScanDataset(keyframes, PipelineConfig.lite(mim_masks=True, mask_prob=0.5), seed=seed)
item = dataset[keyframe_index]
print({k: getattr(v, "shape", v) for k, v in item.items() if k != "sample_token"})
masked_cams = np.nonzero(item["masks"].any((1, 2)))[0]
print("masked cameras:", [kf.camera_names[c] for c in masked_cams])
fig, axes = plt.subplots(2, 6, figsize=(18, 4.2))
for c in range(6):
    sel = item["pair_pixels"][:, 0] == c
    axes[0, c].imshow(item["images"][c].transpose(1, 2, 0))
    axes[0, c].scatter(item["pair_pixels"][sel, 2], item["pair_pixels"][sel, 1], s=0.5,
                       c=class_colours()[item["labels"][item["pair_points"][sel]]])
    axes[0, c].set_title(f"{kf.camera_names[c]} input: {sel.sum()} pairs", fontsize=8)
    axes[1, c].imshow(item["target_images"][c].transpose(1, 2, 0))
    axes[1, c].set_title("target (unmasked)", fontsize=8)
for a in axes.ravel():
    a.axis("off")
from matplotlib.patches import Patch

drawn = np.unique(item["labels"][item["pair_points"]])
fig.legend([Patch(color=class_colours()[k]) for k in drawn], [CLASS_NAMES_16[k] for k in drawn], loc="lower center",
           ncol=min(len(drawn), 8), fontsize=8)
fig.subplots_adjust(bottom=0.16)
save_figure(fig, out / "training_sample.png")

# %% [markdown]
# **The official code's masking bug.** The released CMCR code filters pairs with
# `matching_points[1 - mask[r, c]]`. `1 - bool_array` is an *integer* array, so NumPy treats it as a
# list of indices 0 and 1: every pair collapses onto pair #0 or #1. Here is the difference on the
# pairs of one camera with a half-masked image:

# %%
from cmcr_lite.data.masking import drop_masked_pairs, random_patch_mask

rng = np.random.default_rng(seed)
H, W = kf.images.shape[1:3]
masks = np.zeros((6, H, W), bool)
masks[0] = random_patch_mask(H, W, rng, patch=16, ratio=0.5)
cam0 = pair_pixels[:, 0] == 0
keep = drop_masked_pairs(pair_pixels[cam0], masks)
buggy = pair_points[cam0][(1 - masks[0][pair_pixels[cam0, 1], pair_pixels[cam0, 2]])]
print(f"pairs of CAM_FRONT: {cam0.sum()}")
print(f"  boolean ~mask keeps {keep.sum()} ({100 * keep.mean():.0f} %), all distinct")
print(f"  integer 1 - mask keeps {len(buggy)} entries but only {len(np.unique(buggy))} distinct pairs")
assert len(np.unique(buggy)) <= 2 and 0.3 < keep.mean() < 0.7

# %% [markdown]
# ## 7 · Twins: what only the geometry or only the appearance can tell apart
#
# The paper's claim is that contrastive distillation learns what **both** modalities see, and
# misses what only one of them carries. The embedded dataset makes that measurable with *twins*:
#
# * **geometry-only twins** render identically in the cameras (same paint, texture and coarse shape)
#   and differ only in a relief that the LiDAR resolves: car | truck (the generator ribs the truck's
#   panels, 45 cm deep every 1.2 m, four to five voxels; the profile at the end of this section
#   measures them), terrain | vegetation (planted beds are shrubby, up to 30 cm high). What tells them
#   apart is *LiDAR-specific*: an image teacher cannot pass it on.
# * **appearance-only twins** have the same shape and differ in colour/texture: driveable surface |
#   sidewalk, bus | construction vehicle. In the LiDAR they differ only through intensity (paint
#   reflectance); how well one intensity threshold separates them is measured below the figure. What
#   tells them apart is *shared*: the cameras see it as colour, the LiDAR as intensity. This is what
#   contrastive distillation should transfer.
# * pedestrian, traffic cone, barrier and manmade differ from everything in both.
#
# Classes that are *not* twins are kept apart in the LiDAR too (grass is brighter than paving, long
# vehicles brighter than blue paint): otherwise a LiDAR-only network confuses a car with a bus, and
# the twins would measure that instead of the relief. That the twins *can* be learned from the LiDAR
# alone is measured, not assumed: the supervised ceiling of `experiments/results/bench.md` (notebook 07).
#
# Left: the mean colour of the pixels paired with each class (camera). Middle: the roughness of each
# point, the spread of its 12 nearest neighbours off their best plane (LiDAR geometry), as a density
# on a log scale so that the few rough points show; each legend gives the twin's share of points at
# 5 cm or more (dashed line). Right: the LiDAR intensity, with the twins' d′ (the difference of their
# means in pooled spreads) in the title. No histogram is clipped: each spans its twins' values.

# %%
from cmcr_lite.analysis.twins import separability
from cmcr_lite.viz import twin_statistics, twins_figure

stats = twin_statistics(keyframes, n_keyframes=min(4, len(keyframes)))
fig = twins_figure(stats, rough_threshold=0.05)
fig.savefig(out / "twins.png", dpi=80)
plt.show()

# %%
twin_rows = {}
for group, (a, b) in [("geometry-only", ("car", "truck")), ("geometry-only", ("terrain", "vegetation")),
                      ("appearance-only", ("driveable_surface", "sidewalk")), ("appearance-only", ("bus", "construction_vehicle"))]:
    ka, kb = CLASS_NAMES_16.index(a), CLASS_NAMES_16.index(b)
    if ka in stats and kb in stats:
        d_rgb = np.abs(stats[ka]["rgb"].mean(0) - stats[kb]["rgb"].mean(0)).mean()
        rough = {cm: [100 * np.mean(stats[k]["roughness"] >= cm / 100) for k in (ka, kb)] for cm in (5, 15)}
        sep = separability(stats[ka]["intensity"], stats[kb]["intensity"])  # d' and one threshold's accuracy
        twin_rows[(a, b)] = {"group": group, "rgb": d_rgb, "rough": rough,
                             "b_brighter": stats[kb]["intensity"].mean() > stats[ka]["intensity"].mean(), **sep}
        print(f"{group:16s} {a:>17s} vs {b:<20s} colour differs by {d_rgb:5.1f} / 255; roughness >= 5 cm: "
              f"{rough[5][0]:4.1f} % vs {rough[5][1]:4.1f} %, >= 15 cm: {rough[15][0]:4.1f} % vs {rough[15][1]:4.1f} %; "
              f"intensity d' = {sep['d_prime']:.1f}")

# %% [markdown]
# **How far apart is the appearance twins' intensity?** If both classes were Gaussians of equal
# spread, the best single threshold would sit halfway between the means, and each class would fall on
# its own side of it with probability $\Phi(d'/2)$ ($\Phi$ the standard normal distribution function):
# that is the threshold's *balanced accuracy*, the mean of the two classes' recalls. The control for
# this Gaussian reading is the best threshold on the points themselves, which assumes no shape
# (`analysis.twins.separability`):

# %%
from IPython.display import Markdown, display

lines = []
for (a, b), r in twin_rows.items():
    if r["group"] != "appearance-only":
        continue
    wrong = 1 / max(1 - r["gaussian_accuracy"], 1e-9)
    strength = ("a strong cue on its own" if r["gaussian_accuracy"] >= 0.9 else
                "a clear but partial cue" if r["gaussian_accuracy"] >= 0.75 else "a weak cue")
    lines.append(f"* {a} vs {b}: d′ = {r['d_prime']:.1f}, so one intensity threshold labels "
                 f"Φ(d′/2) = {100 * r['gaussian_accuracy']:.0f} % of each class correctly (about 1 point in "
                 f"{wrong:.0f} on the wrong side): {strength}. The best threshold on these points reaches "
                 f"{100 * r['best_accuracy']:.0f} % balanced accuracy.")
    assert abs(r["best_accuracy"] - r["gaussian_accuracy"]) < 0.05  # the Gaussian reading of d' holds here
display(Markdown("\n".join(lines)))

# %% [markdown]
# **What roughness shows of the ribs, and what it cannot.** A 45 cm rib is far rougher than a flat
# panel, yet the two vehicles' roughness histograms overlap almost everywhere. The size of a 12-point
# neighbourhood depends on the range: near the sensor, where the points are dense, it may fit on a
# single rib face; far away, where they are sparse, it spans rib edges. The control: car and truck
# points split by range, with the size of their neighbourhoods.

# %%
from scipy.spatial import cKDTree

from cmcr_lite.viz import local_roughness

car_k, truck_k = CLASS_NAMES_16.index("car"), CLASS_NAMES_16.index("truck")
near_m = 10.0
by_range = {k: {"rough": [], "range": [], "reach": []} for k in (car_k, truck_k)}
for i in range(min(4, len(keyframes))):                    # the keyframes of the figure
    scan, scan_labels = keyframes.load_scan(i)
    rough_i = local_roughness(scan)
    reach_i = cKDTree(scan[:, :3]).query(scan[:, :3], k=12)[0][:, -1]   # distance to the 12th neighbour
    for k, r in by_range.items():
        r["rough"].append(rough_i[scan_labels == k])
        r["range"].append(np.linalg.norm(scan[scan_labels == k, :2], axis=1))
        r["reach"].append(reach_i[scan_labels == k])
lines, shares = [], {}
for k, r in by_range.items():
    rough_k, range_k, reach_k = (np.concatenate(r[f]) for f in ("rough", "range", "reach"))
    parts = []
    for where, sel in ((f"within {near_m:.0f} m", range_k < near_m), (f"beyond {near_m:.0f} m", range_k >= near_m)):
        shares[(k, where.split()[0])] = np.mean(rough_k[sel] >= 0.05) if sel.any() else np.nan
        parts.append(f"{where}, {100 * np.mean(rough_k[sel] >= 0.05):.1f} % of {sel.sum()} points (neighbourhood "
                     f"radius {100 * np.median(reach_k[sel]):.0f} cm)" if sel.any() else f"no point {where}")
    lines.append(f"* {CLASS_NAMES_16[k]}, share of points with roughness ≥ 5 cm: " + "; ".join(parts) + ".")
near_truck, far_truck = shares[(truck_k, "within")], shares[(truck_k, "beyond")]
if near_truck < 0.02 and far_truck > 5 * near_truck:
    lines.append("\nNear the sensor the truck's points are hardly ever rough, so its larger share of rough points "
                 "comes from far, sparse returns whose neighbourhoods span rib edges: roughness mixes the range "
                 "with the relief. The profile below measures the ribs directly.")
elif not np.isnan(near_truck):
    lines.append("\nThe truck's points are rougher than the car's near the sensor too.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# **The ribs themselves.** Below: the keyframe (among the first twenty) whose largest car and largest
# truck both have the most points, and the side of each that faces the sensor, seen from above and
# face-on. `analysis.twins.largest_object` takes a class's biggest group of points; `panel_profile` finds
# the side's direction and its outermost plane, and measures every point's depth behind that plane;
# `rib_bands` finds the grooves in it (points more than 20 cm behind the plane, far beyond the range noise).

# %%
from cmcr_lite.analysis.twins import largest_object, panel_profile, rib_bands
from cmcr_lite.viz import panel_profiles_figure

best_scan, best_size = None, 0
for i in range(min(20, len(keyframes))):
    scan, scan_labels = keyframes.load_scan(i)
    size = min(len(largest_object(scan, scan_labels, k)) for k in (car_k, truck_k))
    if size > best_size:
        best_scan, best_size = i, size
profiles = None
if best_size >= 100:
    scan, scan_labels = keyframes.load_scan(best_scan)
    objects = {name: largest_object(scan, scan_labels, CLASS_NAMES_16.index(name)) for name in ("truck", "car")}
    profiles = {name: panel_profile(obj) for name, obj in objects.items()}
    fig = panel_profiles_figure(profiles, title=f"keyframe {best_scan}: the side of the largest truck and of the largest car")
    fig.savefig(out / "panels.png", dpi=80)  # laid out by the figure itself (constrained layout)
    plt.show()
else:
    print("no keyframe among the first 20 of this split shows both a car and a truck of 100 points or more")

# %%
if profiles is not None:
    rough_scan = local_roughness(scan)
    measured, lines = {}, []
    for name, prof in profiles.items():
        _, rows = cKDTree(scan[:, :3]).query(objects[name][prof["index"]])  # the side's points in the scan
        m = measured[name] = {**rib_bands(prof, deep=0.2), "rough": np.mean(rough_scan[rows] >= 0.05)}
        line = f"* {name}: {100 * m['deep']:.0f} % of its {m['points']} side points lie more than 20 cm behind the outer plane"
        if m["edges"] > 2:
            line += f" (a median {100 * m['step']:.0f} cm deeper than the rest), in bands that repeat every {m['period']:.2f} m"
        lines.append(line + f"; {100 * m['rough']:.1f} % of its side points have a roughness of 5 cm or more.")
    truck, car = measured["truck"], measured["car"]
    if truck["edges"] > 2 and car["deep"] < 0.02:
        lines.append(f"\nThe truck's side is ribbed and the car's is flat: the relief the cameras never see. "
                     + ("The 12-point roughness of the same points misses it: each plane fit sits on one rib face."
                        if truck["rough"] < 0.05 else "The 12-point roughness of the same points shows it too."))
    display(Markdown("\n".join(lines)))
    if version == "v1.0-synthetic":   # the generator's ribs, measured back from the points
        from cmcr_lite.data.synthetic_world import RIB_DEPTH, RIB_PERIOD

        assert abs(truck["step"] - RIB_DEPTH) < 0.05 and abs(truck["period"] - RIB_PERIOD) < 0.1, truck
        assert car["deep"] < 0.02, car

# %% [markdown]
# **Intensity is a LiDAR measurement too.** Car and truck share their paint's reflectance, but a return's
# intensity is scaled by $0.5 + 0.5\,|\cos\theta|$ of its incidence angle $\theta$, and the ribs' faces meet
# the beam at other angles than a flat panel does, which can shift the truck's intensity. Such a shift
# would still be information only the LiDAR has (the cameras see no difference at all), so the twins
# would stay "geometry-only" in the sense that matters, LiDAR-specific; but a network could then use
# the intensity without reading the relief. Its size on these keyframes:

# %%
if ("car", "truck") in twin_rows:
    r = twin_rows[("car", "truck")]
    display(Markdown(
        f"Car and truck intensities differ by d′ = {r['d_prime']:.1f} pooled spreads (one threshold: "
        f"{100 * r['best_accuracy']:.0f} % balanced accuracy, 50 % is chance): " + (
            "negligible, so the LiDAR tells them apart by the relief." if r["d_prime"] < 0.3 else
            f"the truck returns {'brighter' if r['b_brighter'] else 'dimmer'}, a partial cue on its own, which a "
            "LiDAR-only network can combine with the relief.")))

# %% [markdown]
# ## Summary
#
# * A keyframe is a LiDAR sweep plus six images; the devkit's tables give every transform, and the
#   camera's own ego pose must be used (the ego moves between sensors).
# * Pairs are computed for all cameras in one vectorised product and agree with the devkit's
#   reference projection to a tiny fraction of a pixel (`benchmarks/projection.py` times both).
# * Augmentations keep pairs consistent; masking drops pairs with a boolean mask.
# * The embedded dataset's twins separate what only LiDAR geometry or only camera appearance can
#   tell apart: the truck's ribs show in a profile of its side, and the appearance twins' intensity
#   separates them by the d′ measured in §7. The following notebooks measure which of them each method
#   learns.
#
# **Exercises** (time for a first reading, difficulty ★☆☆ to ★★★). Each has a check cell below:
# it holds a solution and passes as written; replace the solution with yours.
# 1. *(10 min, ★☆☆) Implement it yourself*: the Cartesian voxel of every point is $\lfloor p / s \rfloor$.
#    Compute it for the keyframe of §3 at $s$ = 0.1 m with NumPy and check it against `voxelize`'s
#    inverse map (`vox.coords[vox.voxel_of_point]`). Hint: `np.floor(points / s).astype(np.int32)`;
#    compute in float64, as the check does, or points on a voxel boundary may round differently.
# 2. *(10 min, ★☆☆)* Set `keyframe_index = 2` (or `split = "val"`) and rerun §3: how does the number of
#    pairs per camera change? Hint: `np.bincount(kf.pair_pixels[:, 0], minlength=6)`. Expected: little,
#    on this dataset; the total stays within 10 %, and CAM_BACK holds the most pairs in every keyframe
#    because its lens is the widest (compare `K[c][0, 0]`, the focal length in pixels, across cameras).
# 3. *(20 min, ★★☆)* In §3, use the LiDAR's ego pose for the cameras too (a chain without the camera's
#    own ego pose). Hint: `tests/test_projection.py` builds that chain. Expected: every camera's pixels
#    move, by a pixel or two up to tens of pixels, and near points (closer than the median) move more
#    than far ones: the ego's motion between the two timestamps is a translation, whose parallax
#    shrinks with depth.
# 4. *(15 min, ★★☆)* In §5, which classes lose most labels at 0.4 m voxels, and why? Hint: compare `back`
#    and `kf.labels` per class, over several keyframes (one keyframe holds few points of a small class).
#    Expected: the small objects (traffic cones, barriers, pedestrians), whose few voxels are shared with
#    the ground or a neighbour, lose a larger share than the large surfaces (road, buildings).

# %%
# Check for exercise 1 (a solution; replace it with yours)
vox = voxelize(kf.points[:, :3], 0.1)
mine = np.floor(kf.points[:, :3].astype(np.float64) / 0.1).astype(np.int32)
assert np.array_equal(mine, vox.coords[vox.voxel_of_point])

# %%
# Check for exercise 2 (a solution; replace it with yours): pairs per camera in §3's keyframe and two later
per_camera = {i: np.bincount(keyframes[i].pair_pixels[:, 0], minlength=6)
              for i in sorted({keyframe_index, (keyframe_index + 2) % len(keyframes), (keyframe_index + 5) % len(keyframes)})}
for i, counts in per_camera.items():
    print(f"keyframe {i:2d}: " + ", ".join(f"{name} {n}" for name, n in zip(kf.camera_names, counts)) + f"; total {counts.sum()}")
totals = np.array([counts.sum() for counts in per_camera.values()])
assert totals.max() / totals.min() < 1.1                               # the total stays within 10 %
widest = int(np.argmin(K[:, 0, 0]))                                    # the shortest focal length: the widest lens
assert all(int(np.argmax(counts)) == widest for counts in per_camera.values()), kf.camera_names[widest]

# %%
# Check for exercise 3 (a solution; replace it with yours): the LiDAR's ego pose for every camera
from cmcr_lite.data.projection import pose_matrix


def pose(table, token):
    rec = nusc.get(table, token)
    return pose_matrix(rec["rotation"], rec["translation"])


lidar_rec = keyframes.lidar_record(kf.sample_token)
ego_from_lidar = pose("calibrated_sensor", lidar_rec["calibrated_sensor_token"])
wrong_T = np.stack([np.linalg.inv(pose("calibrated_sensor", sd["calibrated_sensor_token"])) @ ego_from_lidar
                    for sd in keyframes.camera_records(kf.sample_token)])
wrong_points, wrong_pixels, wrong_uv = project_points_to_cameras(kf.points[:, :3], wrong_T, K, sizes, min_depth=1.0)
for c, name in enumerate(kf.camera_names):
    right = dict(zip(pair_points[pair_pixels[:, 0] == c], uv[pair_pixels[:, 0] == c]))
    both = [(p, q) for p, q in zip(wrong_points[wrong_pixels[:, 0] == c], wrong_uv[wrong_pixels[:, 0] == c]) if p in right]
    shift = np.array([np.linalg.norm(q - right[p]) for p, q in both])
    depth = np.linalg.norm(kf.points[[p for p, _ in both], :2], axis=1)
    near = depth < np.median(depth)
    print(f"{name:16s} median shift {np.median(shift):5.1f} px (near points {np.median(shift[near]):5.1f}, "
          f"far {np.median(shift[~near]):5.1f}), max {shift.max():5.1f} px")
    assert np.median(shift) > 0.5 and np.median(shift[near]) > np.median(shift[~near])

# %%
# Check for exercise 4 (a solution; replace it with yours): labels changed by 0.4 m voxels, per class
changed, total = np.zeros(17), np.zeros(17)
for i in range(min(len(keyframes), 15)):
    points_i, labels_i = keyframes.load_scan(i)
    vox = voxelize(points_i[:, :3], 0.4)
    back_i = labels_i[vox.point_of_voxel][vox.voxel_of_point]
    changed += np.bincount(labels_i[back_i != labels_i], minlength=17)
    total += np.bincount(labels_i, minlength=17)
share = {CLASS_NAMES_16[k]: changed[k] / total[k] for k in range(1, 17) if total[k] >= 100}
for name in sorted(share, key=share.get, reverse=True):
    print(f"{name:22s} {100 * share[name]:5.1f} % of {int(total[CLASS_NAMES_16.index(name)])} points")
small, large = ("traffic_cone", "barrier", "pedestrian"), ("driveable_surface", "manmade")
assert min(share[c] for c in small if c in share) > max(share[c] for c in large if c in share)

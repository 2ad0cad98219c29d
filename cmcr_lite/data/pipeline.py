"""The cross-modal sample pipeline: keyframe -> augmented points, voxels, images, pairs -> batch.

    ds = PairedScanDataset(NuScenesKeyframes(root, version, "train"), PipelineConfig.lite())
    batch = collate_pairs([ds[0], ds[1]])
    x = batch_to_sparse_tensor(batch)              # MinkowskiEngine input, one row per voxel

Order of operations for one keyframe (all randomness from one generator seeded by seed, epoch, index):
1. point augmentation (z rotation, x/y flips); pairs refer to point indices, so they are unchanged;
2. image augmentation per camera (resized crop, horizontal flip), remapping pair pixels;
3. MIM masks (optional) and the boolean removal of pairs whose pixel is masked;
4. voxelisation; pairs go from point indices to voxel indices through the inverse map.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from cmcr_lite.data.augment import (crop_and_resize, random_horizontal_flip, random_point_augmentation,
                                    random_resized_crop)
from cmcr_lite.data.masking import drop_masked_pairs, random_image_masks
from cmcr_lite.data.occupancy_queries import neighbourhood_pairs, sample_query_points, transform_queries
from cmcr_lite.data.superpixels import SlicParams, load_or_compute_superpixels
from cmcr_lite.data.voxelize import voxelize


@dataclass
class PipelineConfig:
    """Data settings. Defaults are the paper's (CMCR ``ppkt_minkunet.yaml`` and SLidR).

    Three products are optional because only some methods read them: ``superpixels`` (SLidR),
    ``mim_masks`` (CMCR's masked image modelling) and ``occupancy`` (CMCR's occupancy queries and
    their neighbourhoods). Inside a ``PretrainConfig`` these three switches are *derived* from the
    method and its options (``PretrainConfig.__post_init__``), so they never need setting by hand;
    the sizes next to them (``mask_prob``, ``occupancy_queries``, ...) are what a method that uses the
    product gets.
    """
    voxel_size: float = 0.1                 # metres
    cylindrical: bool = False               # CMCR pretrains on Cartesian voxels
    crop_size: tuple = (224, 416)           # (height, width) pixels of the network's images
    crop_scale: tuple = (0.3, 1.0)          # fraction of the image area kept by the crop
    crop_ratio: tuple = (14 / 9, 17 / 9)    # crop width / height
    crop_min_pairs: int = 1024              # redraw a crop that keeps fewer pairs ...
    crop_min_fraction: float = 0.75         # ... and less than this fraction of them
    augment: bool = True                    # False: no point augmentation, centred full-width crop
    flip_horizontal_p: float = 0.5
    superpixels: bool = True                # SLIC ids per image (SLidR reads them)
    slic: SlicParams = field(default_factory=SlicParams)
    superpixel_cache: str | None = None     # folder of the cached SLIC PNGs; None: <dataroot>/superpixels
    mim_masks: bool = False                 # draw MIM masks and drop the masked pairs (CMCR with MIM)
    mask_prob: float = 0.5                  # MIM: probability that an image is masked (CMCR: 0.5)
    mask_patch: int = 16                    # pixels
    mask_ratio: float = 0.5                 # fraction of patches masked in a masked image
    # MIM reconstructs the image on a grid of 1/mim_stride of the crop (the target average-pooled to
    # it). Paper and released code: 1, full resolution. Lite: 4 (28x52 cells, a 16-px mask patch is
    # 4x4 cells), because on a CPU the full-resolution image decoder dominates a CMCR step
    # (benchmarks/pretrain_step.py measures it). The decoder reaches the 3D network only through the
    # codebook and the geometry-enhanced replacement, which both still run, on the coarser grid.
    mim_stride: int = 1
    min_depth: float = 1.0                  # metres, for pairing
    occupancy: bool = False                 # occupancy queries + neighbourhoods (CMCR with occupancy)
    occupancy_queries: int = 2048           # query points per scan (paper: 2048)
    occupancy_band: float = 0.1             # metres around each surface for in/out queries
    occupancy_radius: float = 1.0           # metres: a query's neighbours are the points this close
    # Neighbours kept per query: the official code calls torch_geometric's ``radius`` without
    # ``max_num_neighbors``, i.e. PyG's default cap of 32, which keeps the first 32 points of the
    # search (lowest point index), not the nearest ones. "all" (or None) keeps every neighbour.
    occupancy_max_neighbours: int | str | None = 32
    occupancy_neighbour_pick: str = "first"  # "first" (as torch_cluster) or "random" (uniform subset)

    @classmethod
    def full(cls, **overrides) -> "PipelineConfig":
        """The paper's data settings (224x416 crops, 2,048 occupancy queries)."""
        return replace(cls(), **overrides)

    @classmethod
    def lite(cls, **overrides) -> "PipelineConfig":
        """Small images for 2-core CPUs: 112x208 crops (half the paper's in each direction), MIM
        reconstructed on a quarter of that (28x52) and 1,024 occupancy queries per scan."""
        return replace(cls(crop_size=(112, 208), crop_min_pairs=256, occupancy_queries=1024, mim_stride=4),
                       **overrides)

    def __post_init__(self):
        if isinstance(self.slic, dict):
            self.slic = SlicParams(**self.slic)
        self.crop_size, self.crop_scale, self.crop_ratio = (tuple(self.crop_size), tuple(self.crop_scale),
                                                            tuple(self.crop_ratio))
        if self.occupancy_max_neighbours == "all":
            self.occupancy_max_neighbours = None
        cap = self.occupancy_max_neighbours
        checks = {
            "voxel_size": self.voxel_size > 0, "crop_size": all(int(s) > 0 for s in self.crop_size),
            "crop_scale": 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "crop_ratio": 0 < self.crop_ratio[0] <= self.crop_ratio[1],
            "flip_horizontal_p": 0 <= self.flip_horizontal_p <= 1, "mask_prob": 0 <= self.mask_prob <= 1,
            "mask_ratio": 0 <= self.mask_ratio <= 1, "mask_patch": self.mask_patch >= 1,
            "mim_stride": (isinstance(self.mim_stride, int) and self.mim_stride >= 1
                           and all(int(s) % self.mim_stride == 0 for s in self.crop_size)),
            "occupancy_queries": self.occupancy_queries >= 0, "occupancy_band": self.occupancy_band > 0,
            "occupancy_radius": self.occupancy_radius > 0,
            "occupancy_max_neighbours": cap is None or (isinstance(cap, int) and cap >= 1),
            "occupancy_neighbour_pick": self.occupancy_neighbour_pick in ("first", "random"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"PipelineConfig: invalid value for {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


def query_neighbourhoods(queries: np.ndarray, points_xyz: np.ndarray, cfg: PipelineConfig,
                         rng: np.random.Generator):
    """(query index (E,), point index (E,)) int64 numpy: the occupancy neighbourhoods of one scan
    under ``cfg``'s radius, cap and pick rule (``cmcr_lite.data.occupancy_queries.neighbourhood_pairs``)."""
    qi, pi = neighbourhood_pairs(queries, points_xyz, cfg.occupancy_radius,
                                 max_neighbours=cfg.occupancy_max_neighbours, rng=rng,
                                 pick=cfg.occupancy_neighbour_pick)
    return qi.numpy(), pi.numpy()


def centre_crop_box(height: int, width: int, out_size):
    """The largest centred box with the aspect ratio of ``out_size`` (used without augmentation)."""
    aspect = out_size[1] / out_size[0]
    w = min(width, int(round(height * aspect)))
    h = min(height, int(round(w / aspect)))
    return (height - h) // 2, (width - w) // 2, h, w


class PairedScanDataset(torch.utils.data.Dataset):
    """Training samples for image-to-LiDAR distillation from a ``NuScenesKeyframes``.

    Each item is a dict of numpy arrays:
        points (N, 4) float32        augmented x, y, z (metres) and intensity
        labels (N,) int64            16-class labels (zeros when the dataset has no lidarseg)
        coords (V, 3) int32          voxel grid coordinates
        feats (V, 1) float32         intensity / 255 of each voxel's representative point
        voxel_labels (V,) int64      label of each voxel's representative point
        voxel_of_point (N,) int64    inverse map, point -> voxel
        images (C, 3, h, w) float32  network input in [0, 1], masked pixels set to 0
        target_images (C, 3, h, w)   the same images unmasked (MIM target)
        masks (C, h, w) bool         True = masked pixel
        superpixels (C, h, w) int64  SLIC ids per image (or -1 when disabled)
        pair_points (M,) int64, pair_voxels (M,) int64, pair_pixels (M, 3) int64 (camera, row, col)
        masked_pair_points / masked_pair_voxels / masked_pair_pixels: the pairs whose pixel is masked
            (dropped from the pairs above; used by geometry-enhanced MIM)
    With ``occupancy_queries > 0`` also (Q = occupancy_queries):
        queries (Q, 3) float32 (metres, augmented like the points), query_occupied (Q,) float32 {0, 1},
        query_intensity (Q,) float32 (-1 = no target), query_kind (Q,) int8 (0 in, 1 out, 2 out-far),
        neighbour_query (E,) int64, neighbour_point (E,) int64: every (query, point) pair within
        ``occupancy_radius``, at most ``occupancy_max_neighbours`` per query (the decoder's inputs)
    """

    def __init__(self, keyframes, config: PipelineConfig = PipelineConfig(), seed: int = 0):
        self.keyframes, self.config, self.seed, self.epoch = keyframes, config, seed, 0

    def __len__(self) -> int:
        return len(self.keyframes)

    def set_epoch(self, epoch: int):
        """Draw new augmentations each epoch, reproducibly (the generator is seeded by seed, epoch, index)."""
        self.epoch = epoch

    def generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        cfg, kf = self.config, self.keyframes[index]
        rng = self.generator(index)
        xyz = kf.points[:, :3]
        queries = None
        if cfg.occupancy:
            # drawn in the sensor frame before augmentation, from their own generator so the other
            # draws stay the same with and without occupancy
            queries = sample_query_points(xyz, kf.points[:, 3], np.random.default_rng([self.seed, self.epoch, index, 1]),
                                          cfg.occupancy_queries, cfg.occupancy_band)
        if cfg.augment and queries is not None:
            xyz, queries["queries"] = transform_queries(xyz, queries["queries"],
                                                        lambda a: random_point_augmentation(a, rng))
        elif cfg.augment:
            xyz = random_point_augmentation(xyz, rng)
        points = np.concatenate([xyz, kf.points[:, 3:4]], 1).astype(np.float32)

        images, pair_points, pair_pixels = kf.images, kf.pair_points, kf.pair_pixels
        superpixels = None
        if cfg.superpixels:
            superpixels = np.stack([load_or_compute_superpixels(self.keyframes.dataroot, tok, im, cfg.slic,
                                                                cfg.superpixel_cache)
                                    for tok, im in zip(kf.camera_tokens, images)])
        if cfg.augment:
            images, pair_pixels, keep, superpixels = random_resized_crop(
                images, pair_pixels, rng, tuple(cfg.crop_size), cfg.crop_scale, cfg.crop_ratio,
                cfg.crop_min_pairs, cfg.crop_min_fraction, superpixels)
            pair_points = pair_points[keep]
            images, pair_pixels, superpixels, _ = random_horizontal_flip(
                images, pair_pixels, rng, cfg.flip_horizontal_p, superpixels)
        else:
            box = centre_crop_box(images.shape[1], images.shape[2], cfg.crop_size)
            images, pair_pixels, keep, superpixels = crop_and_resize(
                images, pair_pixels, [box] * len(images), tuple(cfg.crop_size), superpixels)
            pair_points = pair_points[keep]

        C, h, w = images.shape[:3]
        masks = random_image_masks(C, h, w, rng, cfg.mask_prob if cfg.mim_masks else 0.0, cfg.mask_patch,
                                   cfg.mask_ratio)
        visible = drop_masked_pairs(pair_pixels, masks)
        # pairs hidden by the mask leave the contrastive loss but feed geometry-enhanced MIM
        masked_pair_points, masked_pair_pixels = pair_points[~visible], pair_pixels[~visible]
        pair_points, pair_pixels = pair_points[visible], pair_pixels[visible]
        target = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        net_input = target * ~masks[:, None]

        vox = voxelize(points[:, :3], cfg.voxel_size, cfg.cylindrical)
        labels = kf.labels if kf.labels is not None else np.zeros(len(points), np.int64)
        if queries is not None:
            # the neighbourhood search runs here, in the data-loader workers, not in the training step;
            # on the augmented points (rotations and flips keep distances, so the pairs are the same)
            queries["neighbour_query"], queries["neighbour_point"] = query_neighbourhoods(
                queries["queries"], points[:, :3], cfg, np.random.default_rng([self.seed, self.epoch, index, 2]))
        return {
            "points": points, "labels": labels.astype(np.int64),
            "coords": vox.coords, "feats": (points[vox.point_of_voxel, 3:4] / 255.0).astype(np.float32),
            "voxel_labels": labels[vox.point_of_voxel].astype(np.int64), "voxel_of_point": vox.voxel_of_point,
            "images": net_input.astype(np.float32), "target_images": target, "masks": masks,
            "superpixels": superpixels if superpixels is not None else np.full((C, h, w), -1, np.int64),
            "pair_points": pair_points, "pair_voxels": vox.voxel_of_point[pair_points], "pair_pixels": pair_pixels,
            "masked_pair_points": masked_pair_points, "masked_pair_voxels": vox.voxel_of_point[masked_pair_points],
            "masked_pair_pixels": masked_pair_pixels,
            "sample_token": kf.sample_token,
            **({} if queries is None else {
                "queries": queries["queries"].astype(np.float32), "query_occupied": queries["occupied"],
                "query_intensity": queries["intensity"], "query_kind": queries["kind"],
                "neighbour_query": queries["neighbour_query"], "neighbour_point": queries["neighbour_point"]}),
        }


def collate_pairs(items: list) -> dict:
    """Stack per-scan items into one batch (torch tensors).

    Voxel coordinates get the batch index as a first column, ``(sum V, 4)`` int32, the layout
    MinkowskiEngine expects. Pair voxel indices are offset by the number of voxels of the previous
    scans, point indices by their number of points, and camera indices by ``b * C`` so they index the
    flattened ``(B * C, 3, h, w)`` images.
    """
    coords, vox_off, pt_off, out = [], 0, 0, {k: [] for k in (
        "feats", "voxel_labels", "labels", "images", "target_images", "masks", "superpixels", "pair_points",
        "pair_voxels", "pair_pixels", "masked_pair_points", "masked_pair_voxels", "masked_pair_pixels",
        "voxel_of_point", "point_batch", "points")}
    for b, it in enumerate(items):
        C = len(it["images"])
        coords.append(np.concatenate([np.full((len(it["coords"]), 1), b, np.int32), it["coords"]], 1))
        for prefix in ("", "masked_"):
            pp = it[prefix + "pair_pixels"].copy()
            pp[:, 0] += b * C
            out[prefix + "pair_pixels"].append(pp)
            out[prefix + "pair_voxels"].append(it[prefix + "pair_voxels"] + vox_off)
            out[prefix + "pair_points"].append(it[prefix + "pair_points"] + pt_off)
        out["voxel_of_point"].append(it["voxel_of_point"] + vox_off)
        out["point_batch"].append(np.full(len(it["points"]), b, np.int64))
        for k in ("feats", "voxel_labels", "labels", "images", "target_images", "masks", "superpixels", "points"):
            out[k].append(it[k])
        vox_off += len(it["coords"])
        pt_off += len(it["points"])
    if "queries" in items[0]:
        for k in ("queries", "query_occupied", "query_intensity", "query_kind"):
            out[k] = [it[k] for it in items]
        out["query_batch"] = [np.full(len(it["queries"]), b, np.int64) for b, it in enumerate(items)]
        q_off = np.cumsum([0] + [len(it["queries"]) for it in items])
        p_off = np.cumsum([0] + [len(it["points"]) for it in items])
        out["neighbour_query"] = [it["neighbour_query"] + q_off[b] for b, it in enumerate(items)]
        out["neighbour_point"] = [it["neighbour_point"] + p_off[b] for b, it in enumerate(items)]
    batch = {k: torch.from_numpy(np.concatenate(v)) for k, v in out.items()}
    batch["coords"] = torch.from_numpy(np.concatenate(coords))
    batch["batch_size"] = len(items)
    batch["sample_tokens"] = [it["sample_token"] for it in items]
    return batch


def batch_to_sparse_tensor(batch: dict, device="cpu"):
    """MinkowskiEngine ``SparseTensor`` of a collated batch: intensity features on batched voxels."""
    import MinkowskiEngine as ME

    return ME.SparseTensor(batch["feats"].to(device), coordinates=batch["coords"].to(device))

"""A self-supervised 2D teacher for the embedded dataset: dense (pixel-level) contrastive learning.

In CMCR the 2D branch is a *frozen* ResNet-50 with self-supervised MoCo-v2 weights (docs/paper.md §3.2):
no labels ever reach the teacher. A ResNet-50 trained on ImageNet means little on our synthetic
street, so this module trains a :class:`~cmcr_lite.models.image_encoder.SmallImageTeacher` the same
*label-free* way, on the camera images of the ``teacher`` split only (never the LiDAR, never the
``train``/``val`` scenes), in well under a minute on a 2-core CPU, and caches it next to the dataset.

Objective (in the spirit of PixPro / DenseCL, pixel-level InfoNCE):

1. From one source image take two random resized crops that overlap (``crop_size`` = 112 x 208 by
   default, the ``lite`` pipeline's image size, from 20-100 % of the image area where the pipeline
   takes 30-100 %, so the teacher sees textures at the scale it will be used at), each flipped
   left-right with p = 0.5 and jittered mildly in brightness and contrast only (no hue/colour jitter:
   colour and texture are what the teacher must keep, see :func:`photometric_jitter`).
2. Sample source pixels inside both crops; the output pixels of view 1 and of view 2 that contain the
   same source pixel are a *positive* pair (:func:`sample_correspondences`).
3. InfoNCE with temperature ``tau`` over ``num_matches`` correspondences per step: every other
   sampled pixel of the batch is a negative, except pixels of the same image that lie within
   ``negative_radius`` source pixels (near-duplicates of the anchor are not negatives).

The loss runs on the teacher's ``shared`` head (1x1 projection of the trunk, bilinear upsampling, L2
normalisation): that head is what the 3D network distils later, so trunk and shared head are trained
together. The ``specific`` head is left at its initialisation (CMCR trains its own 2D heads).

    model, history = train_teacher(NuScenesKeyframes(root, version, split="teacher"), TeacherConfig())
    teacher = load_or_train_teacher(root, version)      # trained once, cached, returned frozen

CLI: ``python -m cmcr_lite.teacher --dataroot DIR --version V [--steps N --seed S --out PATH]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cmcr_lite.data.augment import photometric_jitter, render_view, sample_correspondences, sample_view_pair
from cmcr_lite.losses.infonce import dense_infonce
from cmcr_lite.models.image_encoder import SmallImageTeacher, freeze, upsampled_at
from cmcr_lite.runtime import save_checkpoint_atomic, torch_threads

__all__ = [
    "TeacherConfig", "teacher_images", "init_teacher",
    "train_teacher", "teacher_path", "load_or_train_teacher", "pixel_features", "keyframe_pixel_features",
    "nearest_class_mean_accuracy",
]

CHECKPOINT_FORMAT = 1


@dataclass
class TeacherConfig:
    """Hyper-parameters of the dense contrastive teacher.

    The defaults train in about 30 CPU-seconds (40 s wall-clock measured on 2 cores shared with other
    jobs) and separate the appearance-only twins well (see ``tests/test_teacher.py``)."""
    steps: int = 120                         # optimisation steps
    batch_size: int = 6                      # source images per step (two views each)
    num_matches: int = 1024                  # correspondences per step, spread over the batch
    crop_size: Tuple[int, int] = (112, 208)  # (height, width) pixels of each view (lite pipeline size)
    crop_scale: Tuple[float, float] = (0.2, 1.0)   # fraction of the source area per crop
    crop_ratio: Tuple[float, float] = (14 / 9, 17 / 9)  # crop width / height, as the pipeline
    min_overlap: float = 0.3                 # the two crops share >= this fraction of the smaller one
    flip_prob: float = 0.5                   # left-right flip, per view
    brightness: float = 0.15                 # multiplicative factor in [1 - b, 1 + b], per view;
    # no hue / saturation jitter on purpose: colour is what separates the appearance-only twins
    contrast: float = 0.15                   # factor in [1 - c, 1 + c] around the view's mean grey
    tau: float = 0.2                         # InfoNCE temperature
    negative_radius: float = 20.0            # source pixels: same-image pixels closer are not negatives
    lr: float = 3e-3                         # AdamW, cosine decay to 0
    weight_decay: float = 1e-4
    width: int = 16                          # SmallImageTeacher: first-layer channels (16-32-64-64)
    stride: int = 8                          # SmallImageTeacher: trunk output stride
    out_dim: int = 64                        # head channels (the paper's 64)
    seed: int = 0
    num_threads: int = 2                     # torch CPU threads while training (restored afterwards)

    def __post_init__(self):
        self.crop_size = tuple(int(s) for s in self.crop_size)
        self.crop_scale = tuple(float(s) for s in self.crop_scale)
        self.crop_ratio = tuple(float(s) for s in self.crop_ratio)
        checks = {
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 1,
            "num_matches": self.num_matches >= 2 * self.batch_size,
            "crop_size": len(self.crop_size) == 2 and min(self.crop_size) >= self.stride,
            "crop_scale": 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "crop_ratio": 0 < self.crop_ratio[0] <= self.crop_ratio[1],
            "min_overlap": 0 <= self.min_overlap <= 1, "flip_prob": 0 <= self.flip_prob <= 1,
            "brightness": 0 <= self.brightness < 1, "contrast": 0 <= self.contrast < 1,
            "tau": self.tau > 0, "negative_radius": self.negative_radius >= 0, "lr": self.lr > 0,
            "num_threads": self.num_threads >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("TeacherConfig: invalid value for "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def fingerprint(self) -> str:
        """8 hex digits identifying everything that changes the trained weights (not ``num_threads``)."""
        d = self.to_dict()
        d.pop("num_threads")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------- training
def teacher_images(keyframes) -> np.ndarray:
    """All camera images of ``keyframes`` (a ``NuScenesKeyframes``, or any sequence of objects with
    ``.images`` (C, H, W, 3) uint8) as one (K * C, H, W, 3) uint8 array. Reads images only."""
    if getattr(keyframes, "split", "teacher") not in ("teacher",):
        warnings.warn(f"train_teacher: keyframes come from split {keyframes.split!r}; the teacher "
                      f"should see only the 'teacher' split")
    if hasattr(keyframes, "camera_records") and hasattr(keyframes, "sample_tokens"):
        from cmcr_lite.data.nuscenes_loader import load_image

        imgs = [load_image(keyframes.dataroot / sd["filename"], (sd["width"], sd["height"]), sd["token"])
                for tok in keyframes.sample_tokens for sd in keyframes.camera_records(tok)]
        return np.stack(imgs)
    return np.concatenate([np.asarray(kf.images) for kf in keyframes])


def _make_batch(images: np.ndarray, rng: np.random.Generator, cfg: TeacherConfig):
    """Two views of ``cfg.batch_size`` random images and their correspondences."""
    idx = rng.choice(len(images), size=cfg.batch_size, replace=len(images) < cfg.batch_size)
    per_image = cfg.num_matches // cfg.batch_size
    v1, v2, p1, p2, src, owner = [], [], [], [], [], []
    for b, i in enumerate(idx):
        H, W = images[i].shape[:2]
        a, c = sample_view_pair(rng, H, W, cfg)
        v1.append(render_view(images[i], a))
        v2.append(render_view(images[i], c))
        q1, q2, s = sample_correspondences(rng, a, c, per_image)
        p1.append(q1), p2.append(q2), src.append(s), owner.append(np.full(len(s), b))
    to_t = lambda x: torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    return (to_t(v1), to_t(v2), torch.from_numpy(np.concatenate(p1)), torch.from_numpy(np.concatenate(p2)),
            torch.from_numpy(np.concatenate(src)).float(), torch.from_numpy(np.concatenate(owner)))


def init_teacher(config: Optional[TeacherConfig] = None) -> SmallImageTeacher:
    """The untrained :class:`SmallImageTeacher` that :func:`train_teacher` starts from (initialised
    from ``config.seed``): the baseline a trained teacher is compared with."""
    cfg = config or TeacherConfig()
    torch.manual_seed(cfg.seed)
    return SmallImageTeacher(out_dim=cfg.out_dim, width=cfg.width, stride=cfg.stride)


def train_teacher(keyframes, config: Optional[TeacherConfig] = None, progress: bool = True,
                  model: Optional[SmallImageTeacher] = None) -> Tuple[SmallImageTeacher, Dict[str, object]]:
    """Train a :class:`SmallImageTeacher` with the dense contrastive objective (no labels).

    Args:
        keyframes: the ``teacher`` split (``NuScenesKeyframes``); only its camera images are read.
        config: :class:`TeacherConfig` (defaults if None).
        progress: show a tqdm bar.
        model: optional model to continue training (a fresh one, seeded by ``config.seed``, if None).

    Returns:
        (model in train mode, not frozen; history) with history = {'loss': [steps] floats,
        'match_accuracy': [steps] top-1 correspondence accuracy, 'seconds': float,
        'num_images': int, 'config': dict}.
    """
    cfg = config or TeacherConfig()
    images = teacher_images(keyframes)
    with torch_threads(min(cfg.num_threads, os.cpu_count() or 1)):
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        if model is None:
            model = init_teacher(cfg)
        model.train()
        params = list(model.trunk.parameters()) + list(model.shared.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, cfg.steps) / cfg.steps)))
        history = {"loss": [], "match_accuracy": [], "num_images": len(images), "config": cfg.to_dict()}
        t0 = time.perf_counter()
        steps = range(cfg.steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="teacher (dense contrastive)", unit="step")
        for _ in steps:
            v1, v2, p1, p2, src, owner = _make_batch(images, rng, cfg)
            views = photometric_jitter(torch.cat([v1, v2]), gen, cfg.brightness, cfg.contrast)
            # The shared head upsamples a 1x1 projection of the trunk bilinearly: evaluate that
            # upsampling only at the sampled pixels (identical values, no full-resolution map).
            proj = model.shared.proj(model.trunk_features(views))   # (2B, C, H/stride, W/stride)
            B = v1.shape[0]
            f1 = F.normalize(upsampled_at(proj, owner, p1, cfg.crop_size), dim=1)      # (N, C)
            f2 = F.normalize(upsampled_at(proj, owner + B, p2, cfg.crop_size), dim=1)
            near = (owner[:, None] == owner[None, :]) & (torch.cdist(src, src) < cfg.negative_radius)
            loss, acc = dense_infonce(f1, f2, cfg.tau, exclude=near)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history["loss"].append(loss.item())
            history["match_accuracy"].append(acc.item())
            if progress:
                steps.set_postfix(loss=f"{loss.item():.3f}", match=f"{acc.item():.2f}")
        history["seconds"] = time.perf_counter() - t0
    return model, history


# ----------------------------------------------------------------------------------- caching
def teacher_path(dataroot, config: Optional[TeacherConfig] = None) -> Path:
    """Default checkpoint location, next to the dataset it was trained on:
    ``<dataroot>/teachers/small_teacher_seed<seed>.pt`` for the default hyper-parameters, with
    ``_<fingerprint>`` appended when any other field differs (so a short test run never replaces it)."""
    cfg = config or TeacherConfig()
    name = f"small_teacher_seed{cfg.seed}"
    if cfg.fingerprint() != replace(TeacherConfig(), seed=cfg.seed).fingerprint():
        name += f"_{cfg.fingerprint()}"
    return Path(dataroot) / "teachers" / f"{name}.pt"


def _read_checkpoint(path: Path, cfg: TeacherConfig, version: str, tokens: List[str]):
    """The checkpoint dict if ``path`` holds a teacher for this config and these keyframes, else None."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: retrain
        warnings.warn(f"teacher checkpoint {path} cannot be read ({exc}); retraining")
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        warnings.warn(f"teacher checkpoint {path} has an unknown format; retraining")
        return None
    stale = []
    if ckpt.get("fingerprint") != cfg.fingerprint():
        stale.append("config")
    if ckpt.get("version") != version or list(ckpt.get("sample_tokens", [])) != list(tokens):
        stale.append("dataset keyframes")
    if stale:
        warnings.warn(f"teacher checkpoint {path} was trained with another {' and '.join(stale)}; retraining")
        return None
    return ckpt


def load_or_train_teacher(dataroot, version: str, config: Optional[TeacherConfig] = None,
                          path=None, progress: bool = True, nusc=None) -> SmallImageTeacher:
    """The frozen teacher for ``dataroot``/``version``: loaded from ``path`` (default
    :func:`teacher_path`) when it holds a teacher trained with ``config`` on this dataset's
    ``teacher`` split, otherwise trained on that split and saved there atomically (temporary file +
    ``os.replace``, so an interrupted run never leaves a half-written checkpoint).

    Returns:
        the :class:`SmallImageTeacher`, frozen (no parameter requires grad, eval mode). Its attribute
        ``teacher_info`` = {'path': str, 'source': 'trained' | 'loaded', 'history': dict}.
    """
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    cfg = config or TeacherConfig()
    path = Path(path) if path is not None else teacher_path(dataroot, cfg)
    keyframes = NuScenesKeyframes(dataroot, version, split="teacher", nusc=nusc)
    ckpt = _read_checkpoint(path, cfg, version, keyframes.sample_tokens) if path.is_file() else None
    if ckpt is not None:
        model = SmallImageTeacher(out_dim=cfg.out_dim, width=cfg.width, stride=cfg.stride)
        model.load_state_dict(ckpt["state_dict"])  # strict: a mismatch raises naming the keys
        source, history = "loaded", json.loads(ckpt["history"])
    else:
        model, history = train_teacher(keyframes, cfg, progress=progress)
        save_checkpoint_atomic({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(),
                                "config": json.dumps(cfg.to_dict()), "fingerprint": cfg.fingerprint(),
                                "version": version, "sample_tokens": list(keyframes.sample_tokens),
                                "history": json.dumps(history)}, path)
        source = "trained"
    freeze(model)
    model.teacher_info = {"path": str(path), "source": source, "history": history}
    return model


# ----------------------------------------------------------------------------------- features
@torch.no_grad()
def pixel_features(model, images: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
    """Shared-head features of ``model`` (eval mode) at given pixels of full-size images.

    Equal to ``model(images)[c, :, row, col]`` but evaluates the head's bilinear upsampling only at
    the requested pixels (:func:`upsampled_at`), so full-resolution images cost little memory.

    Args:
        images: (C, H, W, 3) uint8 camera images.
        pixels: (M, 3) int64 (camera, row, column), as ``Keyframe.pair_pixels``.

    Returns:
        (M, out_dim) float32 (L2-normalised when the shared head normalises, as in the paper).
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        proj = model.shared.proj(model.trunk_features(x))
        p = torch.as_tensor(np.asarray(pixels), dtype=torch.long)
        feats = upsampled_at(proj, p[:, 0], p[:, 1:], tuple(x.shape[-2:]))
        return F.normalize(feats, dim=1) if model.shared.normalize else feats
    finally:
        model.train(was_training)


def keyframe_pixel_features(model, keyframe, size: Optional[Tuple[int, int]] = (112, 208)):
    """Teacher features at a keyframe's paired pixels, and the labels of the paired points.

    Args:
        keyframe: a ``Keyframe`` (images (C, H, W, 3) uint8, pair_pixels, pair_points, labels).
        size: (height, width): images are centre-cropped and resized as the pipeline does without
            augmentation (``lite`` = 112 x 208); None keeps the full images.

    Returns:
        feats (M', out_dim) float32, labels (M',) int64 of the pairs inside the crop.
    """
    images, pixels = keyframe.images, keyframe.pair_pixels
    keep = np.ones(len(pixels), bool)
    if size is not None:
        from cmcr_lite.data.augment import crop_and_resize
        from cmcr_lite.data.pipeline import centre_crop_box

        box = centre_crop_box(images.shape[1], images.shape[2], size)
        images, pixels, keep, _ = crop_and_resize(images, pixels, [box] * len(images), tuple(size))
    return pixel_features(model, images, pixels), keyframe.labels[keyframe.pair_points][keep]


def nearest_class_mean_accuracy(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor,
                                test_y: np.ndarray, classes) -> float:
    """Balanced accuracy of a nearest-class-mean probe restricted to ``classes``.

    Class means (Euclidean) come from the rows of ``train_x`` (N, C) whose ``train_y`` (N,) is in
    ``classes``; each test row with a label in ``classes`` goes to the nearest mean. Returns the mean
    over ``classes`` of the per-class recall (0.5 = chance for two classes).
    """
    classes = list(classes)
    means = []
    for c in classes:
        sel = torch.from_numpy(np.asarray(train_y) == c)
        if not bool(sel.any()):
            raise ValueError(f"nearest_class_mean_accuracy: class {c} has no training rows")
        means.append(train_x[sel].mean(0))
    sel = np.isin(test_y, classes)
    pred = np.asarray(classes)[torch.cdist(test_x[torch.from_numpy(sel)], torch.stack(means)).argmin(1).numpy()]
    y = np.asarray(test_y)[sel]
    recalls = [float(np.mean(pred[y == c] == c)) for c in classes if (y == c).any()]
    if not recalls:
        raise ValueError(f"nearest_class_mean_accuracy: no test rows with a label in {classes}")
    return float(np.mean(recalls))


# ----------------------------------------------------------------------------------- CLI
def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m cmcr_lite.teacher",
        description="Train (once) the self-supervised dense-contrastive image teacher on the 'teacher' "
                    "split's camera images and cache it next to the dataset.")
    parser.add_argument("--dataroot", default=None, help="dataset root (default: the embedded dataset)")
    parser.add_argument("--version", default=None, help="dataset version (default: the embedded one)")
    parser.add_argument("--steps", type=int, default=None, help=f"steps (default {TeacherConfig.steps})")
    parser.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    parser.add_argument("--out", default=None, help="checkpoint path (default <dataroot>/teachers/...)")
    parser.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    args = parser.parse_args(argv)

    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    dataroot = Path(args.dataroot) if args.dataroot else ensure_embedded_dataset()
    version = args.version or EMBEDDED_VERSION
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    cfg = TeacherConfig(**overrides)
    path = Path(args.out) if args.out else teacher_path(dataroot, cfg)
    if args.force and path.exists():
        path.unlink()
    t0 = time.perf_counter()
    model = load_or_train_teacher(dataroot, version, cfg, path=path, progress=True)
    info = model.teacher_info
    loss = info["history"]["loss"]
    print(f"teacher {info['source']}: {path} ({time.perf_counter() - t0:.1f} s); loss {loss[0]:.3f} -> "
          f"{np.mean(loss[-10:]):.3f} (mean of last 10 steps)")
    return path


if __name__ == "__main__":
    main()

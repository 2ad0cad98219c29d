"""Training a segmentation model: SGD with a head learning rate, closed-form cosine schedule,
CE + Lovász, the cached-feature linear probe, atomic per-epoch checkpoints, exact resume, TensorBoard."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.downstream.data import SegmentationScans, collate_scans, batch_to_sparse, keyframe_indices_for_fraction
from cmcr_lite.downstream.evaluate import channel_moments, extract_features, iter_features
from cmcr_lite.downstream.model import SegmentationModel, load_pretrained_trunk
from cmcr_lite.losses.lovasz import segmentation_loss
from cmcr_lite.runtime import check_resumable, resolve_device, save_checkpoint_atomic, torch_threads


def make_optimizer(model: SegmentationModel, config: DownstreamConfig) -> torch.optim.SGD:
    """SGD (momentum, dampening, weight decay of ``config``) with two parameter groups: the trunk at
    ``lr`` and the head at ``lr_head`` (``lr`` if None). A linear probe has only the head group."""
    head = list(model.head.parameters())
    groups = []
    if config.mode == "finetune":
        groups.append({"params": list(model.trunk.parameters()), "lr": config.lr, "name": "trunk"})
    groups.append({"params": head, "lr": config.head_lr, "name": "head"})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, dampening=config.dampening,
                           weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: DownstreamConfig, start_epoch: int = 0):
    """Cosine annealing of every group's lr to 0 over ``config.epochs`` (call ``step()`` once per epoch):
    epoch e trains at ``lr * (1 + cos(pi * e / epochs)) / 2``, in closed form, so a resumed run
    (``start_epoch`` > 0, optimizer state loaded) continues on exactly the same learning rates."""
    epochs = config.epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1.0 + math.cos(math.pi * e / epochs)),
                                             last_epoch=start_epoch - 1)


def _loss(config: DownstreamConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if config.loss == "ce":
        keep = labels != config.ignore_index
        if not keep.any():
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits[keep], labels[keep])
    return segmentation_loss(logits, labels, ignore_index=config.ignore_index)


def _loader(dataset, config: DownstreamConfig, order):
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=list(order),
                                       collate_fn=collate_scans, num_workers=config.num_workers)


def _new_history() -> dict:
    return {"epoch": [], "loss": [], "lr": [], "lr_head": [], "seconds": [], "step_loss": []}


def train_segmentation(config: DownstreamConfig, train_keyframes, pretrained=None, progress: bool = True,
                       checkpoint_path=None, resume: bool = False, log_dir=None):
    """Train a :class:`SegmentationModel` on ``train_keyframes`` (fine-tuning or linear probing).

    Args:
        config: a :class:`DownstreamConfig` (``label_fraction`` selects scenes of ``train_keyframes``).
        train_keyframes: a ``NuScenesKeyframes`` (or any sequence with ``load_scan(i)``).
        pretrained: None (random trunk), a checkpoint path, or a state dict (:func:`load_pretrained_trunk`).
        progress: show tqdm bars.
        checkpoint_path: if given, the model, optimizer and history are saved there
            atomically after every epoch (:func:`load_segmentation_checkpoint` reads it).
        resume: continue from ``checkpoint_path`` when it exists; the result equals an uninterrupted
            run (every random draw is seeded by (seed, epoch, scan)). The config must match.
        log_dir: if given, TensorBoard scalars (every step's loss, epoch loss, both learning rates,
            step and epoch seconds) are written there.

    Reproducibility: the same config (seed) gives the same run: bit-identical on one CPU thread; with
    several threads, parallel float reductions (MinkowskiEngine, PyTorch) can differ in the last bits.

    Returns:
        ``(model, history)``; the model is in eval mode on the training device; ``history`` holds per
        epoch ``epoch``, ``loss`` (mean over steps), ``lr`` / ``lr_head`` (used during the epoch),
        ``seconds``, plus ``step_loss`` (every step) and ``train_indices`` (the keyframes used).
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = SegmentationModel(config.backbone, config.num_classes)
    if pretrained is not None:
        load_pretrained_trunk(model, pretrained, config)
    if config.mode == "linear_probe":
        model.freeze_trunk()
    model.to(device)
    indices = keyframe_indices_for_fraction(train_keyframes, config.label_fraction)
    optimizer = make_optimizer(model, config)
    history = _new_history()
    history["train_indices"] = indices
    start_epoch, resumed = 0, None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        resumed = load_segmentation_checkpoint(checkpoint_path)
        check_resumable(resumed["config"], config, {"epochs", "device", "num_workers", "miou_rule"}, checkpoint_path)
        optimizer.load_state_dict(resumed["optimizer"])
        history, start_epoch = resumed["history"], resumed["epoch"] + 1
    scheduler = make_scheduler(optimizer, config, start_epoch)

    cached = None
    if config.cache_features:
        cached = extract_features(model, train_keyframes, config, indices=indices, progress=progress)
    if config.normalize_features:
        feats = (c.voxel_features for c in cached) if cached is not None else \
            (c.voxel_features for c in iter_features(model, train_keyframes, config, indices, progress))
        model.set_feature_normalization(*channel_moments(feats))

    if resumed is not None:  # after the feature statistics, which the checkpoint's buffers then restore
        model.load_state_dict(resumed["model"])
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir))
    clock = [time.perf_counter()]

    def log_step(loss: float, steps_this_epoch: int):
        """TensorBoard: the step's loss and its seconds (since the previous step or the epoch start)."""
        if writer is not None:
            now = time.perf_counter()
            step = len(history["step_loss"]) + steps_this_epoch - 1
            writer.add_scalar("step/loss", loss, step)
            writer.add_scalar("step/seconds", now - clock[0], step)
            clock[0] = now

    dataset = SegmentationScans.from_config(train_keyframes, config, indices, train=True)
    bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.mode}", disable=not progress)
    for epoch in bar:
        t0 = clock[0] = time.perf_counter()
        lrs = [g["lr"] for g in optimizer.param_groups]
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(indices))
        losses = []
        if cached is not None:
            batches = (order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size))
            # many small ops (a 32..96 -> 17 linear layer, a per-class sort for Lovász): on a busy
            # 2-core machine one thread was measured 4x faster than two
            with torch_threads(1 if device.type == "cpu" else None):
                for chosen in batches:
                    feats = torch.cat([cached[i].voxel_features for i in chosen]).to(device)
                    labels = torch.cat([cached[i].voxel_labels for i in chosen]).to(device)
                    loss = _loss(config, model.logits_from_features(feats), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.detach().item())
                    log_step(losses[-1], len(losses))
        else:
            dataset.set_epoch(epoch)
            for batch in _loader(dataset, config, order):
                x = batch_to_sparse(batch, device)
                labels = batch["labels"].to(device)
                if model.trunk_frozen:
                    with torch.no_grad():
                        feats = model.features(x)
                    logits = model.logits_from_features(feats)
                else:
                    logits = model(x)
                loss = _loss(config, logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach().item())
                log_step(losses[-1], len(losses))
        scheduler.step()
        history["epoch"].append(epoch)
        history["loss"].append(float(np.mean(losses)))
        history["lr"].append(lrs[0])
        history["lr_head"].append(lrs[-1])
        history["seconds"].append(time.perf_counter() - t0)
        history["step_loss"].extend(losses)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
        if writer is not None:
            for name in ("loss", "lr", "lr_head", "seconds"):
                writer.add_scalar(f"epoch/{name}", history[name][-1], epoch)
        if checkpoint_path is not None:
            save_checkpoint_atomic({"epoch": epoch, "config": config.to_dict(), "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "history": history}, Path(checkpoint_path))
    if writer is not None:
        writer.close()
    model.eval()
    return model, history


def load_segmentation_checkpoint(path) -> dict:
    """A downstream checkpoint written by :func:`train_segmentation`: ``{"epoch", "config"
    (DownstreamConfig), "model", "optimizer", "history"}``. A resume rebuilds the scheduler from the
    epoch: the cosine schedule is closed-form (:func:`make_scheduler`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"downstream checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not {"config", "model", "epoch"} <= set(state):
        raise ValueError(f"{path} is not a downstream checkpoint (keys {sorted(state)[:8]}); "
                         f"a pretraining checkpoint goes to --pretrained")
    state["config"] = DownstreamConfig.from_dict(state["config"])
    return state

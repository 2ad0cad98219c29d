"""Image-to-LiDAR pretraining (PPKT, SLidR and CMCR), from a notebook or the command line.

    python -m cmcr_lite.pretrain --config lite --output-dir outputs/pretrain/ppkt
    python -m cmcr_lite.pretrain --config lite --output-dir outputs/pretrain/cmcr --set method=cmcr
    python -m cmcr_lite.pretrain --config full --set dataroot=/data/sets/nuscenes image_weights=moco_v2_800ep_pretrain.pth.tar
    torchrun --nproc_per_node 4 -m cmcr_lite.pretrain --config full --set method=cmcr dataroot=... image_weights=...
    python -m cmcr_lite.pretrain --config lite --output-dir outputs/pretrain/ppkt --resume

One ``PretrainConfig`` holds every setting, with the paper's values as defaults (``full()``) and a
``lite()`` preset for the embedded dataset on a 2-core CPU. Which data a method reads (superpixels,
MIM masks, occupancy queries) is derived by the config itself from the method and its options
(``data_needs``), so presets, ``--set`` overrides, papermill parameters and ``dataclasses.replace``
all agree. A checkpoint (model, optimizer, RNG states, history) is written atomically after every
epoch; ``--resume`` continues from it and reaches the same weights as an uninterrupted run, because
every random draw is seeded by (seed, epoch, step/index). Losses, learning rate and step times go
to TensorBoard (``<output_dir>/tensorboard``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cmcr_lite.cmcr import CMCRModel, CMCROptions
from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig, batch_to_sparse_tensor, collate_pairs
from cmcr_lite.distillation import DistillationModel, distillation_loss
from cmcr_lite.gradients import gradient_shares, term_gradients
from cmcr_lite.models.image_encoder import ResNet50Encoder
from cmcr_lite.models.minkunet import MinkUNetConfig
from cmcr_lite.runtime import (CheckpointError, CommandLineParser, InputError, ResumeError, atomic_path,
                               check_field_types, check_resumable, checkpoint_kind, device_problem, override_fields,
                               read_checkpoint, reports_input_errors, resolve_device, save_checkpoint_atomic,
                               seed_everything)

METHODS = ("ppkt", "slidr", "cmcr")
CHECKPOINT_NAME = "checkpoint.pt"
MOCO_V2_FILE = "moco_v2_800ep_pretrain.pth.tar"
MOCO_V2_URL = f"https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/{MOCO_V2_FILE}"


def data_needs(method: str, cmcr: CMCROptions) -> dict:
    """Which optional data products a method reads, as ``PipelineConfig`` switches: superpixels
    (SLidR), MIM masks (CMCR with MIM) and occupancy queries (CMCR with occupancy). The one place
    that decides it; ``PretrainConfig`` applies it to its pipeline whenever it is built."""
    is_cmcr = method == "cmcr"
    return {"superpixels": method == "slidr", "mim_masks": is_cmcr and cmcr.mim,
            "occupancy": is_cmcr and cmcr.occupancy}


def default_num_workers() -> int:
    """Data-loading processes per training process: the CPU cores of this node shared among the
    processes torchrun starts on it (``LOCAL_WORLD_SIZE``), at most 8, at least 1."""
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 1) // per_node))


@dataclass
class PretrainConfig:
    """Every pretraining setting. Defaults: the paper's released configuration (docs/paper.md section 4.6)."""
    method: str = "ppkt"                 # "ppkt": point-pixel InfoNCE; "slidr": superpoint-superpixel; "cmcr"
    dataroot: str | None = None          # None: the embedded synthetic dataset
    version: str = "v1.0-trainval"
    split: str = "train"
    epochs: int = 10
    batch_size: int = 12                 # scans per step, summed over all processes (paper: 12 on 6 GPUs)
    lr: float = 1e-3                     # AdamW's peak learning rate
    # "constant": the released code (its cosine schedule is commented out); "cosine": lr * (1 + cos(pi t / T)) / 2
    # over the T steps of all epochs, so the last epochs take small steps and the run ends converged
    lr_schedule: str = "constant"
    weight_decay: float = 0.01           # AdamW's default, which the released code uses
    tau: float = 0.07                    # InfoNCE temperature
    num_matches: int = 2048              # point-pixel pairs sampled per step (PPKT)
    feature_dim: int = 64                # shared feature size, both modalities
    backbone: MinkUNetConfig = field(default_factory=MinkUNetConfig.full)
    image_encoder: str = "resnet50"      # "resnet50" (frozen, weights from image_weights) or "small_teacher"
    image_weights: str | None = None     # MoCo-v2 / torchvision ResNet-50 checkpoint path (MOCO_V2_FILE)
    random_image_encoder: bool = False   # True: allow a ResNet-50 without weights (a random teacher)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    seed: int = 0
    device: str = "auto"                 # "auto": cuda if available, else cpu
    num_workers: int | None = None       # data-loading processes per training process; None: default_num_workers()
    tensorboard: bool = True             # write losses, lr and step times to <output_dir>/tensorboard
    output_dir: str = "outputs/pretrain"
    cmcr: CMCROptions = field(default_factory=CMCROptions)  # used when method == "cmcr"
    # the per-term gradient diagnostic (cmcr_lite.gradients) every this many steps, into the history and
    # TensorBoard; 0: off. It costs one extra backward pass per loss term and changes no weight.
    gradient_every: int = 0

    def __post_init__(self):
        if isinstance(self.cmcr, dict):
            self.cmcr = CMCROptions(**self.cmcr)
        if isinstance(self.backbone, dict):
            self.backbone = MinkUNetConfig(**self.backbone)
        if isinstance(self.pipeline, dict):
            self.pipeline = PipelineConfig(**self.pipeline)
        if self.method in METHODS:
            # the data products follow the method and its options, whatever order fields were set in
            # (``replace``, ``from_dict`` and the CLI all pass through here)
            self.pipeline = replace(self.pipeline, **data_needs(self.method, self.cmcr))
        checks = {  # field: (valid, what is expected)
            "method": (self.method in METHODS, f"one of {METHODS}"), "epochs": (self.epochs >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"), "lr": (self.lr > 0, "> 0"),
            "lr_schedule": (self.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"), "tau": (self.tau > 0, "> 0"),
            "num_matches": (self.num_matches >= 2, ">= 2"), "feature_dim": (self.feature_dim >= 1, ">= 1"),
            "image_encoder": (self.image_encoder in ("resnet50", "small_teacher"), "'resnet50' or 'small_teacher'"),
            "device": (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                       "'auto', 'cpu', 'cuda' or 'cuda:N'"),
            "num_workers": (self.num_workers is None or self.num_workers >= 0, "None or >= 0"),
            # the data order and augmentations draw from numpy generators seeded by (seed, epoch, index)
            "seed": (self.seed >= 0, ">= 0"),
            "gradient_every": (self.gradient_every >= 0, ">= 0 (0: off)"),
            # CMCR's MIM needs masked images and its occupancy head needs query points
            "pipeline.mask_prob": (not self.pipeline.mim_masks or self.pipeline.mask_prob > 0, "> 0 with MIM"),
            "pipeline.occupancy_queries": (not self.pipeline.occupancy or self.pipeline.occupancy_queries > 0,
                                           "> 0 with occupancy"),
        }
        bad = [k for k, (ok, _) in checks.items() if not ok]
        if bad:
            value = lambda k: getattr(self.pipeline, k.split(".")[1]) if k.startswith("pipeline.") else getattr(self, k)  # noqa: E731
            raise ValueError("PretrainConfig: invalid " + ", ".join(f"{k}={value(k)!r} (expected {checks[k][1]})"
                                                                    for k in bad))

    @classmethod
    def lite(cls, **overrides) -> "PretrainConfig":
        """The embedded dataset on a 2-core CPU: lite MinkUNet, small self-supervised image teacher,
        112x208 crops, 2 scans per step. Same losses and temperature as the paper."""
        base = cls(dataroot=None, version="v1.0-synthetic", split="train", epochs=8, batch_size=2, lr=2e-3,
                   num_matches=1024, backbone=MinkUNetConfig.lite(), image_encoder="small_teacher",
                   pipeline=PipelineConfig.lite(), num_workers=0, output_dir="outputs/pretrain/lite",
                   cmcr=CMCROptions.lite())
        return replace(base, **overrides)

    @classmethod
    def full(cls, **overrides) -> "PretrainConfig":
        """The paper's setting (for ``method="cmcr"``: MIM masks with p 0.5, 2,048 occupancy queries)."""
        return replace(cls(pipeline=PipelineConfig.full(), cmcr=CMCROptions.full()), **overrides)

    @classmethod
    def from_preset(cls, preset: str, **fields) -> "PretrainConfig":
        """``lite()`` or ``full()`` with ``fields`` overridden; a field given as None keeps the preset's
        value, so a notebook parameter left at None means "the preset's default"."""
        if preset not in ("lite", "full"):
            raise ValueError(f"PretrainConfig.from_preset: preset must be 'lite' or 'full', got {preset!r}")
        fields = {k: v for k, v in fields.items() if v is not None}
        return cls.lite(**fields) if preset == "lite" else cls.full(**fields)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"PretrainConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------------------------------ models
def check_image_weights(config: PretrainConfig):
    """A ResNet-50 teacher needs its MoCo-v2 weights: a random frozen teacher would silently make
    every 2D feature meaningless. Raises ValueError naming the file to download (or a missing path)."""
    if config.image_encoder != "resnet50":
        return
    if config.image_weights is None and not config.random_image_encoder:
        raise ValueError(f"PretrainConfig: image_encoder='resnet50' needs image_weights, the MoCo-v2 ResNet-50 "
                         f"checkpoint {MOCO_V2_FILE} (download it from {MOCO_V2_URL}) and set "
                         f"image_weights=/path/to/{MOCO_V2_FILE}; or set random_image_encoder=true for a random "
                         f"frozen teacher (tests only), or image_encoder=small_teacher")
    if config.image_weights is not None and not Path(config.image_weights).is_file():
        raise ValueError(f"PretrainConfig: image_weights file not found: {config.image_weights}")


def build_image_encoder(config: PretrainConfig) -> nn.Module:
    """The 2D branch: ResNet-50 (weights from ``image_weights``) or the cached small teacher."""
    check_image_weights(config)
    if config.image_encoder == "resnet50":
        return ResNet50Encoder(out_dim=config.feature_dim, weights=config.image_weights, freeze_trunk=True)
    from cmcr_lite.paths import ensure_embedded_dataset
    from cmcr_lite.teacher import load_or_train_teacher

    root = ensure_embedded_dataset(config.dataroot) if config.dataroot is None else config.dataroot
    from cmcr_lite.data.nuscenes_loader import DatasetError

    try:
        return load_or_train_teacher(root, config.version)
    except DatasetError as e:
        raise DatasetError(f"image_encoder='small_teacher' trains on the dataset's 'teacher' split, which only the "
                           f"synthetic sets have ({e}); on nuScenes use image_encoder=resnet50 with "
                           f"image_weights=/path/to/{MOCO_V2_FILE}") from None


def build_model(config: PretrainConfig, image_trunk: nn.Module | None = None) -> nn.Module:
    """The method's model on the CPU: ``CMCRModel`` for CMCR, ``DistillationModel`` for PPKT / SLidR.
    ``image_trunk`` (optional) is copied, since the model replaces its heads: a caller's encoder
    (shared by several runs in a notebook) is never modified behind its back."""
    image_trunk = copy.deepcopy(image_trunk) if image_trunk is not None else None
    image_encoder = image_trunk if image_trunk is not None else build_image_encoder(config)
    if config.method == "cmcr":
        return CMCRModel(config.backbone, image_encoder, config.feature_dim, config.tau, config.num_matches,
                         config.cmcr, mim_stride=config.pipeline.mim_stride)
    return DistillationModel(config.backbone, image_encoder, config.feature_dim)


def load_pretrained_model(path, image_trunk: nn.Module) -> tuple:
    """``(model, config)``: a pretraining model (3D trunk, heads and image branch) from a file holding
    ``"model"`` and ``"config"`` (a pretraining checkpoint, or a converged trunk the bench exported),
    in eval mode on the CPU. ``image_trunk``: an image encoder of the config's architecture, copied;
    its weights are replaced by the file's, so the 2D features are the ones the 3D trunk learnt from."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = PretrainConfig.from_dict(state["config"])
    model = build_model(config, image_trunk)
    model.load_state_dict(state["model"])
    return model.eval(), config


def training_losses(model: nn.Module, config: PretrainConfig, batch: dict, x, generator=None) -> dict:
    """One step's loss terms ``{"loss": total, ...}`` for a collated batch and its sparse tensor ``x``
    (``model`` may be wrapped in DistributedDataParallel: its forward is what runs)."""
    if config.method == "cmcr":
        return model(batch, x, generator)
    images = batch["images"].to(x.F.device)
    # PPKT reads only the paired pixels; SLidR pools every pixel of each superpixel
    pairs = batch["pair_pixels"].to(x.F.device) if config.method == "ppkt" else None
    f3d, f2d = model(x, images, pairs) if pairs is not None else model(x, images)
    return {"loss": distillation_loss(config.method, f3d, f2d, batch, config.tau, config.num_matches, generator)}


def trunk_gradient_shares(model: nn.Module, config: PretrainConfig, terms: dict) -> dict:
    """The per-term gradient diagnostic (``gradients.gradient_shares``) of one step's ``terms`` on the
    3D trunk's parameters: each weighted term of CMCR (``CMCRModel.term_weights``), or PPKT / SLidR's
    single loss. ``model`` unwrapped (not DistributedDataParallel)."""
    weights = model.term_weights() if config.method == "cmcr" else {"loss": 1.0}
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    return gradient_shares(term_gradients(terms, weights, params))


# ------------------------------------------------------------------------------------------ loop
LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config: PretrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of global step ``step`` (0-based) of ``total_steps``: ``config.lr`` for the
    constant schedule; for the cosine one ``lr * (1 + cos(pi * step / total_steps)) / 2``, which falls
    from ``lr`` at the first step towards 0 at the last. A pure function of the step, so a resumed run
    takes the same rates as an uninterrupted one."""
    if config.lr_schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


def resume_ignores(config: PretrainConfig) -> set:
    """The config fields a resumed run may change: where it writes and runs, and the epoch count of a
    constant-rate run (more epochs continue it; under a schedule they would change every rate taken)."""
    return ({"output_dir", "num_workers", "device", "tensorboard", "gradient_every"}
            | ({"epochs"} if config.lr_schedule == "constant" else set())
            | ({"cmcr"} if config.method != "cmcr" else set()))


def load_pretrain_checkpoint(path) -> dict:
    """A checkpoint written by :func:`pretrain` (``torch.load``-ed, its ``config`` a dict), or
    CheckpointError naming the file: missing, truncated or corrupt, a downstream checkpoint, keys
    missing, or a config this version cannot read."""
    state = read_checkpoint(path, "pretraining checkpoint")
    if checkpoint_kind(state) == "downstream":
        raise CheckpointError(f"{path} is a downstream checkpoint (python -m cmcr_lite.downstream, mode "
                              f"{state['config'].get('mode')!r}), not a pretraining one: a pretraining run resumes "
                              f"only from its own {CHECKPOINT_NAME}; use another output_dir")
    missing = {"epoch", "config", "model", "optimizer", "history", "rng"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a pretraining checkpoint: keys {sorted(missing)} are missing "
                              f"(it has {sorted(state)[:8]})")
    try:
        PretrainConfig.from_dict(state["config"])
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: its config cannot be read ({e})") from None
    return state


def step_generator(seed: int, epoch: int, step: int, device=None) -> torch.Generator:
    """A CPU generator per (seed, epoch, step): the same draws on CPU and GPU, and after a resume."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) * 100_003 + step)
    return g


def rng_state() -> dict:
    """Torch, NumPy and Python RNG states as tensors and plain values, so the checkpoint loads with
    ``torch.load(weights_only=True)`` (no pickled NumPy objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])


def _distributed():
    """(rank, world_size, local_rank) from torchrun's environment, initialising the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def pretrain(config: PretrainConfig, resume: bool = False, progress: bool = True, stop_after_epoch: int | None = None,
             keyframes=None, image_trunk: nn.Module | None = None) -> dict:
    """Train; return ``{"model": DistillationModel, "history": [...], "checkpoint": path}``.

    ``stop_after_epoch`` ends the run early as an interruption would (used to test ``resume``).
    ``keyframes`` / ``image_trunk`` may be passed in to reuse loaded objects (notebooks, tests).
    """
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    if image_trunk is None:
        check_image_weights(config)  # before any data is read
    rank, world, local_rank = _distributed()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    out_dir = Path(config.output_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    seed_everything(config.seed + rank)
    state = None
    if resume and ckpt_path.is_file():  # read and checked before any data is read or model built
        state = load_pretrain_checkpoint(ckpt_path)
        check_resumable(PretrainConfig.from_dict(state["config"]), config, resume_ignores(config), ckpt_path)

    if keyframes is None:
        root = ensure_embedded_dataset() if config.dataroot is None else config.dataroot
        version = EMBEDDED_VERSION if config.dataroot is None else config.version
        keyframes = NuScenesKeyframes(root, version, split=config.split)
    dataset = PairedScanDataset(keyframes, config.pipeline, seed=config.seed)
    model = build_model(config, image_trunk).to(device)
    if world > 1:
        import MinkowskiEngine as ME
        from torch.nn.parallel import DistributedDataParallel

        model = ME.MinkowskiSyncBatchNorm.convert_sync_batchnorm(model)  # the paper syncs BN across GPUs
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    core = model.module if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    start_epoch, history = 0, []
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        set_rng_state(state["rng"])

    if rank == 0:  # once model, data and resume are checked: a run that cannot start leaves no config
        with atomic_path(out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(config.to_dict(), indent=1))
    per_process = max(1, config.batch_size // world)
    workers = default_num_workers() if config.num_workers is None else config.num_workers
    writer = None
    if config.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
    for epoch in range(start_epoch, config.epochs):
        dataset.set_epoch(epoch)
        if world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(dataset, seed=config.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = torch.utils.data.RandomSampler(
                dataset, generator=torch.Generator().manual_seed(config.seed * 10_007 + epoch))
        loader = torch.utils.data.DataLoader(dataset, batch_size=per_process, sampler=sampler,
                                             collate_fn=collate_pairs, num_workers=workers,
                                             drop_last=len(dataset) >= per_process)
        model.train()
        bar = tqdm(loader, desc=f"{config.method} epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not progress or rank != 0)
        terms_seen, gradients = [], []
        steps_per_epoch = len(loader)
        tick = time.perf_counter()
        for step, batch in enumerate(bar):
            data_seconds = time.perf_counter() - tick  # waiting for the loader (workers or main process)
            x = batch_to_sparse_tensor(batch, device)
            generator = step_generator(config.seed + rank, epoch, step, device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + step, config.epochs * steps_per_epoch)
            terms = training_losses(model, config, batch, x, generator)
            global_step = epoch * steps_per_epoch + step
            if config.gradient_every and global_step % config.gradient_every == 0:
                gradients.append({"step": global_step, **trunk_gradient_shares(core, config, terms)})
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            terms_seen.append({k: float(v.detach()) for k, v in terms.items()})
            bar.set_postfix(loss=f"{terms_seen[-1]['loss']:.3f}")
            if writer is not None:
                for k, v in terms_seen[-1].items():
                    writer.add_scalar(f"pretrain/{k}", v, global_step)
                writer.add_scalar("pretrain/lr", optimizer.param_groups[0]["lr"], global_step)
                writer.add_scalar("time/data_seconds", data_seconds, global_step)
                writer.add_scalar("time/step_seconds", time.perf_counter() - tick, global_step)
                if gradients and gradients[-1]["step"] == global_step:
                    for k, v in gradients[-1].items():
                        for stat, value in (v.items() if k != "step" else ()):
                            writer.add_scalar(f"gradients/{k}_{stat}", value, global_step)
            tick = time.perf_counter()
        record = {"epoch": epoch, "steps": len(terms_seen), "lr": optimizer.param_groups[0]["lr"]}
        for k in (terms_seen[0] if terms_seen else {"loss": 0}):
            record[k] = float(np.mean([t[k] for t in terms_seen])) if terms_seen else float("nan")
        if gradients:
            record["gradients"] = gradients
        history.append(record)
        if rank == 0:
            save_checkpoint_atomic({
                "epoch": epoch, "config": config.to_dict(), "model": core.state_dict(),
                "model3d": core.backbone.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                "rng": rng_state(),
            }, ckpt_path)
            if progress:
                print(f"[{config.method}] epoch {epoch + 1}/{config.epochs}: loss {history[-1]['loss']:.4f}")
        if world > 1:
            torch.distributed.barrier()  # no rank starts the next epoch (or returns) before the checkpoint exists
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    if writer is not None:
        writer.close()
    return {"model": core, "history": history, "checkpoint": ckpt_path, "rank": rank}


# ------------------------------------------------------------------------------------------ CLI
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_fields(items) -> dict:
    """``["FIELD=VALUE", ...]`` (a ``--set`` list of top-level fields) -> {FIELD: VALUE}, each value
    read as JSON, else kept as text."""
    return {k: _parse_value(v) for k, _, v in (item.partition("=") for item in items)}


def config_from_args(args) -> PretrainConfig:
    """The config of a command line: ``--config`` (the lite or full preset, or a JSON file of fields),
    then the ``--set`` overrides, each type-checked against its field (nested ones included) before
    the config's own checks (``runtime.override_fields``), then ``--output-dir``. Any bad input is an
    InputError: one line ``error: ...`` naming the field and value, exit status 2."""
    if args.config in ("lite", "full"):
        base = (PretrainConfig.lite() if args.config == "lite" else PretrainConfig.full()).to_dict()
    else:
        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"--config {args.config!r} is neither 'lite', 'full' nor a JSON file")
        try:
            base = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"--config {path}: not a readable JSON file ({e})") from None
        if not isinstance(base, dict):
            raise InputError(f"--config {path}: expected a JSON object of PretrainConfig fields, "
                             f"got {type(base).__name__}")
        base = check_field_types(PretrainConfig, base, where=f"--config {path}: ")
    override_fields(base, PretrainConfig, args.set)
    if args.output_dir:
        base["output_dir"] = args.output_dir
    try:
        cfg = PretrainConfig.from_dict(base)
        check_image_weights(cfg)
    except (ValueError, TypeError) as e:
        raise InputError(e) from None
    return cfg


@reports_input_errors
def main(argv=None):
    p = CommandLineParser(prog="python -m cmcr_lite.pretrain",
                          description="Image-to-LiDAR pretraining: PPKT, SLidR or CMCR (--set method=...).")
    p.add_argument("--config", default="lite", help="'lite', 'full' or a JSON file of PretrainConfig fields")
    p.add_argument("--set", nargs="*", metavar="FIELD=VALUE",
                   help="override fields (JSON values), e.g. method=cmcr epochs=20 cmcr.geomim=false "
                        "pipeline.occupancy_max_neighbours=all image_weights=/weights/" + MOCO_V2_FILE)
    p.add_argument("--output-dir", help="where checkpoint.pt and config.json go")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt if it exists")
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    problem = device_problem(cfg.device)
    if problem:
        raise InputError(problem)
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise InputError(f"output_dir {cfg.output_dir} is a file, not a folder")
    from cmcr_lite.data.nuscenes_loader import DatasetError
    from cmcr_lite.data.superpixels import SuperpixelCacheError
    from cmcr_lite.models.image_encoder import CheckpointMismatchError

    try:
        result = pretrain(cfg, resume=args.resume)
    except (DatasetError, CheckpointError, ResumeError, CheckpointMismatchError, SuperpixelCacheError) as e:
        raise InputError(e) from None  # the user's to fix (data, weights, checkpoint): say it in one line
    if result["rank"] == 0:
        print(f"checkpoint: {result['checkpoint']}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

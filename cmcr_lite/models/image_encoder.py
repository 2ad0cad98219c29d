"""The 2D branch: a frozen image trunk with two dense 64-d heads (docs/paper.md §3.2).

CMCR's default image model ("ppkt" decoder) is a ResNet-50 with MoCo-v2 weights, fully frozen,
followed by two trainable heads on its stride-32 C5 map (2048-d):

* ``shared``  (the paper's ``decoder``):  1x1 conv 2048 -> 64, bilinear upsample x32, L2-normalise.
  These are the shared features F^2D that meet the 3D features in the InfoNCE loss.
* ``specific`` (``decoder2``): 1x1 conv 2048 -> 64, bilinear upsample x32, *not* normalised.
  These are G^2D, the input (with the quantised shared code) of the image reconstruction decoder.

Both encoders here take images ``(B, 3, H, W)`` float in [0, 1] and normalise them with the
ImageNet mean/std themselves. ``forward`` returns the shared features ``(B, out_dim, H, W)``;
``forward_heads`` returns ``(shared, specific)`` like the paper's ``(x, x_recon)``.

* :class:`ResNet50Encoder` -- the full-scale trunk. torchvision 0.28 cannot be used beside the CPU
  torch 2.13 wheel ("operator torchvision::nms does not exist"), so :class:`ResNet50` is a compact
  re-implementation whose ``state_dict`` keys are torchvision's (``conv1``, ``bn1``,
  ``layer1.0.conv1`` ... ``fc``): torchvision and MoCo-v2 checkpoints load through
  :func:`load_resnet50_weights`.
* :class:`SmallImageTeacher` -- a few strided convolutions, for the embedded synthetic dataset.

:func:`freeze` turns a trunk into a fixed feature extractor (no gradients, BatchNorm in eval mode
even after a later ``encoder.train()``).
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "freeze", "is_frozen",
    "Bottleneck", "ResNet50", "DenseHead", "DenseImageEncoder", "ResNet50Encoder", "SmallImageTeacher",
    "CheckpointMismatchError", "load_resnet50_weights", "upsampled_at",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------- freezing
def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place and return it.

    Sets ``requires_grad=False`` on every parameter, puts the module in ``eval()`` mode (BatchNorm
    uses its running statistics) and marks it, so that :class:`DenseImageEncoder.train` keeps it in
    eval mode when the surrounding encoder is switched back to training.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    module._cmcr_frozen = True
    module.eval()
    return module


def is_frozen(module: nn.Module) -> bool:
    """True if :func:`freeze` was applied to ``module``."""
    return bool(getattr(module, "_cmcr_frozen", False))


# ----------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """torchvision-style ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4.

    (B, in_ch, H, W) -> (B, 4 * width, H / stride, W / stride).
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 (Bottleneck blocks, 3-4-6-3) with torchvision's parameter names.

    ``features(x)``: (B, 3, H, W) normalised image -> C5 (B, 2048, ceil(H/32), ceil(W/32)).
    ``forward(x)``: ImageNet logits (B, num_classes) through ``avgpool`` and ``fc`` (kept only so
    that torchvision checkpoints load strictly; CMCR uses C5).
    """

    out_dim = 2048
    stride = 32

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for i, (n_blocks, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck(in_ch, width, stride)]
            in_ch = width * Bottleneck.expansion
            blocks += [Bottleneck(in_ch, width) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------------- encoders
class DenseHead(nn.Module):
    """1x1 conv ``in_dim -> out_dim``, bilinear upsampling to a given size, optional L2 norm.

    ``forward(feats (B, in_dim, h, w), size=(H, W)) -> (B, out_dim, H, W)``; with ``normalize``
    every pixel's vector has unit L2 norm over the channel axis.
    """

    def __init__(self, in_dim: int, out_dim: int, normalize: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.normalize = normalize

    def forward(self, feats: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        out = F.interpolate(self.proj(feats), size=size, mode="bilinear", align_corners=False)
        return F.normalize(out, dim=1) if self.normalize else out

    def at_pixels(self, feats: torch.Tensor, pixels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``forward(feats, size)`` read at ``pixels`` (M, 3) (image, row, col) only: (M, out_dim)."""
        out = upsampled_at(self.proj(feats), pixels[:, 0], pixels[:, 1:], size)
        return F.normalize(out, dim=1) if self.normalize else out


class DenseImageEncoder(nn.Module):
    """Common interface of the 2D branch: normalisation -> trunk -> per-pixel heads.

    Args:
        trunk: module mapping normalised (B, 3, H, W) to (B, trunk_dim, H/stride, W/stride).
        trunk_dim: channels of the trunk output.
        stride: output stride of the trunk (32 for ResNet-50 C5).
        out_dim: channels of each head (64 in the paper).
        specific_head: also build the unnormalised ``specific`` head (G^2D).
        normalize_shared: L2-normalise the shared head (F^2D), as the paper does.

    ``forward(images (B, 3, H, W) float in [0, 1]) -> (B, out_dim, H, W)`` shared features.
    """

    def __init__(self, trunk: nn.Module, trunk_dim: int, stride: int, out_dim: int = 64,
                 specific_head: bool = True, normalize_shared: bool = True):
        super().__init__()
        self.trunk = trunk
        self.trunk_dim = trunk_dim
        self.stride = stride
        self.out_dim = out_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.shared = DenseHead(trunk_dim, out_dim, normalize=normalize_shared)
        self.specific = DenseHead(trunk_dim, out_dim, normalize=False) if specific_head else None

    def train(self, mode: bool = True) -> "DenseImageEncoder":
        """Like ``nn.Module.train`` but modules frozen with :func:`freeze` stay in eval mode."""
        super().train(mode)
        for m in self.modules():
            if is_frozen(m):
                nn.Module.train(m, False)
        return self

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> trunk map (B, trunk_dim, ~H/stride, ~W/stride).

        Runs without autograd when every trunk parameter is frozen (saves the activations).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        needs_grad = any(p.requires_grad for p in self.trunk.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
            return self.trunk(x)

    def forward_heads(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(shared, specific)``, each (B, out_dim, H, W); ``specific`` is None without that head."""
        feats = self.trunk_features(images)
        size = tuple(images.shape[-2:])
        specific = self.specific(feats, size) if self.specific is not None else None
        return self.shared(feats, size), specific

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.shared(self.trunk_features(images), tuple(images.shape[-2:]))

    def forward_at_pixels(self, images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Shared features of ``images`` at ``pixels`` (M, 3) (image, row, col) only: (M, out_dim),
        equal to ``forward(images)[pixels[:, 0], :, pixels[:, 1], pixels[:, 2]]``."""
        return self.shared.at_pixels(self.trunk_features(images), pixels, tuple(images.shape[-2:]))


class _ResNet50Trunk(ResNet50):
    """ResNet-50 whose ``forward`` returns C5 (the dense encoders call ``trunk(x)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNet50Encoder(DenseImageEncoder):
    """The paper's 2D branch: (frozen) ResNet-50 C5 -> two 1x1 heads 2048 -> 64 upsampled x32.

    Args:
        out_dim: head channels (64).
        weights: optional checkpoint path (torchvision or MoCo-v2), see :func:`load_resnet50_weights`.
        freeze_trunk: freeze the ResNet-50 (the paper does).
        specific_head, normalize_shared: see :class:`DenseImageEncoder`.

    (B, 3, H, W) in [0, 1] -> (B, out_dim, H, W); the trunk map is (B, 2048, H/32, W/32) for H, W
    divisible by 32 (7 x 13 at the paper's 224 x 416 crop).
    """

    def __init__(self, out_dim: int = 64, weights: Optional[str] = None, freeze_trunk: bool = True,
                 specific_head: bool = True, normalize_shared: bool = True):
        super().__init__(_ResNet50Trunk(), trunk_dim=2048, stride=32, out_dim=out_dim,
                         specific_head=specific_head, normalize_shared=normalize_shared)
        if weights is not None:
            load_resnet50_weights(self.trunk, weights)
        if freeze_trunk:
            freeze(self.trunk)


class SmallImageTeacher(DenseImageEncoder):
    """A small CNN image teacher for the synthetic dataset, with the ResNet-50 encoder's interface.

    Trunk: ``log2(stride)`` conv3x3 stride-2 + BN + ReLU layers (widths ``width, 2*width, ...``),
    then one conv3x3 stride-1 + BN + ReLU. Heads as in :class:`DenseImageEncoder`.

    Args:
        out_dim: head channels (64).
        width: channels of the first layer.
        stride: output stride of the trunk, a power of two (4 or 8).

    (B, 3, H, W) in [0, 1] -> (B, out_dim, H, W).
    """

    def __init__(self, out_dim: int = 64, width: int = 32, stride: int = 8, specific_head: bool = True,
                 normalize_shared: bool = True):
        n_down = int(round(math.log2(stride)))
        if stride < 2 or 2 ** n_down != stride:
            raise ValueError(f"SmallImageTeacher: stride must be a power of two >= 2, got {stride}")
        layers, c_in = [], 3
        for i in range(n_down):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)]
        super().__init__(nn.Sequential(*layers), trunk_dim=c_in, stride=stride, out_dim=out_dim,
                         specific_head=specific_head, normalize_shared=normalize_shared)


# ----------------------------------------------------------------------------------- loading
class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; the message names file and keys."""


_MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.")


def _extract_resnet_state_dict(obj, path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Return (state_dict with torchvision names, format name) from a loaded checkpoint object."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(
            f"{path}: expected a state_dict (name -> tensor) or a dict with a 'state_dict' entry, "
            f"got {type(obj).__name__}")
    for prefix in _MOCO_PREFIXES:
        if any(k.startswith(prefix) for k in obj):
            # MoCo: keep the query encoder, drop its MLP projection head (fc.0 / fc.2) and the
            # key encoder / queue.
            sd = {k[len(prefix):]: v for k, v in obj.items()
                  if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}
            return sd, "moco"
    if any(k.startswith("module.") for k in obj):
        return {k[len("module."):]: v for k, v in obj.items()}, "torchvision"
    return dict(obj), "torchvision"


def load_resnet50_weights(model: nn.Module, path: str, max_listed: int = 10) -> Dict[str, object]:
    """Load a ResNet-50 checkpoint into ``model`` (a :class:`ResNet50` or a :class:`ResNet50Encoder`).

    Accepted files (``torch.load``-able, tensors only):
      * a plain torchvision ``state_dict`` (``conv1.weight``, ..., ``fc.bias``), optionally with a
        ``module.`` prefix;
      * a MoCo-v2 checkpoint ``{'state_dict': {'module.encoder_q.conv1.weight', ...,
        'module.encoder_q.fc.0.weight', ...}, ...}``: the ``module.encoder_q.`` prefix is stripped,
        the MLP head ``fc.*`` and ``encoder_k`` / queue entries are dropped (``model.fc`` keeps its
        initial values; it is not used by the dense encoders).

    ``num_batches_tracked`` buffers may be absent (old torchvision files). Anything else missing,
    unexpected or of the wrong shape raises :class:`CheckpointMismatchError` naming ``path`` and the
    offending keys; nothing is loaded in that case.

    Returns:
        ``{'format': 'torchvision' | 'moco', 'loaded': int (tensors copied), 'missing_ok': [keys]}``.
    """
    target = model.trunk if isinstance(model, DenseImageEncoder) else model
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"load_resnet50_weights: checkpoint file not found: {path}") from None
    except Exception as exc:  # unpickling errors and the like
        raise CheckpointMismatchError(f"{path}: could not be read as a tensor checkpoint ({exc})") from exc
    sd, fmt = _extract_resnet_state_dict(obj, path)

    own = target.state_dict()
    tolerated = {k for k in own if k.endswith("num_batches_tracked")}
    if fmt == "moco":
        tolerated |= {k for k in own if k.startswith("fc.")}
    missing = sorted(k for k in own if k not in sd and k not in tolerated)
    unexpected = sorted(k for k in sd if k not in own)
    wrong_shape = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        def listing(title, keys):
            extra = f" (+{len(keys) - max_listed} more)" if len(keys) > max_listed else ""
            return f"\n  {title} ({len(keys)}): " + ", ".join(keys[:max_listed]) + extra
        msg = f"{path}: checkpoint ({fmt} format) does not match {type(target).__name__}:"
        if missing:
            msg += listing("missing keys", missing)
        if unexpected:
            msg += listing("unexpected keys", unexpected)
        if wrong_shape:
            msg += listing("shape mismatches", wrong_shape)
        raise CheckpointMismatchError(msg)

    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)  # state_dict() tensors share storage with the parameters/buffers
    return {"format": fmt, "loaded": len(sd), "missing_ok": sorted(k for k in own if k not in sd)}


def upsampled_at(maps: torch.Tensor, batch: torch.Tensor, pixels: torch.Tensor, size) -> torch.Tensor:
    """Values of ``F.interpolate(maps, size, mode='bilinear', align_corners=False)`` at given pixels,
    without computing the full map. A pretraining step reads a few thousand paired pixels of 12
    images: upsampling (and L2-normalising) every pixel first costs most of a lite PPKT step.

    Args:
        maps: (B, C, h, w) float; batch: (N,) int64 image index; pixels: (N, 2) int64 (row, col) in
        the upsampled (H, W) = ``size`` grid.

    Returns:
        (N, C) float, differentiable with respect to ``maps``.
    """
    h, w = maps.shape[-2:]
    H, W = size
    out = 0
    coords = []
    for p, n_in, n_out in ((pixels[:, 0], h, H), (pixels[:, 1], w, W)):
        s = ((p.to(maps.dtype) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)   # PyTorch's source index
        i0 = s.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        coords.append((i0, i1, (s - i0.to(maps.dtype)).unsqueeze(1)))
    (y0, y1, wy), (x0, x1, wx) = coords
    for yy, fy in ((y0, 1 - wy), (y1, wy)):
        for xx, fx in ((x0, 1 - wx), (x1, wx)):
            out = out + maps[batch, :, yy, xx] * (fy * fx)
    return out

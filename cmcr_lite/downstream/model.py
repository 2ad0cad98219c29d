"""The segmentation model (MinkUNet trunk + linear head) and loading a pretrained trunk into it."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from cmcr_lite.classes import NUM_CLASSES_16
from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.models.minkunet import MinkUNet, MinkUNetConfig
from cmcr_lite.models.slidr_layout import WeightsLayoutError, from_slidr_layout, slidr_state_dict


class SegmentationModel(nn.Module):
    """MinkUNet trunk + linear 1x1 head (``trunk_dim -> num_classes``; the official code's ``final``).

    A 1x1 sparse convolution at stride 1 is a per-voxel linear map, so the head is an ``nn.Linear``
    on the trunk's feature rows; it can then also be trained on cached features.

    Forward:
        x: ``ME.SparseTensor``, V voxels, coordinates (V, 4) int32 batch first, features (V, 1).
        returns: (V, num_classes) float32 logits, one row per input voxel, in the input's row order.
    """

    def __init__(self, backbone: Optional[MinkUNetConfig] = None, num_classes: int = NUM_CLASSES_16):
        super().__init__()
        self.trunk = MinkUNet(replace(backbone or MinkUNetConfig(), out_channels=None))
        self.head = nn.Linear(self.trunk.trunk_dim, num_classes)
        self.num_classes = num_classes
        # Fixed (never trained) per-channel standardisation before the head; identity unless
        # ``set_feature_normalization`` is called (``DownstreamConfig.normalize_features``).
        self.register_buffer("feature_mean", torch.zeros(self.trunk.trunk_dim))
        self.register_buffer("feature_scale", torch.ones(self.trunk.trunk_dim))

    def features(self, x) -> torch.Tensor:
        """(V, trunk_dim) trunk features."""
        return self.trunk(x).F

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(V, num_classes) logits of (V, trunk_dim) trunk features: ``head((f - mean) / scale)``."""
        return self.head((feats - self.feature_mean) / self.feature_scale)

    def forward(self, x) -> torch.Tensor:
        return self.logits_from_features(self.features(x))

    @torch.no_grad()
    def set_feature_normalization(self, mean: torch.Tensor, std: torch.Tensor, rel_floor: float = 1e-3) -> None:
        """Standardise trunk features before the head with fixed per-channel ``mean`` and ``std``
        ((trunk_dim,) each); stds below ``rel_floor * max(std)`` are floored (dead channels stay ~0).
        The model stays a linear classifier of the frozen features (an affine map folded into the head)."""
        std = std.to(self.feature_scale)
        self.feature_mean.copy_(mean.to(self.feature_mean))
        self.feature_scale.copy_(std.clamp_min(max(float(std.max()) * rel_floor, 1e-12)))

    def freeze_trunk(self) -> None:
        """Linear probing: no trunk parameter is trained. Call :meth:`train` afterwards as usual;
        it keeps the trunk in eval mode (BatchNorm statistics frozen) while frozen."""
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self._trunk_frozen = True
        self.trunk.eval()

    @property
    def trunk_frozen(self) -> bool:
        return getattr(self, "_trunk_frozen", False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trunk_frozen:
            self.trunk.eval()
        return self


class PretrainedWeightsError(ValueError):
    """Pretrained weights do not fit the trunk; the message names the file and the keys."""


_PREFIXES = ("module.", "model_points.", "model3d.", "backbone.", "trunk.")


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _load_object(path_or_state):
    """(the checkpoint dict, source description) from a path or an in-memory dict."""
    if isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — report any unpickling problem with the file name
            raise PretrainedWeightsError(f"cannot read pretrained checkpoint {path}: {type(e).__name__}: {e}") from None
        source = str(path)
    else:
        obj, source = path_or_state, "the given state dict"
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{source}: expected a dict (checkpoint or state_dict), got {type(obj).__name__}")
    return obj, source


def _read_checkpoint(obj, source):
    """(state_dict, source description) of a checkpoint dict in our layout."""
    for key in ("model3d", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key], f"{source} ['{key}']"
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedWeightsError(f"{source}: no weights found; expected key 'model3d' (a MinkUNet trunk "
                                     f"state_dict), 'model_points' (SLidR's layout) or a plain state_dict, "
                                     f"got keys {sorted(obj)[:10]}")
    return tensors, source


def find_key(d, name):
    """First value of ``name`` in a nested dict (depth-first), or None."""
    if not isinstance(d, dict):
        return None
    if name in d:
        return d[name]
    for v in d.values():
        found = find_key(v, name)
        if found is not None:
            return found
    return None


def load_pretrained_trunk(model: SegmentationModel, path_or_state, config: Optional[DownstreamConfig] = None) -> dict:
    """Copy pretrained trunk weights into ``model.trunk`` by matching names and shapes.

    Accepts a checkpoint file or dict in one of two layouts:

    * ours: key ``"model3d"`` (the pretraining trunk's state_dict, as written by
      :mod:`cmcr_lite.pretrain`), ``"state_dict"`` or ``"model"``, or a plain MinkUNet state_dict.
      Prefixes ``module.``, ``model_points.``, ``model3d.``, ``backbone.``, ``trunk.`` are stripped.
    * SLidR's ``Res16UNet34C`` names (:mod:`cmcr_lite.models.slidr_layout`): SLidR's / PPKT's
      ``{"model_points": ...}`` files, CMCR's ``{"state_dict": {"model_points.*", ...}}``, or such a
      state_dict; renamed to ours.

    Keys the trunk does not have (pretraining heads, codebook, image branch) are ignored.

    If ``config`` is given and the checkpoint's config records ``voxel_size`` / ``cylindrical``, they
    must equal the downstream ones (the official code asserts the same).

    Returns:
        ``{"source", "layout": "cmcr_lite" or "slidr", "loaded": [trunk keys], "ignored": [checkpoint
        keys not used]}``.
    Raises:
        PretrainedWeightsError naming the file and every missing or mismatched trunk key.
    """
    obj, source = _load_object(path_or_state)
    ckpt_config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    if config is not None and ckpt_config is not None:
        # SLidR's and CMCR's configs call ``cylindrical`` ``cylindrical_coordinates``
        for name, theirs_name in (("voxel_size", "voxel_size"), ("cylindrical", "cylindrical"),
                                  ("cylindrical", "cylindrical_coordinates")):
            theirs = find_key(ckpt_config, theirs_name)
            ours = getattr(config, name)
            if theirs is not None and theirs != ours:
                raise PretrainedWeightsError(f"{source}: pretrained with {theirs_name}={theirs!r} but the downstream "
                                             f"config has {name}={ours!r}; they must match")
    if slidr_state_dict(obj) is not None:
        try:
            new_state, dropped = from_slidr_layout(obj, model.trunk.state_dict(), source)
        except WeightsLayoutError as e:
            raise PretrainedWeightsError(str(e)) from None
        model.trunk.load_state_dict(new_state, strict=True)
        return {"source": source, "layout": "slidr", "loaded": sorted(new_state), "ignored": dropped}
    state, source = _read_checkpoint(obj, source)
    source_by_name = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            source_by_name.setdefault(_strip_prefixes(k), (k, v))
    target = model.trunk.state_dict()
    missing, mismatched, new_state, used = [], [], {}, set()
    for name, ref in target.items():
        if name not in source_by_name:
            if name.endswith("num_batches_tracked"):
                new_state[name] = ref
            else:
                missing.append(name)
            continue
        orig, tensor = source_by_name[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs trunk {tuple(ref.shape)}")
            continue
        new_state[name] = tensor.to(dtype=ref.dtype)
        used.add(orig)
    if missing or mismatched:
        lines = [f"pretrained weights in {source} do not fit the {type(model.trunk).__name__} trunk "
                 f"({len(target)} tensors):"]
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatches: " + "; ".join(mismatched[:8])
                         + (" ..." if len(mismatched) > 8 else ""))
        if missing:
            lines.append(f"  {len(missing)} missing keys: " + ", ".join(missing[:8])
                         + (" ..." if len(missing) > 8 else ""))
        lines.append("  (check that the downstream backbone config equals the pretraining one)")
        raise PretrainedWeightsError("\n".join(lines))
    model.trunk.load_state_dict(new_state, strict=True)
    return {"source": source, "layout": "cmcr_lite", "loaded": sorted(new_state),
            "ignored": sorted(set(state) - used)}

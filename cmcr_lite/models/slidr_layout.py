"""MinkUNet weights in SLidR's layout: the name map, and reading/writing SLidR and CMCR checkpoints.

SLidR, PPKT and CMCR share their 3D weights as SLidR's ``Res16UNet34C`` (``model/res16unet.py``):
a ``torch.save``d dict whose ``"model_points"`` is that network's state_dict (the released
``minkunet_slidr_1gpu.pt`` and ``minkunet_ppkt_1gpu.pt``; also ``"model_images"``, ``"epoch"``,
``"config"``). CMCR's ``model.pt`` holds instead its LightningModule's whole ``"state_dict"``: the
same network under ``model_points.``, next to the image branch (``model_images.``) and the codebook
buffers (``embedding``, ``ema_count``, ``ema_weight``, ``unactivated_count``) (docs/paper.md §5).

Name map (i = 0..3 is the level; block names inside a stage are the same in both: ``{j}.conv1``,
``{j}.norm1``, ``{j}.conv2``, ``{j}.norm2``, ``{j}.downsample.0`` (1x1 conv), ``{j}.downsample.1`` (BN))::

    ours                  SLidR                       shape of .kernel (Res16UNet34C, in_channels 1)
    stem.0                conv0p1s1                   (27, 1, 32)       kernel 3, stride 1
    stem.1                bn0                         MinkowskiBatchNorm: .bn.weight/bias/running_*
    down.{i}.0            conv{i+1}p{2^i}s2           (8, c, c)         kernel 2, stride 2: conv1p1s2 .. conv4p8s2
    down.{i}.1            bn{i+1}                     bn1 .. bn4
    enc.{i}.{j}           block{i+1}.{j}              (27, in, out)     kernel 3; block1 .. block4
    up.{i}.0              convtr{i+4}p{2^(4-i)}s2     (8, in, out)      transposed, kernel 2: convtr4p16s2 .. convtr7p2s2
    up.{i}.1              bntr{i+4}                   bntr4 .. bntr7
    dec.{i}.{j}           block{i+5}.{j}              (27, in, out)     block5 .. block8
    head                  final                       (96, n_out) and bias (1, n_out): 1x1 (kernel volume 1)

Both networks are built from the same MinkowskiEngine modules with the same kernel sizes (a
hypercube kernel's weights are (kernel_volume, in, out); a 1x1 kernel's (in, out)), so every tensor
keeps its shape and offset order: the map only renames. Checked against SLidR's names and shapes in
``tests/test_slidr_layout.py``. SLidR's pretraining ``final`` is its projection head (96 -> 64); CMCR
adds ``final_class_level`` (its specific head G^3D), which has no counterpart here and is dropped.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

# codebook buffers of CMCR's LightningModule (official downstream/model_builder.py drops them by name)
CODEBOOK_BUFFERS = ("embedding", "ema_count", "ema_weight", "unactivated_count")


class WeightsLayoutError(ValueError):
    """A checkpoint that is not in SLidR's layout, or whose tensors do not fit the trunk; one line
    naming the source and the first offending key."""


def _prefix_pairs() -> List[Tuple[str, str]]:
    """(our module prefix, SLidR module prefix), both ending in '.'; see the module's table."""
    pairs = [("stem.0.", "conv0p1s1."), ("stem.1.", "bn0."), ("head.", "final.")]
    for i in range(4):
        pairs += [(f"down.{i}.0.", f"conv{i + 1}p{2 ** i}s2."), (f"down.{i}.1.", f"bn{i + 1}."),
                  (f"enc.{i}.", f"block{i + 1}."),
                  (f"up.{i}.0.", f"convtr{i + 4}p{2 ** (4 - i)}s2."), (f"up.{i}.1.", f"bntr{i + 4}."),
                  (f"dec.{i}.", f"block{i + 5}.")]
    return pairs


def _rename(key: str, pairs) -> Optional[str]:
    for src, dst in pairs:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def slidr_name(key: str) -> Optional[str]:
    """SLidR's name of one of our MinkUNet state_dict keys (``"enc.0.1.conv1.kernel"`` ->
    ``"block1.1.conv1.kernel"``), or None if ``key`` is not one of ours."""
    return _rename(key, _prefix_pairs())


def our_name(key: str) -> Optional[str]:
    """Our name of a SLidR ``Res16UNet34C`` state_dict key, or None (e.g. ``final_class_level.*``)."""
    return _rename(key, [(b, a) for a, b in _prefix_pairs()])


def to_slidr_layout(state_dict: Dict[str, torch.Tensor]) -> dict:
    """``{"model_points": SLidR-named state_dict}`` of our MinkUNet's state_dict (tensors shared,
    not copied). A key that is not ours raises WeightsLayoutError."""
    out = {}
    for k, v in state_dict.items():
        name = slidr_name(k)
        if name is None:
            raise WeightsLayoutError(f"to_slidr_layout: {k!r} is not a MinkUNet key (expected stem., down., enc., "
                                     f"up., dec. or head.)")
        out[name] = v
    return {"model_points": out}


def _flatten(d: dict, prefix: str = "") -> List[str]:
    """Names of the tensors in a nested dict, dotted."""
    names = []
    for k, v in d.items():
        if isinstance(v, dict):
            names += _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor):
            names.append(f"{prefix}{k}")
    return names


def slidr_state_dict(checkpoint) -> Optional[Tuple[Dict[str, torch.Tensor], List[str]]]:
    """(SLidR-named state_dict, names of the other tensors in ``checkpoint``) if ``checkpoint`` is in
    SLidR's layout, else None. Accepted: SLidR's/PPKT's file ``{"model_points": sd, ...}``, CMCR's
    ``{"state_dict": {"model_points.<name>": ..., ...}, ...}`` or that state_dict alone, and a bare
    SLidR state_dict. It must hold at least one name of the map (so our own layout is never taken)."""
    if not isinstance(checkpoint, dict):
        return None
    if isinstance(checkpoint.get("model_points"), dict):
        sd = checkpoint["model_points"]
        others = _flatten({k: v for k, v in checkpoint.items() if k != "model_points"})
    elif isinstance(checkpoint.get("state_dict"), dict):
        found = slidr_state_dict(checkpoint["state_dict"])
        if found is None:
            return None
        sd, others = found
        others = others + _flatten({k: v for k, v in checkpoint.items() if k != "state_dict"})
    elif any(isinstance(k, str) and k.startswith("model_points.") for k in checkpoint):
        sd = {k[len("model_points."):]: v for k, v in checkpoint.items() if k.startswith("model_points.")}
        others = _flatten({k: v for k, v in checkpoint.items() if not k.startswith("model_points.")})
    else:
        sd, others = checkpoint, []
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not any(our_name(k) is not None for k in sd):
        return None
    return sd, others


def from_slidr_layout(checkpoint, reference: Optional[Dict[str, torch.Tensor]] = None,
                      source: str = "the checkpoint") -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Our MinkUNet state_dict from a checkpoint in SLidR's layout (the forms of :func:`slidr_state_dict`).

    Args:
        checkpoint: the loaded dict.
        reference: our trunk's state_dict (e.g. ``model.trunk.state_dict()``); if given, the result
            holds exactly its keys (a missing ``num_batches_tracked`` is taken from it), with its
            dtypes, and a missing key or a shape mismatch raises WeightsLayoutError.
        source: how errors name the checkpoint (its file name).
    Returns:
        (state_dict in our names, dropped): ``dropped`` lists the checkpoint's tensors not used: the
        Res16UNet34C's own by their SLidR names (``final_class_level.*``, and ``final.*`` when
        ``reference`` has no ``head``), the rest by their dotted names in the checkpoint
        (``model_images.*``, codebook buffers).
    """
    found = slidr_state_dict(checkpoint)
    if found is None:
        keys = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsLayoutError(f"{source}: not in SLidR's layout (expected 'model_points' (SLidR/PPKT), "
                                 f"'model_points.*' keys (CMCR) or Res16UNet34C names such as conv0p1s1.kernel); "
                                 f"got {keys}")
    sd, dropped = found
    ours = {}
    for k, v in sd.items():
        name = our_name(k)
        if name is None:
            dropped.append(k)
        else:
            ours[name] = v
    if reference is None:
        return ours, sorted(dropped)
    out = {}
    for name, ref in reference.items():
        if name not in ours:
            if name.endswith("num_batches_tracked"):
                out[name] = ref.clone()
                continue
            raise WeightsLayoutError(f"{source}: {slidr_name(name)} (our {name}, {tuple(ref.shape)} in the trunk) is "
                                     f"missing from the file: not a complete Res16UNet34C of this depth")
        if tuple(ours[name].shape) != tuple(ref.shape):
            n_bad = sum(1 for k, r in reference.items() if k in ours and tuple(ours[k].shape) != tuple(r.shape))
            raise WeightsLayoutError(
                f"{source}: {slidr_name(name)} is {tuple(ours[name].shape)} in the file but {tuple(ref.shape)} in "
                f"the trunk ({name}; {n_bad} of {len(reference)} tensors differ): the downstream backbone must be "
                f"the pretrained one (a released Res16UNet34C needs the full preset, --config full)")
        out[name] = ours[name].to(dtype=ref.dtype)
    dropped += [slidr_name(k) for k in ours if k not in reference]
    return out, sorted(dropped)

"""Masked image modelling (MIM) and its geometry-enhanced variant (docs/paper.md §2, §3.3, §4.4).

A camera image is masked in 16x16-pixel patches (``data/masking.py``); the frozen 2D encoder sees the
masked image, and a small conv decoder reconstructs the *unmasked* image from

    G^2D + F̄^2D                      (``mim_input_features``)

where G^2D are the specific 2D features (``DenseImageEncoder.forward_heads(...)[1]``) and F̄^2D the
shared 2D features quantised by the unified codebook (straight-through). The reconstruction loss is
an MSE against the unmasked target (``reconstruction_loss``).

Geometry enhancement (``geometry_enhanced_replacement``) is the paper figure's "Feature Replacement in
Masked Area": inside masked pixels that some LiDAR point projects into, F̄^2D is replaced by the
quantised 3D feature F̄^3D of those points, so the decoder must fill the holes with LiDAR-derived
codes. **The released code does not implement it** (docs/paper.md §4.4, §6.2 item 1): nothing there
scatters 3D features into the image plane. Our version is a reconstruction from the figure.

Pairs inside masked pixels. The data pipeline drops every point-pixel pair whose pixel is masked
(those pairs must not enter the contrastive loss), yet those are exactly the pairs the replacement
needs: it keeps them apart as ``masked_pair_voxels`` / ``masked_pair_pixels`` (items and batches of
``cmcr_lite.data.pipeline``).

``CMCRModel.mim_terms`` (``cmcr_lite/cmcr.py``) is the one place that puts these pieces together
into the training loss.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

__all__ = [
    "ImageDecoder",
    "reconstruction_loss",
    "mim_input_features",
    "geometry_enhanced_replacement",
    "pairs_in_masked_pixels",
]


# ----------------------------------------------------------------------------------- decoder
class ImageDecoder(nn.Module):
    """The CMCR image reconstruction decoder (docs/paper.md §3.3), at full image resolution.

    Conv3x3 in_dim->32, ReLU, Conv3x3 32->16, ReLU, Conv3x3 16->3, Sigmoid (padding 1, so the
    spatial size is kept). ``(B, in_dim, H, W)`` float -> ``(B, 3, H, W)`` RGB in [0, 1].
    """

    def __init__(self, in_dim: int = 64, hidden: Tuple[int, int] = (32, 16), out_channels: int = 3):
        super().__init__()
        h1, h2 = hidden
        self.in_dim = in_dim
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, h1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(h1, h2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(h2, out_channels, 3, padding=1), nn.Sigmoid(),
        )
        # channels-last: the full-resolution 3x3 convolutions are most of a CMCR step on a CPU, and
        # oneDNN (and cuDNN) run them about 1.7x faster in this layout; the values are the same
        self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_dim:
            raise ValueError(f"ImageDecoder: expected features (B, {self.in_dim}, H, W), got {tuple(x.shape)}")
        return self.net(x.contiguous(memory_format=torch.channels_last))


def mim_input_features(specific_2d: torch.Tensor, quantized_2d: torch.Tensor) -> torch.Tensor:
    """The decoder input G^2D + F̄^2D (an addition, as the released code does; docs/paper.md §4.3-4.4).

    specific_2d: (B, D, H, W) float -- G^2D, the un-normalised specific 2D features.
    quantized_2d: (B, D, H, W) float -- F̄^2D, the quantised shared features (straight-through), or
        their geometry-enhanced version from ``geometry_enhanced_replacement``.
    """
    if specific_2d.shape != quantized_2d.shape:
        raise ValueError(f"mim_input_features: specific_2d {tuple(specific_2d.shape)} and quantized_2d "
                         f"{tuple(quantized_2d.shape)} must have the same (B, D, H, W) shape")
    return specific_2d + quantized_2d


# ----------------------------------------------------------------------------------- loss
def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, masks: Optional[torch.Tensor] = None,
                        masked_only: bool = False) -> torch.Tensor:
    """MSE between reconstructed and target images, a scalar.

    pred, target: (B, 3, H, W) float in [0, 1]; masks: (B, H, W) bool, True = masked pixel.

    * ``masked_only=False`` (default) -- **the released CMCR code** (docs/paper.md §4.4): the mean squared
      error over *all* pixels and channels of *all* images, masked or not; ``masks`` is ignored.
    * ``masked_only=True`` -- **the MAE convention**: the mean over the masked pixels only (all three
      channels), pooled over the batch, i.e. ``sum(mask * err^2) / (3 * sum(mask))``. Images without
      any masked pixel contribute nothing; if no pixel of the batch is masked the loss is 0 (still
      attached to the graph, so ``backward`` works and gives zero gradients).
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"reconstruction_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be (B, C, H, W)")
    sq = (pred - target.to(pred.dtype)) ** 2
    if not masked_only:
        return sq.mean()
    if masks is None:
        raise ValueError("reconstruction_loss: masked_only=True needs masks (B, H, W) bool")
    B, C, H, W = pred.shape
    if tuple(masks.shape) != (B, H, W):
        raise ValueError(f"reconstruction_loss: masks must be (B, H, W) = {(B, H, W)}, got {tuple(masks.shape)}")
    m = masks.to(device=pred.device, dtype=pred.dtype).unsqueeze(1)
    n = m.sum() * C
    return (sq * m).sum() / n.clamp(min=1.0)


# ----------------------------------------------------------------------------------- replacement
def geometry_enhanced_replacement(quantized_2d: torch.Tensor, quantized_3d_voxels: torch.Tensor,
                                  pair_voxels: torch.Tensor, pair_pixels: torch.Tensor,
                                  masks: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Geometry-enhanced MIM: "feature replacement in masked area" (paper figure; docs/paper.md §4.4).

    **Absent from the released CMCR code** (docs/paper.md §4.4 and §6.2 item 1); this reconstructs it.

    Every masked pixel that at least one LiDAR point projects into gets, instead of its quantised 2D
    feature F̄^2D, the *mean* quantised 3D feature F̄^3D of the points (voxels) paired with it.
    All other pixels -- unmasked ones, and masked ones that no point reaches -- are returned
    bit-identical. Pairs whose pixel is not masked are ignored, so the full (unfiltered) pair set
    can be passed. A voxel paired twice with the same pixel counts twice in the mean.

    Gradients: replaced pixels pass gradients to ``quantized_3d_voxels`` (divided among the voxels
    averaged there) and none to ``quantized_2d``; the other pixels pass them to ``quantized_2d`` only.

    Args:
        quantized_2d: (B, D, H, W) float -- F̄^2D of the B (= batch * cameras) images.
        quantized_3d_voxels: (V, D) float -- F̄^3D per voxel, rows indexed by ``pair_voxels``.
        pair_voxels: (M,) int64 -- voxel of each pair.
        pair_pixels: (M, 3) int64 -- (image, row, col) of each pair.
        masks: (B, H, W) bool, True = masked pixel; ``None`` means nothing is masked.
    Returns:
        (features (B, D, H, W) with the replacement applied, replaced (B, H, W) bool map).
        With no mask or no pair inside a masked pixel, ``features`` is ``quantized_2d`` itself.
    """
    if quantized_2d.dim() != 4:
        raise ValueError(f"geometry_enhanced_replacement: quantized_2d must be (B, D, H, W), got {tuple(quantized_2d.shape)}")
    B, D, H, W = quantized_2d.shape
    device = quantized_2d.device
    if quantized_3d_voxels.dim() != 2 or quantized_3d_voxels.shape[1] != D:
        raise ValueError(f"geometry_enhanced_replacement: quantized_3d_voxels must be (V, {D}), "
                         f"got {tuple(quantized_3d_voxels.shape)}")
    pair_voxels = torch.as_tensor(pair_voxels, device=device).long().reshape(-1)
    pair_pixels = torch.as_tensor(pair_pixels, device=device).long().reshape(-1, 3)
    if len(pair_voxels) != len(pair_pixels):
        raise ValueError(f"geometry_enhanced_replacement: pair_voxels ({len(pair_voxels)}) and pair_pixels "
                         f"({len(pair_pixels)}) must have the same length M")
    replaced = torch.zeros(B, H, W, dtype=torch.bool, device=device)
    if masks is None or len(pair_voxels) == 0:
        return quantized_2d, replaced
    masks = torch.as_tensor(masks, device=device).bool()
    if tuple(masks.shape) != (B, H, W):
        raise ValueError(f"geometry_enhanced_replacement: masks must be (B, H, W) = {(B, H, W)}, got {tuple(masks.shape)}")
    img, row, col = pair_pixels.unbind(1)
    bad = (img < 0) | (img >= B) | (row < 0) | (row >= H) | (col < 0) | (col >= W)
    if bool(bad.any()):
        raise IndexError(f"geometry_enhanced_replacement: {int(bad.sum())} pair_pixels lie outside the "
                         f"(B, H, W) = {(B, H, W)} images, e.g. {pair_pixels[bad][0].tolist()}")
    V = quantized_3d_voxels.shape[0]
    if bool(((pair_voxels < 0) | (pair_voxels >= V)).any()):
        raise IndexError(f"geometry_enhanced_replacement: pair_voxels must lie in [0, {V}), got range "
                         f"[{int(pair_voxels.min())}, {int(pair_voxels.max())}]")

    inside = masks[img, row, col]
    if not bool(inside.any()):
        return quantized_2d, replaced
    flat = (img * H + row) * W + col                                      # flat pixel index in (B, H, W)
    pixels, inverse = torch.unique(flat[inside], return_inverse=True)     # (U,), (M_in,)
    feats3d = quantized_3d_voxels[pair_voxels[inside]].to(quantized_2d.dtype)
    sums = torch.zeros(len(pixels), D, dtype=quantized_2d.dtype, device=device).index_add(0, inverse, feats3d)
    counts = torch.bincount(inverse, minlength=len(pixels)).to(quantized_2d.dtype)
    means = sums / counts.unsqueeze(1)

    per_pixel = quantized_2d.permute(0, 2, 3, 1).reshape(B * H * W, D)
    out = per_pixel.index_copy(0, pixels, means)                          # differentiable w.r.t. both
    out = out.reshape(B, H, W, D).permute(0, 3, 1, 2).contiguous()
    replaced.view(-1)[pixels] = True
    return out, replaced


# ----------------------------------------------------------------------------------- pairs in masked pixels
def pairs_in_masked_pixels(pair_pixels, masks):
    """Boolean (M,) array/tensor: True where a pair's pixel is masked (the pairs the replacement uses).

    pair_pixels: (M, 3) int64 (image, row, col); masks: (B, H, W) bool. Works on NumPy or torch.
    """
    pp = pair_pixels
    return masks[pp[:, 0], pp[:, 1], pp[:, 2]]

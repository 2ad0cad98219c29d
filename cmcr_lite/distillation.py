"""PPKT and SLidR: contrastive image-to-LiDAR distillation, the model and its loss (docs/paper.md §3-4).

The baselines CMCR builds on. A MinkUNet student with one 1x1 head gives shared 3D features F^3D;
a frozen image trunk with one trainable 1x1 head gives shared 2D features F^2D (both L2-normalised);
the loss pulls each paired (voxel, pixel) together against the other pairs:

* PPKT: point-pixel InfoNCE over ``num_matches`` sampled pairs;
* SLidR: superpoint-superpixel InfoNCE, features averaged over each SLIC superpixel.

``cmcr_lite.cmcr`` is the same layout for CMCR; ``cmcr_lite.pretrain`` holds the training loop.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmcr_lite.losses.infonce import point_pixel_infonce, superpixel_infonce
from cmcr_lite.models.image_encoder import DenseHead, freeze
from cmcr_lite.models.minkunet import MinkUNet, MinkUNetConfig


class DistillationModel(nn.Module):
    """3D student (MinkUNet trunk + 1x1 shared head F^3D) and 2D branch (frozen teacher trunk +
    trainable 1x1 shared head F^2D, upsampled to the image). Both outputs are L2-normalised.

    ``image_encoder``: a dense encoder (``ResNet50Encoder`` or the small teacher); its trunk is frozen
    and its heads replaced, so pass a copy if the caller keeps using it."""

    def __init__(self, backbone_config: MinkUNetConfig, image_encoder: nn.Module, feature_dim: int = 64):
        super().__init__()
        import MinkowskiEngine as ME

        self.backbone = MinkUNet(replace(backbone_config, out_channels=None))
        self.head3d = ME.MinkowskiConvolution(self.backbone.trunk_dim, feature_dim, kernel_size=1, bias=True,
                                              dimension=3)
        self.image_encoder = image_encoder
        freeze(self.image_encoder.trunk)
        # A fresh trainable 2D head, as PPKT's 1x1-conv "decoder" on the frozen ResNet-50.
        self.image_encoder.shared = DenseHead(self.image_encoder.trunk_dim, feature_dim, normalize=True)
        self.image_encoder.specific = None

    def features_3d(self, x) -> torch.Tensor:
        """(V, feature_dim) L2-normalised shared features, one row per input voxel."""
        return F.normalize(self.head3d(self.backbone(x)).F, dim=1)

    def features_2d(self, images: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim, H, W) L2-normalised shared pixel features of images in [0, 1]."""
        return self.image_encoder(images)

    def forward(self, x, images: torch.Tensor, pair_pixels: torch.Tensor | None = None):
        """(f3d (V, C), f2d (B, C, H, W)), or with ``pair_pixels`` (M, 3) (image, row, col) f2d (M, C)
        at those pixels only (what PPKT reads; equal values, a fraction of the time). Going through
        ``forward`` lets DistributedDataParallel synchronise gradients."""
        f2d = (self.features_2d(images) if pair_pixels is None
               else self.image_encoder.forward_at_pixels(images, pair_pixels))
        return self.features_3d(x), f2d


def gather_pixels(feats_2d: torch.Tensor, pair_pixels: torch.Tensor) -> torch.Tensor:
    """Features (M, C) of the paired pixels; feats_2d (B*cams, C, H, W), pair_pixels (M, 3) (image, row, col)."""
    return feats_2d[pair_pixels[:, 0], :, pair_pixels[:, 1], pair_pixels[:, 2]]


def distillation_loss(method: str, f3d: torch.Tensor, f2d: torch.Tensor, batch: dict, tau: float,
                      num_matches: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """PPKT or SLidR InfoNCE for a collated batch.

    f3d: (V, C) voxel features; f2d: (B*cams, C, H, W) pixel features (both L2-normalised), or for
    PPKT the (M, C) features of the batch's paired pixels, already gathered (``DistillationModel``
    with ``pair_pixels``).
    PPKT: positives are (voxel, pixel) pairs, negatives the other sampled pixels.
    SLidR: features are averaged over each superpixel (2D) and over the points falling in it (3D,
    the "superpoint"); positives are a superpixel and its superpoint.
    """
    device = f3d.device
    pair_voxels, pair_pixels = batch["pair_voxels"].to(device), batch["pair_pixels"].to(device)
    if method == "ppkt":
        pixel_feats = f2d if f2d.dim() == 2 else gather_pixels(f2d, pair_pixels)
        return point_pixel_infonce(f3d[pair_voxels], pixel_feats, tau=tau,
                                   num_matches=num_matches, generator=generator)
    sp = batch["superpixels"].to(device)                     # (B*cams, H, W) ids per image
    n_img = sp.shape[0]
    stride = int(sp.max().item()) + 1
    global_sp = sp + stride * torch.arange(n_img, device=device).view(-1, 1, 1)  # unique over the batch
    point_sp = global_sp[pair_pixels[:, 0], pair_pixels[:, 1], pair_pixels[:, 2]]
    pixel_feats = f2d.permute(0, 2, 3, 1).reshape(-1, f2d.shape[1])
    return superpixel_infonce(f3d[pair_voxels], pixel_feats, point_sp, global_sp.reshape(-1), tau=tau)

"""CMCR: contrastive distillation plus what only one modality knows (docs/paper.md sections 3-4).

On top of PPKT's point-pixel InfoNCE on the *shared* features F^3D, F^2D, CMCR adds
  * decoupled *specific* features G^3D, G^2D (second 1x1 heads) with an orthogonality loss;
  * a unified codebook shared by both modalities (EMA codes, cross-modal code matching, commitment);
  * masked image modelling: the image is rebuilt from G^2D + quantised F^2D, and (geometry-enhanced,
    the paper's figure) masked pixels take the quantised 3D features of the points projected there;
  * occupancy and intensity estimation from G^3D + quantised F^3D, on query points along LiDAR rays.

    L = L_NCE + w_orth L_orth + L_cmcm + L_commit(points) + L_commit(pixels)
        + w_mim L_MIM + w_occ L_occ + w_int L_intensity

``CMCROptions`` switches every part on or off (the ablation of notebook 07) and says which switches
reproduce the released code rather than the paper (``CMCROptions.released_code()``).

One deliberate saving: the 2D shared features are quantised at the image trunk's own resolution
(stride 8 for the small teacher, 32 for ResNet-50) and the quantised map is upsampled, instead of
quantising every pixel of the upsampled map as the released code does (GBs of distances per step).
The shared head is a 1x1 convolution followed by bilinear upsampling, so the low-resolution map holds
all the information of the full one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmcr_lite.losses.codebook import UnifiedCodebook
from cmcr_lite.losses.infonce import point_pixel_infonce
from cmcr_lite.losses.mim import ImageDecoder, geometry_enhanced_replacement, mim_input_features, reconstruction_loss
from cmcr_lite.losses.occupancy import OccupancyDecoder, occupancy_losses
from cmcr_lite.losses.orthogonality import orthogonality_loss
from cmcr_lite.models.image_encoder import DenseHead, freeze, upsampled_at
from cmcr_lite.models.minkunet import MinkUNet


@dataclass
class CMCROptions:
    """Which CMCR parts are on, and their weights. Defaults: the paper (figure + released values)."""
    nce: bool = True                 # point-pixel InfoNCE; False only for LiDAR-only controls (occupancy_only)
    decouple: bool = True            # specific heads G^3D, G^2D and L_orth
    orth_weight: float = 0.1         # released code: 0.1 (with an internal / D^2)
    orth_2d: bool = True             # paper figure: L_orth on both branches; released code: 3D only
    codebook: bool = True            # unified codebook: CMCM + commitment, and quantised F for the decoders
    num_codes: int = 400
    ema_decay: float = 0.999
    commitment: float = 0.25
    codebook_matches: int | None = None  # pairs for the codebook losses (drawn apart from the NCE
    #                                  pairs); None: as many as the NCE (PretrainConfig.num_matches, 2,048)
    mim: bool = True                 # masked image modelling (the pipeline then masks images, pipeline.mask_prob)
    mim_weight: float = 1.0
    mim_masked_only: bool = False    # released code: MSE over all pixels; True: only masked ones (MAE)
    geomim: bool = True              # paper: masked pixels get quantised 3D features; released code: absent
    occupancy: bool = True           # occupancy + intensity (queries, radius, neighbour cap: pipeline.occupancy_*)
    occupancy_weight: float = 1.0
    intensity_weight: float = 1.0

    def __post_init__(self):
        checks = {"orth_weight": self.orth_weight >= 0, "num_codes": self.num_codes >= 2,
                  "ema_decay": 0 < self.ema_decay < 1, "commitment": self.commitment >= 0,
                  "codebook_matches": self.codebook_matches is None or self.codebook_matches >= 2,
                  "mim_weight": self.mim_weight >= 0,
                  "occupancy_weight": self.occupancy_weight >= 0, "intensity_weight": self.intensity_weight >= 0,
                  "geomim": not self.geomim or self.mim,
                  "nce": self.nce or self.occupancy or self.mim}  # something to learn from
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("CMCROptions: invalid " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @classmethod
    def released_code(cls, **overrides) -> "CMCROptions":
        """What the official repository runs: no geometry-enhanced MIM, L_orth on 3D only."""
        return replace(cls(geomim=False, orth_2d=False), **overrides)

    @classmethod
    def full(cls, **overrides) -> "CMCROptions":
        """The paper's options. CMCROptions hold switches and weights only, no sizes: the sizes
        (pairs, queries, neighbours, image crops) follow ``PretrainConfig.num_matches`` and its
        ``pipeline``, so ``lite()`` and ``full()`` are the same options."""
        return cls(**overrides)

    @classmethod
    def lite(cls, **overrides) -> "CMCROptions":
        """The same as :meth:`full` (see there): the lite sizes live in ``PretrainConfig.lite``."""
        return cls(**overrides)

    @classmethod
    def contrastive_only(cls) -> "CMCROptions":
        return cls(decouple=False, codebook=False, mim=False, geomim=False, occupancy=False)

    @classmethod
    def contrastive_and_occupancy(cls) -> "CMCROptions":
        """PPKT's InfoNCE plus the occupancy and intensity terms read from the shared 3D features, no
        decoupling, codebook or MIM: does the LiDAR-only target still teach next to the NCE?"""
        return cls(decouple=False, codebook=False, mim=False, geomim=False, occupancy=True)

    @classmethod
    def occupancy_only(cls) -> "CMCROptions":
        """LiDAR-only self-supervision (ALSO-style): occupancy + intensity from the shared 3D features,
        no image term at all. A positive control: what the reconstruction target alone teaches."""
        return cls(nce=False, decouple=False, codebook=False, mim=False, geomim=False, occupancy=True)


ABLATION_STEPS = {
    "contrastive only": CMCROptions.contrastive_only(),
    "+ decoupling": replace(CMCROptions.contrastive_only(), decouple=True),
    "+ codebook": replace(CMCROptions.contrastive_only(), decouple=True, codebook=True),
    "+ MIM": replace(CMCROptions.contrastive_only(), decouple=True, codebook=True, mim=True),
    "+ GeoMIM": replace(CMCROptions.contrastive_only(), decouple=True, codebook=True, mim=True, geomim=True),
    "+ occupancy": replace(CMCROptions.contrastive_only(), decouple=True, codebook=True, occupancy=True),
    "full": CMCROptions(),
}


class CMCRModel(nn.Module):
    """Both branches with shared and specific heads, the codebook and the two decoders.

    ``forward(batch, x, generator)`` returns the dict of loss terms (and ``loss``, their weighted sum)
    so that DistributedDataParallel sees every parameter used inside one forward call.
    """

    def __init__(self, backbone_config, image_encoder: nn.Module, feature_dim: int = 64, tau: float = 0.07,
                 num_matches: int = 2048, options: CMCROptions = CMCROptions(), mim_stride: int = 1):
        super().__init__()
        import MinkowskiEngine as ME

        if not (isinstance(mim_stride, int) and mim_stride >= 1):
            raise ValueError(f"CMCRModel: mim_stride must be an integer >= 1, got {mim_stride!r}")
        self.opt, self.tau, self.num_matches = options, tau, num_matches
        self.mim_stride = mim_stride  # MIM's grid is 1/mim_stride of the image (PipelineConfig.mim_stride)
        self.backbone = MinkUNet(replace(backbone_config, out_channels=None))
        trunk_dim = self.backbone.trunk_dim
        self.head3d = ME.MinkowskiConvolution(trunk_dim, feature_dim, kernel_size=1, bias=True, dimension=3)
        self.head3d_specific = (ME.MinkowskiConvolution(trunk_dim, feature_dim, kernel_size=1, bias=True, dimension=3)
                                if options.decouple else None)
        self.image_encoder = image_encoder
        freeze(self.image_encoder.trunk)
        self.image_encoder.shared = DenseHead(image_encoder.trunk_dim, feature_dim, normalize=True)
        self.image_encoder.specific = (DenseHead(image_encoder.trunk_dim, feature_dim, normalize=False)
                                       if options.decouple else None)
        self.codebook = (UnifiedCodebook(options.num_codes, feature_dim, options.ema_decay, options.commitment)
                         if options.codebook else None)
        self.image_decoder = ImageDecoder(feature_dim) if options.mim else None
        self.occupancy_decoder = OccupancyDecoder(latent_dim=feature_dim) if options.occupancy else None

    def term_weights(self) -> dict:
        """{term: weight} of every loss term that is switched on, in the formula's order: ``loss`` is
        the sum of weight × term over these (the per-term gradient diagnostic reads them too)."""
        o = self.opt
        weights = {"nce": 1.0} if o.nce else {}
        if o.decouple:
            weights["orth"] = o.orth_weight
        if o.codebook:
            weights.update(cmcm=1.0, commit_points=1.0, commit_pixels=1.0)
        if o.mim:
            weights["mim"] = o.mim_weight
        if o.occupancy:
            weights.update(occupancy=o.occupancy_weight, intensity=o.intensity_weight)
        return weights

    # -- features ---------------------------------------------------------------------------------
    def features_3d(self, x):
        """Shared F^3D (V, D) L2-normalised and specific G^3D (V, D) or None."""
        trunk = self.backbone(x)
        shared = F.normalize(self.head3d(trunk).F, dim=1)
        specific = self.head3d_specific(trunk).F if self.head3d_specific is not None else None
        return shared, specific

    def _heads_2d_low(self, images: torch.Tensor):
        """The 2D heads at the trunk's resolution, before upsampling and normalisation: shared
        (B, D, h, w) and specific (B, D, h, w) or None."""
        enc = self.image_encoder
        trunk = enc.trunk_features(images)
        return enc.shared.proj(trunk), (enc.specific.proj(trunk) if enc.specific is not None else None)

    def features_2d(self, images: torch.Tensor):
        """Shared F^2D at full resolution (B, D, H, W) and at the trunk's resolution (B, D, h, w), both
        L2-normalised per pixel; specific G^2D at both resolutions (or None, None)."""
        shared_low, specific_low = self._heads_2d_low(images)
        size = tuple(images.shape[-2:])
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        full, low = F.normalize(up(shared_low), dim=1), F.normalize(shared_low, dim=1)
        if specific_low is None:
            return full, low, None, None
        return full, low, up(specific_low), specific_low

    # -- objective --------------------------------------------------------------------------------
    def forward(self, batch: dict, x, generator: torch.Generator | None = None) -> dict:
        """Every loss term of one step, and their weighted sum ``loss``.

        Args:
            batch: a collated batch (``cmcr_lite.data.pipeline.collate_pairs``) with pairs, images,
                masks and (for occupancy) queries and neighbourhoods; x: its ``ME.SparseTensor``;
            generator: draws the NCE and codebook pairs (seeded per step by the loop).

        Returns: dict of scalar tensors, each term next to its formula (F shared, G specific,
        F̄ = codebook-quantised F, (i, u) a paired voxel and pixel, τ the temperature) and the method
        that computes it:
            nce            L_NCE = -1/M Σ_i log softmax_j(<F3D_i, F2D_j> / τ)_i over M sampled pairs
                           (``nce_term``)
            orth           L_orth = ‖F3Dᵀ G3D‖_F / D² (+ the same on the 2D maps if ``orth_2d``), × orth_weight
                           (``orthogonality_term``)
            cmcm           L_CMCM = InfoNCE of S = P_p log P_vᵀ + P_v log P_pᵀ (soft code assignments)
            commit_points  β ‖F3D - sg[e_k(point)]‖²;  commit_pixels  β ‖F2D - sg[e_k(pixel)]‖²
                           (all three: ``codebook_terms``)
            mim            L_MIM = ‖decoder(G2D + F̄2D, masked pixels ← F̄3D if GeoMIM) - image‖², × mim_weight
                           (on a grid of 1/self.mim_stride of the image size, the target average-pooled to it;
                           ``mim_terms``)
            occupancy      L_occ = BCE(decoder([G3D + F̄3D]_j ‖ q - p_j), occupied(q)) over (query, neighbour) pairs
            intensity      L1(decoder(...)_intensity, intensity(q) / 255) on in/out queries
                           (both: ``occupancy_terms``)
            loss           Σ weight × term over the terms above that are switched on (``term_weights``)
        plus diagnostics that are not in ``loss``: ``perplexity_points``, ``perplexity_pixels``,
        ``geomim_pixels`` (masked pixels that received 3D features).
        """
        o, dev = self.opt, x.F.device
        f3d, g3d = self.features_3d(x)
        terms = {}
        # a LiDAR-only run never reads the images; every term that reads them is under one of these switches
        if o.nce or o.decouple or o.codebook or o.mim:
            pv = batch["pair_voxels"].to(dev)
            f2d_pairs, f2d_low, shared_low, g2d_low = self._step_features_2d(batch, dev)
        if o.nce:
            terms["nce"] = self.nce_term(f3d[pv], f2d_pairs, generator)
        if o.decouple:
            terms["orth"] = self.orthogonality_term(f3d, g3d, f2d_low, g2d_low)
        if o.codebook:
            terms |= self.codebook_terms(f3d, pv, f2d_pairs, generator)
        # the decoders read F̄^3D, quantised (after the codebook's EMA update) only where one reads it;
        # without a codebook they read the continuous F^3D
        q3d = self.codebook.quantize(f3d)[0] if o.codebook and (o.occupancy or o.geomim) else f3d
        if o.mim:
            terms |= self.mim_terms(batch, f2d_low, shared_low, g2d_low, q3d)
        if o.occupancy:
            terms |= self.occupancy_terms(batch, q3d, g3d)
        terms["loss"] = sum(w * terms[k] for k, w in self.term_weights().items())
        return terms

    def _step_features_2d(self, batch: dict, dev):
        """The 2D features a step reads: F^2D at the paired pixels (P, D); at the trunk's resolution
        F^2D (B, D, h, w) L2-normalised, the shared head's raw output (B, D, h, w) and G^2D (B, D, h, w)
        or None. The full-resolution maps are built only where a decoder reads them (MIM): the losses
        on pairs read the paired pixels only, the same values as indexing the upsampled map."""
        images, pp = batch["images"].to(dev), batch["pair_pixels"].to(dev)
        shared_low, g2d_low = self._heads_2d_low(images)
        f2d_low = F.normalize(shared_low, dim=1)
        f2d_pairs = F.normalize(upsampled_at(shared_low, pp[:, 0], pp[:, 1:], tuple(images.shape[-2:])), dim=1)
        return f2d_pairs, f2d_low, shared_low, g2d_low

    def nce_term(self, f3d_pairs: torch.Tensor, f2d_pairs: torch.Tensor, generator=None) -> torch.Tensor:
        """L_NCE, a scalar (nats): point-pixel InfoNCE of the paired F^3D (P, D) and F^2D (P, D) over
        ``num_matches`` pairs that ``generator`` draws."""
        return point_pixel_infonce(f3d_pairs, f2d_pairs, tau=self.tau, num_matches=self.num_matches,
                                   generator=generator)

    def orthogonality_term(self, f3d, g3d, f2d_low, g2d_low) -> torch.Tensor:
        """L_orth, a scalar (unweighted): F^3D ⟂ G^3D over the voxels (V, D), plus with ``orth_2d``
        F^2D ⟂ G^2D over the pixels of the trunk-resolution maps (B, D, h, w)."""
        orth = orthogonality_loss(f3d, g3d)
        if self.opt.orth_2d:
            flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731
            orth = orth + orthogonality_loss(flat(f2d_low), flat(g2d_low))
        return orth

    def codebook_terms(self, f3d, pv, f2d_pairs, generator=None) -> dict:
        """L_CMCM, L_commit(points), L_commit(pixels) (scalars) and the two code perplexities, on
        ``codebook_matches`` pairs drawn apart from the NCE's: F^3D (V, D) at voxels pv (P,), F^2D (P, D).
        In training mode the codebook's EMA moves its codes here."""
        m = min(len(pv), self.opt.codebook_matches or self.num_matches)
        sel = torch.randperm(len(pv), generator=generator, device="cpu")[:m].to(pv.device)
        cb = self.codebook(f3d[pv[sel]], f2d_pairs[sel])
        return {k: cb[k] for k in ("cmcm", "commit_points", "commit_pixels", "perplexity_points", "perplexity_pixels")}

    def mim_terms(self, batch: dict, f2d_low, shared_low, g2d_low, q3d) -> dict:
        """L_MIM (a scalar, MSE of [0, 1] RGB) and, with GeoMIM, ``geomim_pixels`` (masked grid cells
        fed 3D features). Reads the batch's ``masks`` (B, H, W), ``target_images`` (B, 3, H, W) and,
        with GeoMIM, ``masked_pair_voxels`` / ``masked_pair_pixels``; the 2D maps at the trunk's
        resolution (B, D, h, w): F^2D, the shared head's raw output and G^2D (or None); F̄^3D (V, D).
        Keeps the decoder's output in ``self.last_reconstruction`` (B, 3, H/mim_stride, W/mim_stride)."""
        o, dev = self.opt, q3d.device
        terms = {}
        if o.codebook:  # F̄^2D at the trunk's resolution
            B, D, h, w = f2d_low.shape
            q2d_low = self.codebook.quantize(f2d_low.permute(0, 2, 3, 1).reshape(-1, D))[0]
            q2d_low = q2d_low.reshape(B, h, w, D).permute(0, 3, 1, 2)
        else:
            q2d_low = None  # no codebook: the decoder reads the continuous F^2D
        # the reconstruction grid: 1/mim_stride of the crop; a cell is masked if any of its pixels is
        masks = batch["masks"].to(dev)
        k, size = self.mim_stride, tuple(masks.shape[-2:])
        H, W = size
        if H % k or W % k:
            raise ValueError(f"CMCRModel: mim_stride={k} must divide the image size (H, W) = {size}")
        grid = (H // k, W // k)
        masks = masks.reshape(len(masks), grid[0], k, grid[1], k).any(4).any(2) if k > 1 else masks
        target = batch["target_images"].to(dev)
        target = F.avg_pool2d(target, k) if k > 1 else target
        up_grid = lambda t: F.interpolate(t, size=grid, mode="bilinear", align_corners=False)  # noqa: E731
        # decoder input G^2D + F̄^2D. Bilinear upsampling is linear, so the sum is taken at the
        # trunk's resolution and upsampled once (one map at the grid instead of three).
        if q2d_low is not None:
            decoder_in = up_grid(mim_input_features(g2d_low, q2d_low) if g2d_low is not None else q2d_low)
        else:
            decoder_in = F.normalize(up_grid(shared_low), dim=1) + (up_grid(g2d_low) if g2d_low is not None else 0)
        if o.geomim:
            # masked cells take the mean F̄^3D of their points in place of F̄^2D; G^2D stays,
            # so each pair brings F̄^3D(voxel) + G^2D(cell), and their mean at a cell is the
            # paper's replacement plus that cell's G^2D
            mpv, mpp = batch["masked_pair_voxels"].to(dev), batch["masked_pair_pixels"].to(dev)
            cells = torch.stack([mpp[:, 0], mpp[:, 1] // k, mpp[:, 2] // k], 1)
            per_pair = q3d[mpv]
            if g2d_low is not None:
                per_pair = per_pair + upsampled_at(g2d_low, cells[:, 0], cells[:, 1:], grid)
            decoder_in, replaced = geometry_enhanced_replacement(
                decoder_in, per_pair, torch.arange(len(mpv), device=dev), cells, masks)
            terms["geomim_pixels"] = replaced.float().sum()
        pred = self.image_decoder(decoder_in)
        terms["mim"] = reconstruction_loss(pred, target, masks, o.mim_masked_only)
        self.last_reconstruction = pred.detach()
        return terms

    def occupancy_terms(self, batch: dict, q3d, g3d) -> dict:
        """L_occ (BCE, nats) and L_intensity (L1 of intensity / 255), scalars, read from the 3D latents
        G^3D + F̄^3D (V, D) each (F̄^3D alone without decoupling) at the batch's query points."""
        dev = q3d.device
        if "queries" not in batch:
            raise ValueError("CMCR occupancy needs query points: build the batch with PipelineConfig(occupancy=True)")
        latents = (q3d + g3d if g3d is not None else q3d)[batch["voxel_of_point"].to(dev)]
        points = batch["points"][:, :3].to(dev)
        # neighbourhoods come with the batch: the data pipeline searched them in its workers
        qi, pi = batch["neighbour_query"].to(dev), batch["neighbour_point"].to(dev)
        pred = self.occupancy_decoder.forward_pairs(latents, batch["queries"].to(dev), points, qi, pi)
        occ = occupancy_losses(pred, batch["query_occupied"].to(dev), batch["query_intensity"].to(dev), qi)
        return {"occupancy": occ["occupancy"], "intensity": occ["intensity"]}

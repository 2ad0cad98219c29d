"""Multi-modal unified codebook (docs/paper.md §3.3, §4.3): quantisation, CMCM, EMA and commitment.

CMCR quantises the *shared* features of both modalities with **one** codebook of K = 400 codes of
D = 64 dimensions, so that a LiDAR point and the pixel it projects to are pushed to the same code.
The codebook is adapted from CMG's ``Cross_VQEmbeddingEMA`` and has four parts:

1. **Quantisation** (:meth:`UnifiedCodebook.quantize`). The nearest code by squared L2 distance,
   computed on *detached* features, with the straight-through (ST) estimator
   ``x̄ = x + sg[e_{k*} − x]``: the forward value is the code, the backward is the identity.
   In CMCR, F̄³ᴰ (ST) is added to G³ᴰ before the occupancy decoder and F̄²ᴰ (ST) to G²ᴰ before the
   image decoder.
2. **Cross-modal code matching, CMCM** (on M paired features, paper: a separately drawn set of
   2,048 pairs). Soft assignments with gradient, ``P[i, k] = softmax_k(−‖x_i − e_k‖)`` (a
   distance, not a squared one), then

       S = P_p · log P_vᵀ + P_v · log P_pᵀ                      (M × M)
       L_cmcm = −1/M Σ_i log( exp(S_ii) / Σ_j exp(S_ij) )      (InfoNCE, temperature 1)

   ``S_ij`` is minus the sum of the two cross-entropies between point i's and pixel j's code
   distributions, so the loss asks each point to share its code distribution with its own pixel
   more than with the other pixels.
3. **EMA update of the codes** (no optimizer), with hard assignments k*(·) of both modalities:

       N ← γ N + (1−γ) n_p                    n_p[k] = #points assigned to k
       N ← (N + ε) / (ΣN + K ε) · ΣN           (Laplace smoothing)
       W ← γ W + (1−γ)/2 Σ_{i: k*(p_i)=k} p_i + (1−γ)/2 Σ_{i: k*(p_i)=k} v_i

   then the same with the roles of points p and pixels v swapped (pixel assignments, pixel sums and
   the sums of the *paired point* features), then (multi-GPU) all-reduce-average of N and W, then
   ``e_k = normalize(W_k / N_k)``. γ = 0.999, ε = 1e-5. Each code is thus pulled half towards the
   points that chose it and half towards their paired pixels.
4. **Cross-modal commitment**, β = 0.25:

       L_commit_p = 2β · MSE(p, sg[q_p]) + β · MSE(p, sg[q_v])
       L_commit_v = 2β · MSE(v, sg[q_v]) + β · MSE(v, sg[q_p])

   with ``q_p = e_{k*(p)}``, ``q_v = e_{k*(v)}`` the codes *before* this step's EMA update. Each
   modality is pulled to its own code and to the other modality's code.

CMCM, L_commit_p and L_commit_v each enter the total loss with weight 1 (docs/paper.md §4.3).

Differences from the official code (all deliberate, see docs/paper.md §4.3):

- **Memory.** The official training step quantises all voxels and all 12×224×416 ≈ 1.1 M pixels
  per GPU with one ``addmm`` each, so the pixel distance matrix alone is 1.1 M × 400 floats
  (≈ 1.8 GB, more with its temporaries) every step. :meth:`UnifiedCodebook.quantize` works in
  chunks of ``chunk_size`` rows, so its peak extra memory is ``chunk_size × K`` floats; callers
  should also quantise only the features a loss consumes.
- **Stable CMCM.** The official code uses ``log(P + 1e-10)`` and ``exp(S + max(−S))``. Since S ≤ 0,
  that shift is ``−min S`` and moves the exponents *up*, so it does not protect against overflow. Here
  ``log P`` is an exact ``log_softmax`` and the InfoNCE is a ``cross_entropy`` (log-sum-exp). The
  value agrees with the official one up to its 1e-10 / ε guards. (CMG also multiplies its CMCM by
  0.5; docs/paper.md records weight 1 for CMCR, which is what we return.)
- **Train-only EMA.** The official CMCR update has no ``self.training`` guard (CMG has one) and
  needs an initialised ``torch.distributed``. Here the EMA runs only in training mode and the
  all-reduce is skipped when ``torch.distributed`` is not initialised.
- **L2-normalised codes** after each update are a CMCR addition (CMG uses ``W / N`` as is).
- **Dead codes.** CMG resets dead codes: an ``unactivated_count`` buffer counts the steps since
  each code was last chosen; a code unused for more than 300 steps is overwritten with a randomly
  chosen code used within the last 100 steps, plus a small perturbation. In the official CMCR code this
  block is commented out (``pretrain/lightning_trainer.py`` lines 342-359) and the buffer is unused, so
  no reset happens. We do not reset by default either; ``reset_dead_codes=True`` enables a simpler
  opt-in rule (see :meth:`UnifiedCodebook.reset_dead`), and :meth:`UnifiedCodebook.dead_codes`
  reports codes whose EMA count is below a threshold.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cmcr_lite.losses.infonce import infonce_from_logits

__all__ = ["UnifiedCodebook", "perplexity", "cmcm_loss", "code_distances"]


def code_distances(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances ``‖x_i − e_k‖²`` via ``‖x‖² + ‖e‖² − 2 x·e``, clamped at 0.

    Args:
        x: (N, D) float.
        codes: (K, D) float.

    Returns:
        (N, K) float, differentiable with respect to both inputs.
    """
    d2 = torch.addmm((x * x).sum(1, keepdim=True) + (codes * codes).sum(1), x, codes.t(),
                     beta=1.0, alpha=-2.0)
    return d2.clamp_min(0.0)


def perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Perplexity of the code usage, ``exp(−Σ_k u_k log(u_k + 1e-10))`` with u the usage frequencies.

    Args:
        indices: (N,) int64 code indices in ``[0, num_codes)``.
        num_codes: K.

    Returns:
        Scalar float tensor: K for uniform usage, 1 when a single code is used (0-d, float32).
    """
    if indices.numel() == 0:
        return torch.zeros((), device=indices.device)
    usage = torch.bincount(indices.reshape(-1), minlength=num_codes).float() / indices.numel()
    return torch.exp(-(usage * torch.log(usage + 1e-10)).sum())


def cmcm_loss(log_p_points: torch.Tensor, log_p_pixels: torch.Tensor) -> torch.Tensor:
    """Cross-modal code matching InfoNCE from log soft assignments (docs/paper.md §4.3).

    Args:
        log_p_points: (M, K) float, ``log P_p``; row i is a log-distribution over the K codes.
        log_p_pixels: (M, K) float, ``log P_v``; row i is paired with point row i.

    Returns:
        Scalar tensor ``−1/M Σ_i log softmax_j(S)_ii`` with
        ``S = P_p · log P_vᵀ + P_v · log P_pᵀ`` (temperature 1), computed with log-sum-exp.
    """
    if log_p_points.shape != log_p_pixels.shape or log_p_points.dim() != 2:
        raise ValueError(
            "cmcm_loss: log_p_points and log_p_pixels must both be (M, K); got "
            f"{tuple(log_p_points.shape)} and {tuple(log_p_pixels.shape)}"
        )
    s = log_p_points.exp() @ log_p_pixels.t() + log_p_pixels.exp() @ log_p_points.t()  # (M, M)
    return infonce_from_logits(s)


class UnifiedCodebook(nn.Module):
    """One EMA codebook shared by the 3D and 2D shared features (docs/paper.md §3.3, §4.3).

    Buffers (in ``state_dict()``, not in ``parameters()``; only the EMA changes them):
        embedding: (K, D) float — the codes, initialised U(−1, 1) and then L2-normalised.
        ema_count: (K,) float — EMA of the number of features assigned to each code (init 0).
        ema_weight: (K, D) float — EMA of the sums of assigned features (init = ``embedding``).

    Args:
        num_codes: K (paper: 400).
        dim: D (paper: 64).
        decay: EMA decay γ (paper: 0.999).
        commitment: β (paper: 0.25).
        eps: Laplace-smoothing ε (paper: 1e-5).
        chunk_size: rows per distance block in :meth:`quantize`.
        reset_dead_codes: opt-in (default False, as the official code): after each training
            update, re-initialise the codes whose ``ema_count`` is below ``dead_threshold``.
        dead_threshold: the threshold of that reset.
    """

    def __init__(self, num_codes: int = 400, dim: int = 64, decay: float = 0.999,
                 commitment: float = 0.25, eps: float = 1e-5, chunk_size: int = 16384,
                 reset_dead_codes: bool = False, dead_threshold: float = 1e-3) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"UnifiedCodebook: num_codes and dim must be >= 1, got {num_codes}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"UnifiedCodebook: decay must be in [0, 1), got {decay}")
        if chunk_size < 1:
            raise ValueError(f"UnifiedCodebook: chunk_size must be >= 1, got {chunk_size}")
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        self.commitment = commitment
        self.eps = eps
        self.chunk_size = chunk_size
        self.reset_dead_codes = reset_dead_codes
        self.dead_threshold = dead_threshold
        embedding = F.normalize(torch.empty(num_codes, dim).uniform_(-1.0, 1.0), dim=1)
        self.register_buffer("embedding", embedding)
        self.register_buffer("ema_count", torch.zeros(num_codes))
        self.register_buffer("ema_weight", embedding.clone())

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}, "
                f"commitment={self.commitment}, eps={self.eps}")

    # ------------------------------------------------------------------ quantisation
    def _check_feats(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"UnifiedCodebook: {name} must be (N, {self.dim}) float; got {tuple(x.shape)}")

    @torch.no_grad()
    def nearest(self, x: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Index of the nearest code of each row (squared L2), computed in row chunks, no gradient.

        Args:
            x: (N, D) float.
            chunk_size: rows per block (default ``self.chunk_size``); peak extra memory is
                ``chunk_size × K`` floats instead of the official ``N × K``.

        Returns:
            (N,) int64 in ``[0, K)``.
        """
        self._check_feats(x, "x")
        step = chunk_size or self.chunk_size
        codes = self.embedding
        xd = x.detach().to(codes.dtype)
        out = torch.empty(xd.shape[0], dtype=torch.long, device=xd.device)
        for start in range(0, xd.shape[0], step):
            out[start:start + step] = code_distances(xd[start:start + step], codes).argmin(1)
        return out

    def quantize(self, x: torch.Tensor,
                 chunk_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Nearest-code quantisation with the straight-through estimator (no EMA, no loss).

        ``k*_i = argmin_k ‖sg[x_i] − e_k‖²`` and ``x̄_i = x_i + sg[e_{k*_i} − x_i]``, so
        ``∂x̄/∂x = I``. Distances are computed ``chunk_size`` rows at a time: the official code
        builds the full (N × K) matrix for every pixel of the batch (≈ 1.8 GB per step for
        12×224×416 pixels and 400 codes); quantise only the features a loss needs.

        Args:
            x: (N, D) float — e.g. shared 3D features of voxels, or shared 2D features of pixels
                flattened to rows.
            chunk_size: rows per distance block (default ``self.chunk_size``).

        Returns:
            quantized_st: (N, D) — code values forward, identity gradient to ``x``.
            indices: (N,) int64 — the chosen codes.
        """
        idx = self.nearest(x, chunk_size)
        q = self.embedding[idx].to(x.dtype)
        return x + (q - x).detach(), idx

    # ------------------------------------------------------------------ codebook loss + EMA
    def soft_assign_log(self, x: torch.Tensor) -> torch.Tensor:
        """``log P`` with ``P[i, k] = softmax_k(−‖x_i − e_k‖)``, differentiable in ``x``.

        Args:
            x: (M, D) float.

        Returns:
            (M, K) float log-probabilities. The distance is ``sqrt(max(d², 1e-12))`` so that the
            gradient stays finite when a feature sits exactly on a code.
        """
        d = code_distances(x.to(self.embedding.dtype), self.embedding).clamp_min(1e-12).sqrt()
        return F.log_softmax(-d, dim=1)

    @torch.no_grad()
    def _ema_half_step(self, idx: torch.Tensor, own: torch.Tensor, paired: torch.Tensor) -> None:
        """One modality's EMA update (count with Laplace smoothing, then weight), in place."""
        k = self.num_codes
        g = self.decay
        counts = torch.bincount(idx, minlength=k).to(self.ema_count.dtype)
        self.ema_count.mul_(g).add_(counts, alpha=1.0 - g)
        n = self.ema_count.sum()
        self.ema_count.copy_((self.ema_count + self.eps) / (n + k * self.eps) * n)
        own_sum = torch.zeros_like(self.ema_weight).index_add_(0, idx, own.to(self.ema_weight.dtype))
        paired_sum = torch.zeros_like(self.ema_weight).index_add_(
            0, idx, paired.to(self.ema_weight.dtype))
        self.ema_weight.mul_(g).add_(own_sum, alpha=0.5 * (1.0 - g)).add_(
            paired_sum, alpha=0.5 * (1.0 - g))

    @torch.no_grad()
    def ema_update(self, point_feats: torch.Tensor, pixel_feats: torch.Tensor,
                   idx_points: torch.Tensor, idx_pixels: torch.Tensor) -> None:
        """EMA update of the codes from M paired features and their hard assignments.

        Points first (point counts; Σ assigned points and Σ their paired pixels), then pixels
        (pixel counts; Σ assigned pixels and Σ their paired points), then the all-reduce average of
        ``ema_weight`` and ``ema_count`` when ``torch.distributed`` is initialised, then
        ``embedding = normalize(ema_weight / ema_count)``. Call it only in training; :meth:`forward`
        does so when ``self.training``.

        Args:
            point_feats, pixel_feats: (M, D) float (detached here); row i of each is a pair.
            idx_points, idx_pixels: (M,) int64 hard assignments.
        """
        p = point_feats.detach()
        v = pixel_feats.detach()
        self._ema_half_step(idx_points, p, v)
        self._ema_half_step(idx_pixels, v, p)
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            dist.all_reduce(self.ema_weight)
            dist.all_reduce(self.ema_count)
            self.ema_weight.div_(world)
            self.ema_count.div_(world)
        # a new tensor, not an in-place copy: this step's soft assignments saved the old codes for
        # their backward pass, and autograd refuses codes modified in place
        self.embedding = F.normalize(self.ema_weight / self.ema_count.unsqueeze(1), dim=1)
        if self.reset_dead_codes:
            self.reset_dead(torch.cat([p, v], 0))

    def dead_codes(self, threshold: Optional[float] = None) -> torch.Tensor:
        """Indices of codes whose ``ema_count`` is below ``threshold`` (default ``dead_threshold``).

        Returns:
            (n_dead,) int64, sorted.
        """
        t = self.dead_threshold if threshold is None else threshold
        return torch.nonzero(self.ema_count < t, as_tuple=False).reshape(-1)

    @torch.no_grad()
    def reset_dead(self, feats: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        """Opt-in dead-code reset (not in the official CMCR code, where it is commented out).

        Each dead code (``ema_count < threshold``) becomes a random row of ``feats``, L2-normalised;
        its ``ema_count`` is set to the threshold and its ``ema_weight`` to code × count, so that
        the next EMA step starts from the new code. Unlike CMG's rule (unused for 300 steps →
        a copy of an active code), this needs no step counter.

        Args:
            feats: (N, D) float — candidate features (e.g. this step's points and pixels).
            threshold: default ``dead_threshold``.

        Returns:
            (n_dead,) int64 — the codes that were reset.
        """
        dead = self.dead_codes(threshold)
        if dead.numel() == 0 or feats.shape[0] == 0:
            return dead[:0]
        t = self.dead_threshold if threshold is None else threshold
        pick = torch.randint(0, feats.shape[0], (dead.numel(),), device=feats.device)
        new = F.normalize(feats[pick].to(self.embedding.dtype), dim=1)
        self.embedding[dead] = new
        self.ema_count[dead] = t
        self.ema_weight[dead] = new * t
        return dead

    def forward(self, point_feats: torch.Tensor,
                pixel_feats: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Codebook losses on M paired features (paper: 2,048 pairs), plus the EMA in training.

        Args:
            point_feats: (M, D) float — shared 3D features of the sampled paired points/voxels.
            pixel_feats: (M, D) float — shared 2D features at their pixels (row i pairs row i).

        Returns:
            dict with
            - ``cmcm``: scalar, the CMCM InfoNCE (see :func:`cmcm_loss`);
            - ``commit_points``: scalar, ``2β MSE(p, sg[q_p]) + β MSE(p, sg[q_v])``;
            - ``commit_pixels``: scalar, ``2β MSE(v, sg[q_v]) + β MSE(v, sg[q_p])``;
            - ``perplexity_points``, ``perplexity_pixels``: scalars (no gradient);
            - ``indices_points``, ``indices_pixels``: (M,) int64 hard assignments;
            - ``counts_points``, ``counts_pixels``: (K,) int64 code usage of this call;
            - ``quantized_points``, ``quantized_pixels``: (M, D) ST-quantised features.
            All code values used (q_p, q_v, ST outputs) are those *before* this call's EMA update.
        """
        self._check_feats(point_feats, "point_feats")
        self._check_feats(pixel_feats, "pixel_feats")
        if point_feats.shape != pixel_feats.shape:
            raise ValueError(
                "UnifiedCodebook.forward: point_feats and pixel_feats must be paired (M, D); got "
                f"{tuple(point_feats.shape)} and {tuple(pixel_feats.shape)}")
        m = point_feats.shape[0]
        k = self.num_codes
        if m == 0:
            zero = point_feats.sum() * 0.0 + pixel_feats.sum() * 0.0
            empty = torch.zeros(0, dtype=torch.long, device=point_feats.device)
            counts = torch.zeros(k, dtype=torch.long, device=point_feats.device)
            return {"cmcm": zero, "commit_points": zero, "commit_pixels": zero,
                    "perplexity_points": zero.detach(), "perplexity_pixels": zero.detach(),
                    "indices_points": empty, "indices_pixels": empty.clone(),
                    "counts_points": counts, "counts_pixels": counts.clone(),
                    "quantized_points": point_feats, "quantized_pixels": pixel_feats}

        cmcm = cmcm_loss(self.soft_assign_log(point_feats), self.soft_assign_log(pixel_feats))

        idx_p = self.nearest(point_feats)
        idx_v = self.nearest(pixel_feats)
        q_p = self.embedding[idx_p].to(point_feats.dtype).clone()  # pre-update codes
        q_v = self.embedding[idx_v].to(pixel_feats.dtype).clone()

        if self.training:
            self.ema_update(point_feats, pixel_feats, idx_p, idx_v)

        b = self.commitment
        commit_p = 2 * b * F.mse_loss(point_feats, q_p) + b * F.mse_loss(point_feats, q_v)
        commit_v = 2 * b * F.mse_loss(pixel_feats, q_v) + b * F.mse_loss(pixel_feats, q_p)
        return {
            "cmcm": cmcm,
            "commit_points": commit_p,
            "commit_pixels": commit_v,
            "perplexity_points": perplexity(idx_p, k),
            "perplexity_pixels": perplexity(idx_v, k),
            "indices_points": idx_p,
            "indices_pixels": idx_v,
            "counts_points": torch.bincount(idx_p, minlength=k),
            "counts_pixels": torch.bincount(idx_v, minlength=k),
            "quantized_points": point_feats + (q_p - point_feats).detach(),
            "quantized_pixels": pixel_feats + (q_v - pixel_feats).detach(),
        }

"""Diagnostics of the multi-modal unified codebook (docs/paper.md §3.3, §4.3), used by notebook 04.

The codebook itself lives in :mod:`cmcr_lite.losses.codebook`; this module only *observes* it:

* :class:`CodebookRecorder` — a context manager that logs every training-mode call of every
  :class:`~cmcr_lite.losses.codebook.UnifiedCodebook` (perplexities, code usage, point/pixel code
  agreement, ``ema_count``) through a global forward hook, so a run of
  :func:`cmcr_lite.pretrain.pretrain` can be watched step by step without touching the loop;
* :func:`co_occurrence`, :func:`code_sharing`, :func:`mutual_information` — which codes points and
  their paired pixels share;
* :func:`paired_codes` — the codes of every point–pixel pair of a batch under a trained CMCR model;
* :func:`feature_spread` — how concentrated a set of unit features is (mean pairwise cosine);
* :func:`laplace_floor` — the ``ema_count`` that a never-chosen code converges to, because of the
  Laplace smoothing (relevant to any "dead code" threshold on ``ema_count``);
* :func:`quantisation_memory` — the size of a dense (rows × codes) distance matrix;
* :func:`toy_paired_features` — synthetic paired 3D/2D features with a modality gap.

    with CodebookRecorder() as rec:
        pretrain(cfg, ...)
    rec.arrays()["perplexity_pixels"]          # (steps,) one value per training step
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cmcr_lite.losses.codebook import UnifiedCodebook

__all__ = ["CodebookRecorder", "co_occurrence", "code_sharing", "mutual_information", "perplexity_from_counts",
           "paired_codes", "feature_spread", "laplace_floor", "quantisation_memory", "toy_paired_features"]


# ------------------------------------------------------------------------------------------ recording
class CodebookRecorder:
    """Logs every training-mode forward call of any :class:`UnifiedCodebook` while active.

    Uses ``torch.nn.modules.module.register_module_forward_hook`` (a global hook, removed on exit),
    so it also sees codebooks built inside :func:`cmcr_lite.pretrain.pretrain`. Eval-mode calls
    (no EMA update) are not logged.

    Each record (one per call, in ``self.records``) holds
        perplexity_points, perplexity_pixels: float — of this call's hard assignments;
        agreement: float — fraction of pairs whose point and pixel chose the same code;
        counts_points, counts_pixels: (K,) int64 numpy — this call's code usage;
        ema_count: (K,) float64 numpy — the codebook's ``ema_count`` after the call's EMA update;
        codes: (K, D) float32 numpy — the codes after the update (only with ``keep_codes=True``).
    """

    def __init__(self, keep_codes: bool = False):
        self.keep_codes = keep_codes
        self.records: List[dict] = []
        self._handle = None

    def _hook(self, module, inputs, output):
        if not isinstance(module, UnifiedCodebook) or not module.training:
            return
        ip, iv = output["indices_points"], output["indices_pixels"]
        rec = {
            "perplexity_points": float(output["perplexity_points"]),
            "perplexity_pixels": float(output["perplexity_pixels"]),
            "agreement": float((ip == iv).float().mean()) if ip.numel() else float("nan"),
            "counts_points": output["counts_points"].detach().cpu().numpy().astype(np.int64),
            "counts_pixels": output["counts_pixels"].detach().cpu().numpy().astype(np.int64),
            "ema_count": module.ema_count.detach().cpu().double().numpy().copy(),
        }
        if self.keep_codes:
            rec["codes"] = module.embedding.detach().cpu().float().numpy().copy()
        self.records.append(rec)

    def __enter__(self) -> "CodebookRecorder":
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def arrays(self) -> Dict[str, np.ndarray]:
        """The records stacked over steps: scalars → (T,), per-code arrays → (T, K) (codes (T, K, D)),
        plus ``never_used`` (T,): codes that no point and no pixel has chosen up to and including step t."""
        if not self.records:
            raise ValueError("CodebookRecorder.arrays: nothing recorded (was a UnifiedCodebook called in "
                             "training mode inside the `with` block?)")
        out = {k: np.stack([r[k] for r in self.records]) for k in self.records[0]}
        used = np.cumsum(out["counts_points"] + out["counts_pixels"], axis=0) > 0
        out["never_used"] = (~used).sum(1)
        return out


# ------------------------------------------------------------------------------------------ sharing
def co_occurrence(idx_points: torch.Tensor, idx_pixels: torch.Tensor, num_codes: int) -> np.ndarray:
    """(K, K) int64 counts ``C[a, b]`` = number of pairs whose point chose code a and pixel code b.

    Args:
        idx_points, idx_pixels: (M,) int64 hard assignments of paired points and pixels (row i pairs row i).
        num_codes: K.
    """
    a = torch.as_tensor(idx_points).reshape(-1).long().cpu()
    b = torch.as_tensor(idx_pixels).reshape(-1).long().cpu()
    if a.shape != b.shape:
        raise ValueError(f"co_occurrence: idx_points {tuple(a.shape)} and idx_pixels {tuple(b.shape)} must pair up")
    if a.numel() and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= num_codes):
        raise ValueError(f"co_occurrence: code indices must lie in [0, {num_codes})")
    return torch.bincount(a * num_codes + b, minlength=num_codes * num_codes).reshape(num_codes, num_codes).numpy()


def perplexity_from_counts(counts) -> float:
    """``exp(H(u))`` of the usage u = counts / Σ counts (K for uniform usage, 1 for one code)."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    total = c.sum()
    if total <= 0:
        return 0.0
    u = c[c > 0] / total
    return float(np.exp(-(u * np.log(u)).sum()))


def mutual_information(cooc: np.ndarray) -> float:
    """Mutual information (nats) between the point code and the paired pixel code,
    ``I = Σ_ab p_ab log(p_ab / (p_a p_b))`` with ``p_ab = C[a, b] / Σ C``."""
    c = np.asarray(cooc, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c / total
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def code_sharing(cooc: np.ndarray) -> dict:
    """Summary of a co-occurrence matrix (rows: point codes, columns: pixel codes).

    Returns a dict: pairs (M), agreement (fraction of pairs on one code, ``trace / M``),
    used_points / used_pixels / used_both / points_only / pixels_only (numbers of codes),
    perplexity_points / perplexity_pixels, mutual_information (nats) and its upper bound
    ``min(H_points, H_pixels)`` as ``max_mutual_information``.
    """
    c = np.asarray(cooc, dtype=np.int64)
    rows, cols = c.sum(1), c.sum(0)
    up, uv = rows > 0, cols > 0
    total = int(c.sum())
    return {
        "pairs": total,
        "agreement": float(np.trace(c) / total) if total else float("nan"),
        "used_points": int(up.sum()), "used_pixels": int(uv.sum()), "used_both": int((up & uv).sum()),
        "points_only": int((up & ~uv).sum()), "pixels_only": int((uv & ~up).sum()),
        "perplexity_points": perplexity_from_counts(rows), "perplexity_pixels": perplexity_from_counts(cols),
        "mutual_information": mutual_information(c),
        "max_mutual_information": math.log(min(perplexity_from_counts(rows), perplexity_from_counts(cols)) or 1.0),
    }


def paired_codes(model, batch: dict, device="cpu", return_features: bool = False,
                 batch_statistics: bool = False) -> Dict[str, torch.Tensor]:
    """Codes of every point–pixel pair of a collated batch under a CMCR model (never an EMA update).

    Args:
        model: a :class:`cmcr_lite.cmcr.CMCRModel` with a codebook. Only ``codebook.nearest`` is
            called, so the codes never move; BatchNorm follows the model's mode (see below).
        batch: from :func:`cmcr_lite.data.pipeline.collate_pairs`.
        return_features: also return the paired shared features.
        batch_statistics: run the networks with BatchNorm on this batch's statistics (training mode)
            and the codebook in eval mode, then restore the model's state dict and modes. After a few
            training steps the BatchNorm running statistics are not yet those the heads trained with.

    Returns:
        points, pixels: (M,) int64 nearest codes of the paired voxels' F^3D and the pixels' F^2D;
        labels: (M,) int64 16-class label of each pair's voxel; voxels: (V,) int64 codes of all voxels;
        with ``return_features``: point_feats, pixel_feats (M, D) float, unit rows.
    """
    if getattr(model, "codebook", None) is None:
        raise ValueError("paired_codes: the model has no codebook (CMCROptions.codebook=False)")
    if not batch_statistics:
        return _paired_codes(model, batch, device, return_features)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        model.train()
        model.codebook.eval()
        return _paired_codes(model, batch, device, return_features)
    finally:
        model.load_state_dict(saved)
        for name, m in model.named_modules():
            m.training = modes[name]


@torch.no_grad()
def _paired_codes(model, batch, device, return_features):
    from cmcr_lite.data.pipeline import batch_to_sparse_tensor

    f3d, _ = model.features_3d(batch_to_sparse_tensor(batch, device))
    f2d = model.features_2d(batch["images"].to(device))[0]
    pv, pp = batch["pair_voxels"].to(device), batch["pair_pixels"].to(device)
    cb = model.codebook
    p, v = f3d[pv], f2d[pp[:, 0], :, pp[:, 1], pp[:, 2]]
    out = {"points": cb.nearest(p).cpu(), "pixels": cb.nearest(v).cpu(), "labels": batch["voxel_labels"][pv.cpu()],
           "voxels": cb.nearest(f3d).cpu()}
    if return_features:
        out.update(point_feats=p.cpu(), pixel_feats=v.cpu())
    return out


def feature_spread(feats: torch.Tensor, max_rows: int = 2000, generator: Optional[torch.Generator] = None) -> float:
    """Mean cosine similarity between two *different* rows of ``feats`` (N, D), over at most ``max_rows``
    randomly chosen rows: about 0 for directions spread over the sphere, 1 when all rows point the
    same way (a feature "cone" that a few codes can cover)."""
    x = F.normalize(torch.as_tensor(feats).detach().float().cpu(), dim=1)
    if len(x) > max_rows:
        x = x[torch.randperm(len(x), generator=generator)[:max_rows]]
    n = len(x)
    if n < 2:
        raise ValueError(f"feature_spread: need at least 2 rows, got {n}")
    s = x.sum(0)
    return float(((s @ s) - n) / (n * (n - 1)))  # (sum of all cosines - diagonal) / off-diagonal count


# ------------------------------------------------------------------------------------------ EMA facts
def laplace_floor(decay: float, eps: float, num_codes: int, pairs: int) -> float:
    """Fixed point of ``ema_count`` for a code nobody ever chooses.

    Each half-step (points, then pixels) does ``c ← γ c`` and then ``c ← (c + ε) · n / (n + K ε)``;
    the total n tends to the ``pairs`` M of each step, so with ``r = M / (M + K ε)`` a never-used code
    follows ``c ← r (γ c + ε)`` and converges to ``ε r / (1 − γ r)`` ≈ ε / (1 − γ) (0.01 for the
    paper's γ = 0.999, ε = 1e-5). A dead-code threshold on ``ema_count`` must lie above it.
    """
    r = pairs / (pairs + num_codes * eps)
    return eps * r / (1.0 - decay * r)


def quantisation_memory(rows: int, num_codes: int = 400, dim: int = 64, bytes_per_value: int = 4) -> dict:
    """Bytes of quantising ``rows`` features at once: the (rows × K) distance matrix and the (rows × D)
    features themselves (float32 by default)."""
    return {"distances": rows * num_codes * bytes_per_value, "features": rows * dim * bytes_per_value}


# ------------------------------------------------------------------------------------------ toy data
def toy_paired_features(n: int, centres: torch.Tensor, gap: torch.Tensor, noise: float,
                        generator: Optional[torch.Generator] = None):
    """Synthetic paired shared features: n (point, pixel) pairs around C unit "concept" centres.

    ``p_i = normalize(c_{y_i} + gap + σ ε_i)``, ``v_i = normalize(c_{y_i} − gap + σ ε'_i)`` with
    ``ε ~ N(0, I/D)``: a pair shares its concept y_i, and ±gap is a constant modality gap between the
    3D and the 2D features (σ = ``noise``).

    Args:
        n: number of pairs; centres: (C, D) float; gap: (D,) float; noise: σ.

    Returns:
        points (n, D), pixels (n, D) unit rows; concepts (n,) int64.
    """
    c, d = centres.shape
    y = torch.randint(0, c, (n,), generator=generator)
    eps = torch.randn(2, n, d, generator=generator) * (noise / d ** 0.5)
    p = F.normalize(centres[y] + gap + eps[0], dim=1)
    v = F.normalize(centres[y] - gap + eps[1], dim=1)
    return p, v, y

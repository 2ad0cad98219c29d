"""Which loss term moves the 3D trunk: the per-term gradient diagnostic.

CMCR's objective is a weighted sum L = Σ_t w_t L_t. Gradients are linear, so the trunk's update
direction is the sum of the per-term gradients g_t = ∂(w_t L_t)/∂θ over the trunk's parameters θ.
For each term this module measures

    ‖g_t‖                       how hard the term pulls on the trunk
    cos(g_t, g) = <g_t, g> / (‖g_t‖ ‖g‖)   whether it pulls the way the total does (g = Σ_t g_t)
    share_t = <g_t, g> / ‖g‖²   its part of the total's length along the total (the shares add up to 1)

A term with a small norm and a near-zero share does not shape the trunk, whatever its loss value.
The cost is one backward pass per term (``retain_graph``), so the pretraining loop runs it only every
``PretrainConfig.gradient_every`` steps, and never by default.
"""
from __future__ import annotations

import torch


def term_gradients(terms: dict, weights: dict, params) -> dict:
    """The gradient of each weighted term on ``params``, flattened.

    Args:
        terms: {name: scalar tensor} (one step's loss terms, graph intact);
        weights: {name: float} of the terms in the total (``CMCRModel.term_weights()``);
        params: the parameters to differentiate (the 3D trunk's), each ``requires_grad``.
    Returns:
        {name: (P,) float32} with P the parameters' total size; a parameter that a term does not
        reach contributes zeros. The graph is kept, so the caller can still ``loss.backward()``.
    """
    params = list(params)
    out = {}
    for name, w in weights.items():
        if not terms[name].requires_grad:  # a term with no path to any parameter (e.g. detached)
            out[name] = torch.cat([torch.zeros_like(p).reshape(-1) for p in params])
            continue
        grads = torch.autograd.grad(w * terms[name], params, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
    return out


def gradient_shares(grads: dict) -> dict:
    """{name: {"norm", "cosine", "share"}} of per-term gradients (:func:`term_gradients`), plus
    ``"total": {"norm"}`` of their sum; cosine and share are 0 when the total or the term is 0."""
    total = sum(grads.values())
    total_sq = float(total.pow(2).sum())
    out = {}
    for name, g in grads.items():
        norm, dot = float(g.norm()), float(g @ total)
        out[name] = {"norm": norm,
                     "cosine": dot / (norm * total_sq ** 0.5) if norm > 0 and total_sq > 0 else 0.0,
                     "share": dot / total_sq if total_sq > 0 else 0.0}
    out["total"] = {"norm": total_sq ** 0.5}
    return out

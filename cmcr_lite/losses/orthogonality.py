"""Shared/specific decoupling loss L_orth (docs/paper.md §4.2).

CMCR splits each 3D feature into a *shared* part F (distilled from the image, quantised by the
codebook) and a *specific* part G (geometry, fed to the occupancy decoder). L_orth asks the two
sets of features to span orthogonal directions of the D-dimensional feature space:

    L_orth = ‖Fᵀ G‖_F / D²

with F (N × D) the L2-normalised shared features and G (N × D) the specific features, L2-normalised
**only for this loss** (the decoders see the unnormalised G). ``(FᵀG)_{ab} = Σ_n F_na G_nb`` is the
cross-correlation of channel a of F with channel b of G over all N voxels of the batch: the loss is
0 exactly when every channel of F, seen as an N-vector, is orthogonal to every channel of G (the
column spaces of F and G in R^N are orthogonal), not when each row pair is orthogonal. The weight
(paper: 0.1) is applied by the caller.

Paper vs. released code: the figure shows an orthogonality term on both the 3D and the 2D branch, but
the released code applies it to the 3D features only (the 2D "heads" are 1×1 convs on a frozen
ResNet-50). Applying it to 2D as well is a caller's choice (call this function on the 2D pair too).
The official code divides by 64², the feature width; here D is read from the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["orthogonality_loss"]


def orthogonality_loss(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """``‖normalize(shared)ᵀ · normalize(specific)‖_F / D²`` (rows L2-normalised).

    Args:
        shared: (N, D) float — shared features F (e.g. all voxels of the batch).
        specific: (N, D) float — specific features G of the same N rows.

    Returns:
        Scalar tensor ≥ 0, differentiable in both inputs; 0 when N = 0 and when the column spaces
        of the row-normalised F and G are orthogonal. Rows of zeros stay zero (no NaN).
    """
    if shared.dim() != 2 or shared.shape != specific.shape:
        raise ValueError(
            "orthogonality_loss: shared and specific must both be (N, D) with the same shape; got "
            f"{tuple(shared.shape)} and {tuple(specific.shape)}")
    d = shared.shape[1]
    f = F.normalize(shared, dim=1)
    g = F.normalize(specific, dim=1)
    cross = f.t() @ g  # (D, D)
    return torch.linalg.matrix_norm(cross, ord="fro") / (d * d)

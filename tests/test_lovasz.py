"""Lovász-softmax against the exact Jaccard loss, and the downstream CE + Lovász loss (docs/paper.md §5)."""

import pytest
import torch
import torch.nn.functional as F

from cmcr_lite.losses.lovasz import lovasz_grad, lovasz_softmax, segmentation_loss


def _jaccard_loss_hard(pred, labels, classes):
    """mean over classes of 1 - |pred==c & lab==c| / |pred==c | lab==c|, by counting."""
    out = []
    for c in classes:
        inter = sum(1 for p, t in zip(pred, labels) if p == c and t == c)
        union = sum(1 for p, t in zip(pred, labels) if p == c or t == c)
        out.append(1.0 - inter / union)
    return sum(out) / len(out)


def test_perfect_prediction_is_zero():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 3])
    probs = F.one_hot(labels, 5).double()
    assert lovasz_softmax(probs, labels).item() == pytest.approx(0.0, abs=1e-12)
    # confident softmax: close to 0
    logits = 30.0 * F.one_hot(labels, 5).double()
    assert lovasz_softmax(F.softmax(logits, 1), labels).item() < 1e-10


@pytest.mark.parametrize("seed", range(5))
def test_hard_binary_equals_jaccard_loss(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (40,), generator=g)
    labels[0], labels[1] = 0, 1  # both classes present
    pred = torch.randint(0, 2, (40,), generator=g)
    probs = F.one_hot(pred, 2).double()
    got = lovasz_softmax(probs, labels, classes="present").item()
    ref = _jaccard_loss_hard(pred.tolist(), labels.tolist(), [0, 1])
    assert got == pytest.approx(ref, rel=1e-12)
    assert 0.0 < ref  # random predictions are not perfect


def test_hard_multiclass_present_and_all():
    labels = torch.tensor([1, 1, 2, 2, 2, 1])
    pred = torch.tensor([1, 2, 2, 2, 3, 1])  # class 3 is predicted but absent from labels
    probs = F.one_hot(pred, 4).double()
    got = lovasz_softmax(probs, labels, classes="present").item()
    assert got == pytest.approx(_jaccard_loss_hard(pred.tolist(), labels.tolist(), [1, 2]))
    got_all = lovasz_softmax(probs, labels, classes="all").item()
    # class 0: empty union -> loss 0 ; class 3: 1 false positive, no ground truth -> loss 1
    ref_all = (0.0 + 1.0 + _jaccard_loss_hard(pred.tolist(), labels.tolist(), [1, 2]) * 2) / 4
    assert got_all == pytest.approx(ref_all)


def test_lovasz_grad_is_increments_of_jaccard():
    fg = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    g = lovasz_grad(fg)
    # Jaccard loss of the first i points taken as errors, by direct counting
    gts = int(fg.sum())
    vals = []
    for i in range(1, 6):
        miss_fg = int(fg[:i].sum())
        fp = i - miss_fg
        vals.append(1 - (gts - miss_fg) / (gts + fp))
    incr = [vals[0]] + [b - a for a, b in zip(vals, vals[1:])]
    assert g.tolist() == pytest.approx(incr)
    assert g.sum().item() == pytest.approx(1.0)


def test_soft_probabilities_give_loss_in_unit_interval():
    # on soft probabilities the surrogate lies strictly between 0 and 1
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (30,), generator=g)
    probs = F.softmax(torch.randn(30, 3, generator=g), dim=1)
    val = lovasz_softmax(probs, labels).item()
    assert 0.0 < val < 1.0


def test_ignore_index_and_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (20,), generator=g)
    loss = segmentation_loss(logits, labels, ignore_index=0)
    keep = labels != 0
    ref = F.cross_entropy(logits[keep], labels[keep]) + lovasz_softmax(
        F.softmax(logits[keep], 1), labels[keep])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    # the ignored points do not matter: changing their logits leaves the loss unchanged
    logits2 = logits.detach().clone()
    logits2[~keep] = 100.0
    assert segmentation_loss(logits2, labels).item() == pytest.approx(loss.item(), rel=1e-6)
    # lovasz_softmax's own ignore_index
    probs = F.softmax(logits.detach(), 1)
    assert lovasz_softmax(probs, labels, ignore_index=0).item() == pytest.approx(
        lovasz_softmax(probs[keep], labels[keep]).item())
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[keep].abs().sum() > 0 and logits.grad[~keep].abs().sum() == 0


def test_lovasz_gradient_exists_and_lowers_loss():
    labels = torch.tensor([1, 2, 3, 1, 2, 3, 3])
    logits = torch.zeros(7, 4, requires_grad=True)
    first = None
    for _ in range(20):  # plain gradient descent
        loss = lovasz_softmax(F.softmax(logits, 1), labels)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        first = loss.item() if first is None else first
        with torch.no_grad():
            logits -= 5.0 * grad
    assert lovasz_softmax(F.softmax(logits, 1), labels).item() < 0.5 * first


def test_all_ignored_and_shape_errors():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.zeros(3, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match="segmentation_loss"):
        segmentation_loss(torch.randn(3, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="lovasz_softmax"):
        lovasz_softmax(torch.rand(3, 4), torch.zeros(2, dtype=torch.long))

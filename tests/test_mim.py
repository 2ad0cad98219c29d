"""Masked image modelling: decoder, reconstruction loss, geometry-enhanced feature replacement."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmcr_lite.losses.mim import (ImageDecoder, geometry_enhanced_replacement, mim_input_features, pairs_in_masked_pixels,
                                  reconstruction_loss)


# ----------------------------------------------------------------------------------- decoder
def test_decoder_shape_range_and_layers():
    torch.manual_seed(0)
    dec = ImageDecoder(64)
    x = 50 * torch.randn(2, 64, 9, 13)              # large inputs push the sigmoid to its ends
    with torch.no_grad():
        y = dec(x)
    assert y.shape == (2, 3, 9, 13)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert float(y.min()) < 0.05 and float(y.max()) > 0.95
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (64, 32, (3, 3)), (32, 16, (3, 3)), (16, 3, (3, 3))]
    # independent functional reference with the same weights
    with torch.no_grad():
        ref = x
        for i, c in enumerate(convs):
            ref = F.conv2d(ref, c.weight, c.bias, padding=1)
            ref = torch.sigmoid(ref) if i == 2 else torch.relu(ref)
        torch.testing.assert_close(y, ref)
    with pytest.raises(ValueError, match="ImageDecoder"):
        dec(torch.zeros(1, 32, 4, 4))


def test_mim_input_is_a_sum():
    a, b = torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 3)
    assert torch.equal(mim_input_features(a, b), a + b)
    with pytest.raises(ValueError):
        mim_input_features(a, b[:, :2])


# ----------------------------------------------------------------------------------- loss
def _loss_example():
    pred = torch.zeros(2, 3, 1, 2)
    target = torch.zeros(2, 3, 1, 2)
    # image 0: pixel (0,0) error 1 on all channels, pixel (0,1) error 0.5 on channel 0 only
    target[0, :, 0, 0] = 1.0
    target[0, 0, 0, 1] = 0.5
    # image 1: pixel (0,1) error 2 on channel 2
    target[1, 2, 0, 1] = 2.0
    masks = torch.tensor([[[True, False]], [[False, False]]])   # image 1 has no masked pixel
    return pred, target, masks


def test_reconstruction_loss_all_pixels_by_hand():
    pred, target, masks = _loss_example()
    # 12 elements: 3 * 1^2 + 0.5^2 + 2^2 = 7.25
    assert reconstruction_loss(pred, target).item() == pytest.approx(7.25 / 12)
    assert reconstruction_loss(pred, target, masks).item() == pytest.approx(7.25 / 12)   # masks ignored


def test_reconstruction_loss_masked_only_by_hand():
    pred, target, masks = _loss_example()
    # only image 0, pixel (0,0): 3 channels of error 1
    assert reconstruction_loss(pred, target, masks, masked_only=True).item() == pytest.approx(3.0 / 3)
    masks2 = masks.clone()
    masks2[1, 0, 1] = True                                      # adds 2^2 over 3 more channel values
    assert reconstruction_loss(pred, target, masks2, masked_only=True).item() == pytest.approx(7.0 / 6)
    # nothing masked anywhere: zero, and backward still works
    p = pred.clone().requires_grad_(True)
    loss = reconstruction_loss(p, target, torch.zeros_like(masks), masked_only=True)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(p.grad) == 0
    with pytest.raises(ValueError):
        reconstruction_loss(pred, target, None, masked_only=True)


# ----------------------------------------------------------------------------------- replacement
def _replacement_example():
    """B=2 images of 2x3 pixels, D=2; masked: image 0 row 0, image 1 pixel (1,2)."""
    torch.manual_seed(1)
    q2d = torch.randn(2, 2, 2, 3)
    q3d = torch.tensor([[1.0, 2.0], [3.0, 6.0], [10.0, 20.0], [-1.0, -1.0], [7.0, 8.0]])
    masks = torch.zeros(2, 2, 3, dtype=torch.bool)
    masks[0, 0, :] = True
    masks[1, 1, 2] = True
    pair_voxels = torch.tensor([0, 1, 1, 2, 3, 4])
    pair_pixels = torch.tensor([
        [0, 0, 1],      # voxels 0, 1, 1 on masked pixel (0,0,1): mean of (1,2), (3,6), (3,6)
        [0, 0, 1],
        [0, 0, 1],
        [1, 1, 2],      # voxel 2 alone on masked pixel (1,1,2)
        [0, 1, 0],      # voxel 3 on an UNMASKED pixel: ignored
        [1, 0, 0],      # voxel 4 on an UNMASKED pixel: ignored
    ])
    return q2d, q3d, pair_voxels, pair_pixels, masks


def test_replacement_by_hand():
    q2d, q3d, pv, pp, masks = _replacement_example()
    out, replaced = geometry_enhanced_replacement(q2d, q3d, pv, pp, masks)
    expected_replaced = torch.zeros_like(masks)
    expected_replaced[0, 0, 1] = True
    expected_replaced[1, 1, 2] = True
    assert torch.equal(replaced, expected_replaced)
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([7.0 / 3, 14.0 / 3]))
    assert torch.equal(out[1, :, 1, 2], torch.tensor([10.0, 20.0]))
    # every other pixel -- unmasked, or masked without a point (0,0,0), (0,0,2) -- is bit-identical
    keep = ~expected_replaced.unsqueeze(1).expand_as(q2d)
    assert torch.equal(out[keep], q2d[keep])
    assert out.shape == q2d.shape and out.dtype == q2d.dtype


def test_replacement_leaves_input_unchanged_without_mask_or_pairs():
    q2d, q3d, pv, pp, masks = _replacement_example()
    snapshot = q2d.clone()
    for m, v, p in [(None, pv, pp), (torch.zeros_like(masks), pv, pp),
                    (masks, pv[:0], pp[:0]), (masks, pv[4:], pp[4:])]:   # last: only unmasked-pixel pairs
        out, replaced = geometry_enhanced_replacement(q2d, q3d, v, p, m)
        assert torch.equal(out, snapshot)
        assert not replaced.any()
    assert torch.equal(q2d, snapshot)                           # the input is never modified in place


def test_replacement_gradients_flow_only_through_replaced_pixels():
    q2d, q3d, pv, pp, masks = _replacement_example()
    q2d.requires_grad_(True)
    q3d = q3d.clone().requires_grad_(True)
    out, replaced = geometry_enhanced_replacement(q2d, q3d, pv, pp, masks)
    weights = torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape) + 1.0
    (out * weights).sum().backward()
    g3 = torch.zeros_like(q3d)
    g3[0] = weights[0, :, 0, 1] / 3          # voxel 0: once among 3 points at (0,0,1)
    g3[1] = 2 * weights[0, :, 0, 1] / 3      # voxel 1: twice
    g3[2] = weights[1, :, 1, 2]              # voxel 2: alone at (1,1,2)
    # voxels 3 and 4 lie on unmasked pixels: no gradient
    torch.testing.assert_close(q3d.grad, g3)
    g2 = weights * (~replaced).unsqueeze(1)
    torch.testing.assert_close(q2d.grad, g2)


def test_replacement_rejects_bad_input():
    q2d, q3d, pv, pp, masks = _replacement_example()
    with pytest.raises(IndexError, match="pair_pixels"):
        geometry_enhanced_replacement(q2d, q3d, pv, pp + torch.tensor([0, 5, 0]), masks)
    with pytest.raises(IndexError, match="pair_voxels"):
        geometry_enhanced_replacement(q2d, q3d, pv + 10, pp, masks)
    with pytest.raises(ValueError, match="quantized_3d"):
        geometry_enhanced_replacement(q2d, q3d[:, :1], pv, pp, masks)


# ----------------------------------------------------------------------------------- the model's MIM term
def _mim_model(geomim: bool):
    """A small CMCRModel (D = 2, four codes) with MIM on the masked pixels only, GeoMIM on or off."""
    from cmcr_lite.cmcr import CMCRModel, CMCROptions
    from cmcr_lite.models.image_encoder import SmallImageTeacher
    from cmcr_lite.models.minkunet import MinkUNetConfig

    options = CMCROptions(num_codes=4, geomim=geomim, mim_masked_only=True, occupancy=False)
    return CMCRModel(MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8), SmallImageTeacher(width=8, stride=4),
                     feature_dim=2, options=options).eval()


def test_model_mim_term_matches_replace_then_add():
    """``CMCRModel.mim_terms``, the MIM loss pretraining runs, on the hand example (trunk maps at the
    image's resolution, mim_stride 1). The model adds G^2D + F̄^2D first and then gives each replaced
    pixel the mean of F̄^3D + G^2D over its pairs; the reference replaces F̄^2D by the mean F̄^3D first
    and adds G^2D after (the paper's order). Both must give the same decoder output."""
    q2d, q3d, pv, pp, masks = _replacement_example()
    torch.manual_seed(2)
    f2d, g2d, target = F.normalize(q2d, dim=1), torch.randn_like(q2d), torch.rand(2, 3, 2, 3)
    batch = {"masks": masks, "target_images": target, "masked_pair_voxels": pv, "masked_pair_pixels": pp}
    geo, plain = _mim_model(True), _mim_model(False)
    plain.load_state_dict(geo.state_dict())
    out = {}
    with torch.no_grad():
        for name, model in (("geo", geo), ("plain", plain)):
            out[name] = model.mim_terms(batch, f2d, q2d, g2d, q3d), model.last_reconstruction
        fbar = geo.codebook.quantize(f2d.permute(0, 2, 3, 1).reshape(-1, 2))[0].reshape(2, 2, 3, 2).permute(0, 3, 1, 2)
        source, replaced = geometry_enhanced_replacement(fbar, q3d, pv, pp, masks)
        ref = {"geo": geo.image_decoder(source + g2d), "plain": geo.image_decoder(fbar + g2d)}
    assert int(replaced.sum()) == 2 and out["geo"][0]["geomim_pixels"] == 2   # the two hand-counted pixels
    assert "geomim_pixels" not in out["plain"][0]
    for name, (terms, pred) in out.items():
        assert pred.shape == (2, 3, 2, 3)
        torch.testing.assert_close(pred, ref[name])
        # masked-only MSE by hand: 3 masked pixels in image 0, one in image 1, three channels each
        m = masks.unsqueeze(1).float()
        assert terms["mim"].item() == pytest.approx(float(((pred - target) ** 2 * m).sum() / (3 * 4)), rel=1e-6)
    assert not torch.equal(out["geo"][1], out["plain"][1])


# ----------------------------------------------------------------------------------- real batch
@pytest.fixture(scope="module")
def masked_dataset():
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig
    from cmcr_lite.paths import ensure_embedded_dataset

    kf = NuScenesKeyframes(ensure_embedded_dataset(), "v1.0-synthetic", "train")
    return PairedScanDataset(kf, PipelineConfig.lite(mim_masks=True, mask_prob=1.0, superpixels=False))


def test_masked_pairs_are_the_dropped_ones(masked_dataset):
    item = masked_dataset[0]
    rec = {k: item["masked_" + k] for k in ("pair_points", "pair_voxels", "pair_pixels")}
    pp = rec["pair_pixels"]
    assert len(pp) > 0
    assert pairs_in_masked_pixels(pp, item["masks"]).all()                   # all inside masked pixels
    assert not pairs_in_masked_pixels(item["pair_pixels"], item["masks"]).any()
    # the pipeline maps point -> voxel through voxel_of_point; the recovered pairs obey the same map
    assert np.array_equal(item["voxel_of_point"][rec["pair_points"]], rec["pair_voxels"])
    # visible and hidden pairs never share a point of the same camera twice
    vis = set(zip(item["pair_points"].tolist(), item["pair_pixels"][:, 0].tolist()))
    hid = set(zip(rec["pair_points"].tolist(), pp[:, 0].tolist()))
    assert not vis & hid
    # half of the patches are masked, so roughly half of the pairs are hidden
    frac = len(pp) / (len(pp) + len(item["pair_pixels"]))
    assert 0.25 < frac < 0.75, frac


def test_geometry_enhanced_replacement_on_a_real_batch(masked_dataset):
    from cmcr_lite.data.pipeline import collate_pairs

    indices = [0, 1]
    items = [masked_dataset[i] for i in indices]
    batch = collate_pairs(items)
    hidden = batch
    masks = batch["masks"]
    B, H, W = masks.shape
    V = len(batch["coords"])
    torch.manual_seed(0)
    q2d, q3d = torch.randn(B, 64, H, W), torch.randn(V, 64)
    out, replaced = geometry_enhanced_replacement(q2d, q3d, hidden["masked_pair_voxels"],
                                                  hidden["masked_pair_pixels"], masks)
    # the visible pairs of the batch sit on unmasked pixels, so they replace nothing
    _, none = geometry_enhanced_replacement(q2d, q3d, batch["pair_voxels"], batch["pair_pixels"], masks)
    assert not none.any()
    assert not (replaced & ~masks).any()
    # independent count: distinct masked pixels hit by a recovered pair
    mp = hidden["masked_pair_pixels"]
    assert int(replaced.sum()) == len({tuple(r) for r in mp.tolist()})
    frac = replaced.sum().item() / masks.sum().item()
    print(f"fraction of masked pixels receiving a 3D feature: {frac:.4f} "
          f"({int(replaced.sum())} / {int(masks.sum())}; {len(mp)} masked pairs)")
    # a LiDAR scan covers a few percent of the pixels of a 112x208 crop; 0 would mean a broken pipeline
    assert 0.005 < frac < 0.5
    # a pixel hit by exactly one pair carries that voxel's feature exactly
    flat = (mp[:, 0] * H + mp[:, 1]) * W + mp[:, 2]
    uniq, counts = torch.unique(flat, return_counts=True)
    single = uniq[counts == 1][0]
    j = int((flat == single).nonzero()[0])
    b, r, c = mp[j].tolist()
    assert torch.equal(out[b, :, r, c], q3d[hidden["masked_pair_voxels"][j]])
    keep = ~replaced.unsqueeze(1).expand_as(q2d)
    assert torch.equal(out[keep], q2d[keep])

"""Codebook diagnostics: co-occurrence, mutual information, the Laplace floor, the recorder, paired codes."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from cmcr_lite.analysis.codebook import (CodebookRecorder, co_occurrence, code_sharing, feature_spread, laplace_floor,
                                         mutual_information, perplexity_from_counts, quantisation_memory,
                                         toy_paired_features)
from cmcr_lite.losses.codebook import UnifiedCodebook, perplexity


def test_co_occurrence_matches_a_python_loop():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    ref = np.zeros((7, 7), np.int64)
    for i, j in zip(a, b):
        ref[i, j] += 1
    np.testing.assert_array_equal(co_occurrence(torch.from_numpy(a), torch.from_numpy(b), 7), ref)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        co_occurrence(torch.from_numpy(a), torch.from_numpy(b), 5)


def test_mutual_information_matches_sklearn():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, 2000)
    b = np.where(rng.random(2000) < 0.7, a, rng.integers(0, 6, 2000))  # pixels mostly share the point's code
    cooc = co_occurrence(torch.from_numpy(a), torch.from_numpy(b), 6)
    assert mutual_information(cooc) == pytest.approx(mutual_info_score(a, b), rel=1e-12)
    # independent codes -> 0, identical codes -> the entropy
    assert mutual_information(np.outer([1, 2, 3], [4, 5])) == pytest.approx(0.0, abs=1e-12)
    h = -sum(p * math.log(p) for p in (0.5, 0.25, 0.25))
    assert mutual_information(np.diag([2, 1, 1])) == pytest.approx(h)


def test_perplexity_from_counts_matches_the_codebook_perplexity():
    idx = torch.tensor([0, 0, 0, 1, 2, 2, 5])
    counts = torch.bincount(idx, minlength=8).numpy()
    assert perplexity_from_counts(counts) == pytest.approx(float(perplexity(idx, 8)), rel=1e-6)
    assert perplexity_from_counts([0, 4, 4, 0]) == pytest.approx(2.0)
    assert perplexity_from_counts([0, 0]) == 0.0


def test_code_sharing_by_hand():
    # point codes 0,0,1,2 ; pixel codes 0,1,1,3 -> codes 0,1 shared by both, 2 points only, 3 pixels only
    s = code_sharing(co_occurrence(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3]), 5))
    assert s["pairs"] == 4 and s["agreement"] == pytest.approx(0.5)
    assert (s["used_points"], s["used_pixels"], s["used_both"], s["points_only"], s["pixels_only"]) == (3, 3, 2, 1, 1)
    assert s["mutual_information"] <= s["max_mutual_information"] + 1e-12


def test_laplace_floor_is_where_an_unused_code_settles():
    # every feature sits on code 0, so codes 1..3 are never chosen; gamma = 0.8 converges in ~100 steps
    cb = UnifiedCodebook(num_codes=4, dim=2, decay=0.8, eps=1e-3).double().train()
    cb.embedding.copy_(torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]], dtype=torch.float64))
    cb.ema_weight.copy_(cb.embedding)
    x = torch.tensor([[1.0, 0.05]] * 10, dtype=torch.float64)
    for _ in range(200):
        cb(x, x)
    floor = laplace_floor(0.8, 1e-3, num_codes=4, pairs=10)
    torch.testing.assert_close(cb.ema_count[1:], torch.full((3,), floor, dtype=torch.float64))
    assert floor == pytest.approx(1e-3 / 0.2, rel=2e-3)  # ~ eps / (1 - gamma)
    # the paper's values: an unused code ends 10x above the default dead-code threshold of 1e-3
    assert laplace_floor(0.999, 1e-5, 400, 2048) == pytest.approx(0.01, rel=1e-2)


def test_quantisation_memory_of_the_official_per_pixel_quantisation():
    mem = quantisation_memory(12 * 224 * 416, 400, 64)
    assert mem["distances"] == 1_118_208 * 400 * 4 == 1_789_132_800  # ~1.8 GB every step
    assert mem["features"] == 1_118_208 * 64 * 4


def test_recorder_logs_training_calls_only_and_removes_its_hook():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    cb = UnifiedCodebook(num_codes=16, dim=8, decay=0.9)
    outs = []
    with CodebookRecorder(keep_codes=True) as rec:
        for _ in range(3):
            p, v, _ = toy_paired_features(64, centres, torch.zeros(8), 0.2, g)
            outs.append(cb.train()(p, v))
        cb.eval()(p, v)  # eval calls are not logged
    cb.train()(p, v)  # after the block: not logged either
    arr = rec.arrays()
    assert len(rec.records) == 3
    np.testing.assert_allclose(arr["perplexity_points"], [float(o["perplexity_points"]) for o in outs], rtol=1e-6)
    np.testing.assert_array_equal(arr["counts_pixels"][1], outs[1]["counts_pixels"].numpy())
    agree = [float((o["indices_points"] == o["indices_pixels"]).float().mean()) for o in outs]
    np.testing.assert_allclose(arr["agreement"], agree)
    assert arr["codes"].shape == (3, 16, 8) and arr["ema_count"].shape == (3, 16)
    used = np.zeros(16, bool)
    for t, o in enumerate(outs):
        used |= (o["counts_points"] + o["counts_pixels"]).numpy() > 0
        assert arr["never_used"][t] == (~used).sum()
    with pytest.raises(ValueError, match="nothing recorded"):
        CodebookRecorder().arrays()


def test_feature_spread_matches_a_double_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g) + torch.tensor([2.0, 0, 0, 0, 0])
    u = torch.nn.functional.normalize(x, dim=1)
    ref = np.mean([float(u[i] @ u[j]) for i in range(30) for j in range(30) if i != j])
    assert feature_spread(x) == pytest.approx(ref, abs=1e-6)
    assert feature_spread(torch.ones(10, 3)) == pytest.approx(1.0, abs=1e-6)
    assert abs(feature_spread(torch.randn(3000, 64, generator=g), generator=g)) < 0.01  # spread over the sphere


def test_toy_features_are_unit_paired_and_gapped():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    gap = torch.zeros(16)
    gap[0] = 0.4
    p, v, y = toy_paired_features(500, centres, gap, 0.0, g)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(500))
    torch.testing.assert_close(p, torch.nn.functional.normalize(centres[y] + gap, dim=1))
    torch.testing.assert_close(v, torch.nn.functional.normalize(centres[y] - gap, dim=1))


def test_paired_codes_on_a_tiny_cmcr_model(synthetic_root):
    from dataclasses import replace

    from cmcr_lite.cmcr import ABLATION_STEPS, CMCRModel
    from cmcr_lite.analysis.codebook import paired_codes
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.data.pipeline import PairedScanDataset, PipelineConfig, batch_to_sparse_tensor, collate_pairs
    from cmcr_lite.models.image_encoder import SmallImageTeacher
    from cmcr_lite.models.minkunet import MinkUNetConfig

    torch.manual_seed(0)
    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="val")
    ds = PairedScanDataset(kf, PipelineConfig.lite(crop_size=(56, 104), superpixels=False, augment=False))
    batch = collate_pairs([ds[0]])
    model = CMCRModel(MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8), SmallImageTeacher(width=8, stride=4),
                      options=replace(ABLATION_STEPS["+ codebook"], num_codes=16)).eval()
    out = paired_codes(model, batch, return_features=True)
    m = len(batch["pair_voxels"])
    assert out["points"].shape == out["pixels"].shape == out["labels"].shape == (m,)
    assert out["point_feats"].shape == out["pixel_feats"].shape == (m, 64)
    assert torch.equal(model.codebook.nearest(out["pixel_feats"]), out["pixels"])
    # reference: nearest code by brute force on the same features
    with torch.no_grad():
        f3d, _ = model.features_3d(batch_to_sparse_tensor(batch))
        pv = batch["pair_voxels"]
        ref = torch.cdist(f3d[pv], model.codebook.embedding).argmin(1)
    assert (out["points"] == ref).float().mean() > 0.999  # ties aside
    torch.testing.assert_close(out["labels"], batch["voxel_labels"][pv])

    # batch statistics: BatchNorm in training mode for the call, then everything restored
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out_bs = paired_codes(model, batch, batch_statistics=True)
    assert out_bs["points"].shape == (m,)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and codes untouched
    assert not model.training and not model.codebook.training and not model.backbone.training

"""The CMCR objective wired into pretraining: every part switches on and off, configs are checked."""
from dataclasses import replace

import pytest
import torch

from cmcr_lite.cmcr import ABLATION_STEPS, CMCROptions
from cmcr_lite.data.pipeline import PipelineConfig
from cmcr_lite.models.image_encoder import SmallImageTeacher
from cmcr_lite.models.minkunet import MinkUNetConfig
from cmcr_lite.pretrain import PretrainConfig, pretrain


def tiny(tmp_path, options, **kw):
    return PretrainConfig.lite(
        method="cmcr", epochs=1, batch_size=2, num_matches=64, output_dir=str(tmp_path), cmcr=options,
        backbone=MinkUNetConfig.lite(planes=(8, 8, 8, 8, 8, 8, 8, 8), init_dim=8),
        pipeline=PipelineConfig.lite(crop_size=(56, 104), superpixels=False, crop_min_pairs=50, mask_prob=1.0,
                                     occupancy_queries=96, occupancy_max_neighbours=8), **kw)


EXPECTED_TERMS = {
    "contrastive only": {"nce"},
    "+ decoupling": {"nce", "orth"},
    "+ codebook": {"nce", "orth", "cmcm", "commit_points", "commit_pixels"},
    "+ MIM": {"nce", "orth", "cmcm", "commit_points", "commit_pixels", "mim"},
    "+ GeoMIM": {"nce", "orth", "cmcm", "commit_points", "commit_pixels", "mim", "geomim_pixels"},
    "+ occupancy": {"nce", "orth", "cmcm", "commit_points", "commit_pixels", "occupancy", "intensity"},
}


@pytest.mark.parametrize("step", list(EXPECTED_TERMS))
def test_each_ablation_step_trains_with_its_terms(tmp_path, two_keyframes, step):
    options = replace_small(ABLATION_STEPS[step])
    torch.manual_seed(0)
    result = pretrain(tiny(tmp_path, options), progress=False, keyframes=two_keyframes,
                      image_trunk=SmallImageTeacher(width=8, stride=4))
    h = result["history"][0]
    terms = set(h) - {"epoch", "steps", "lr", "loss", "perplexity_points", "perplexity_pixels"}
    assert terms == EXPECTED_TERMS[step]
    assert all(torch.isfinite(torch.tensor(v)) for v in h.values())
    if "geomim_pixels" in terms:
        assert h["geomim_pixels"] > 0  # masked pixels received 3D features


def replace_small(options):
    from dataclasses import replace

    return replace(options, codebook_matches=64, num_codes=16)


def test_full_cmcr_updates_codebook_by_ema_only(tmp_path, two_keyframes):
    torch.manual_seed(0)
    result = pretrain(tiny(tmp_path, replace_small(CMCROptions())), progress=False, keyframes=two_keyframes,
                      image_trunk=SmallImageTeacher(width=8, stride=4))
    model = result["model"]
    assert {"mim", "occupancy", "geomim_pixels", "cmcm"} <= set(result["history"][0])
    cb = model.codebook
    assert not any(p is cb.embedding for p in model.parameters())
    assert torch.allclose(cb.embedding.norm(dim=1), torch.ones(len(cb.embedding)), atol=1e-5)


def test_released_code_switches():
    released = CMCROptions.released_code()
    assert not released.geomim and not released.orth_2d and released.mim and released.codebook
    paper = CMCROptions()
    assert paper.geomim and paper.orth_2d


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="pipeline.mask_prob"):
        PretrainConfig.lite(method="cmcr", pipeline=PipelineConfig.lite(mask_prob=0.0))
    with pytest.raises(ValueError, match="pipeline.occupancy_queries"):
        PretrainConfig.lite(method="cmcr", pipeline=PipelineConfig.lite(occupancy_queries=0))
    with pytest.raises(ValueError, match="geomim"):
        CMCROptions(mim=False, geomim=True)
    cfg = PretrainConfig.lite(method="cmcr")
    assert cfg.pipeline.mim_masks and cfg.pipeline.mask_prob == 0.5 and cfg.pipeline.occupancy
    assert cfg.pipeline.occupancy_queries == 1024 and PretrainConfig.full(method="cmcr").pipeline.occupancy_queries == 2048
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


def test_pipeline_follows_the_method_and_options_in_any_order():
    from dataclasses import replace

    from cmcr_lite.cmcr import ABLATION_STEPS

    def needs(cfg):
        p = cfg.pipeline
        return p.superpixels, p.mim_masks, p.occupancy

    for preset in (PretrainConfig.lite, PretrainConfig.full):
        assert needs(preset(method="cmcr", cmcr=ABLATION_STEPS["+ occupancy"])) == (False, False, True)
        assert needs(preset(method="cmcr", cmcr=ABLATION_STEPS["+ MIM"])) == (False, True, False)
        assert needs(preset(method="cmcr")) == (False, True, True)
        assert needs(preset(method="slidr")) == (True, False, False)
        assert needs(preset(method="ppkt")) == (False, False, False)
        # set later, field by field, as papermill parameters or the CLI do
        assert needs(replace(preset(), method="cmcr")) == (False, True, True)
        assert needs(replace(replace(preset(), cmcr=CMCROptions(mim=False, geomim=False)), method="cmcr")) == \
            (False, False, True)
        assert needs(PretrainConfig.from_dict({**preset().to_dict(), "method": "slidr"})) == (True, False, False)
    # the lite sizes survive options passed in: the options carry no sizes
    lite = PretrainConfig.from_preset("lite", method="cmcr", cmcr=ABLATION_STEPS["full"])
    assert lite.pipeline.occupancy_queries == 1024 and lite.cmcr.codebook_matches is None and lite.num_matches == 1024
    assert CMCROptions.lite() == CMCROptions.full() == CMCROptions()


@pytest.mark.parametrize("mim_stride", [1, 2])
def test_forward_matches_the_full_resolution_formulation(tmp_path, two_keyframes, mim_stride):
    """The step reads 2D features at the paired pixels only and sums the decoder input at the trunk's
    resolution; the loss terms must equal the plain formulation on full-resolution maps:
    F^2D = normalise(upsample(head(trunk))), decoder(GeoMIM(upsample(F̄^2D_low), F̄^3D) + upsample(G^2D)).
    With mim_stride k the MIM maps are upsampled to (H/k, W/k) instead, each k x k block of the target
    is averaged, a block is masked when any of its pixels is, and a pair's cell is (row // k, col // k)."""
    import torch.nn.functional as F

    from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
    from cmcr_lite.losses.infonce import point_pixel_infonce
    from cmcr_lite.losses.mim import geometry_enhanced_replacement, reconstruction_loss
    from cmcr_lite.pretrain import build_model

    cfg = tiny(tmp_path, replace_small(CMCROptions()))
    cfg = replace(cfg, pipeline=replace(cfg.pipeline, mim_stride=mim_stride))
    torch.manual_seed(0)
    model = build_model(cfg, SmallImageTeacher(width=8, stride=4)).eval()  # eval: no EMA update, fixed BN
    assert model.mim_stride == mim_stride
    batch = collate_pairs([PairedScanDataset(two_keyframes, cfg.pipeline, seed=0)[i] for i in range(2)])
    x = batch_to_sparse_tensor(batch)
    with torch.no_grad():
        terms = model(batch, x, torch.Generator().manual_seed(3))
        f3d, _ = model.features_3d(x)
        f2d, f2d_low, g2d, _ = model.features_2d(batch["images"])
        pv, pp = batch["pair_voxels"], batch["pair_pixels"]
        nce = point_pixel_infonce(f3d[pv], f2d[pp[:, 0], :, pp[:, 1], pp[:, 2]], tau=cfg.tau,
                                  num_matches=cfg.num_matches, generator=torch.Generator().manual_seed(3))
        B, D, h, w = f2d_low.shape
        q_low = model.codebook.quantize(f2d_low.permute(0, 2, 3, 1).reshape(-1, D))[0]
        k = mim_stride
        H, W = batch["images"].shape[-2:]
        grid = (H // k, W // k)
        q2d = F.interpolate(q_low.reshape(B, h, w, D).permute(0, 3, 1, 2), size=grid,
                            mode="bilinear", align_corners=False)
        if k > 1:  # G^2D on the grid, from the trunk-resolution map
            g2d = F.interpolate(model.image_encoder.forward_heads(batch["images"])[1], size=grid,
                                mode="bilinear", align_corners=False)
        masks = torch.zeros(len(batch["masks"]), *grid, dtype=torch.bool)
        for r in range(grid[0]):
            for c in range(grid[1]):
                masks[:, r, c] = batch["masks"][:, r * k:(r + 1) * k, c * k:(c + 1) * k].flatten(1).any(1)
        target = batch["target_images"].unfold(2, k, k).unfold(3, k, k).mean((-1, -2))
        cells = batch["masked_pair_pixels"].clone()
        cells[:, 1:] //= k
        source, replaced = geometry_enhanced_replacement(q2d, model.codebook.quantize(f3d)[0],
                                                         batch["masked_pair_voxels"], cells, masks)
        mim = reconstruction_loss(model.image_decoder(source + g2d), target, masks)
    assert replaced.sum() > 0
    assert torch.allclose(terms["nce"], nce, atol=1e-5)
    assert torch.allclose(terms["mim"], mim, rtol=1e-5)
    assert float(terms["geomim_pixels"]) == float(replaced.sum())

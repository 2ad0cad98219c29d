"""Tests for cmcr_lite.models.image_encoder: torchvision-compatible ResNet-50, checkpoint loading
(torchvision and MoCo-v2 layouts, clear errors), dense encoder shapes and freezing."""
import pytest
import torch
import torch.nn.functional as F

from cmcr_lite.models.image_encoder import (
    CheckpointMismatchError, ResNet50, ResNet50Encoder, SmallImageTeacher, freeze, load_resnet50_weights,
    upsampled_at)


def _fake_moco_checkpoint(src: ResNet50) -> dict:
    """A MoCo-v2 style file content built from ``src``: query encoder keys with the
    ``module.encoder_q.`` prefix, an MLP projection head fc.0 / fc.2, a key encoder and a queue."""
    sd = {f"module.encoder_q.{k}": v.clone() for k, v in src.state_dict().items() if not k.startswith("fc.")}
    sd.update({
        "module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.0.bias": torch.randn(2048),
        "module.encoder_q.fc.2.weight": torch.randn(128, 2048), "module.encoder_q.fc.2.bias": torch.randn(128),
        "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7),
        "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    })
    return {"epoch": 800, "arch": "resnet50", "state_dict": sd}


@pytest.fixture(scope="module")
def source_resnet():
    torch.manual_seed(0)
    net = ResNet50()
    with torch.no_grad():  # non-trivial BN statistics so that loading them is observable
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def test_resnet50_matches_torchvision_layout(source_resnet):
    sd = source_resnet.state_dict()
    # torchvision.models.resnet50(): 320 state_dict entries, 25,557,032 parameters.
    assert len(sd) == 320
    assert sum(p.numel() for p in source_resnet.parameters()) == 25_557_032
    for key, shape in {"conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
                       "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                       "layer2.0.conv2.weight": (128, 128, 3, 3), "layer3.5.bn3.weight": (1024,),
                       "layer4.2.conv3.weight": (2048, 512, 1, 1), "layer4.0.downsample.1.running_mean": (2048,),
                       "fc.weight": (1000, 2048), "fc.bias": (1000,)}.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer3.6.conv1.weight" not in sd and "layer4.3.conv1.weight" not in sd


def test_moco_checkpoint_loads_identical_weights(tmp_path, source_resnet):
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(_fake_moco_checkpoint(source_resnet), path)
    torch.manual_seed(1)
    enc = ResNet50Encoder(freeze_trunk=True)
    fc_before = enc.trunk.fc.weight.clone()
    report = load_resnet50_weights(enc, str(path))
    assert report["format"] == "moco"
    assert report["loaded"] == 318  # 320 minus fc.weight / fc.bias
    src, dst = source_resnet.state_dict(), enc.trunk.state_dict()
    for k, v in src.items():
        if not k.startswith("fc."):
            assert torch.equal(dst[k], v), k
    assert torch.equal(enc.trunk.fc.weight, fc_before)  # the MoCo MLP head is not loaded into fc
    # Same C5 features as the source network on the same normalised input.
    img = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = source_resnet.features((img - enc.mean) / enc.std)
        assert torch.equal(enc.trunk_features(img), ref)


def test_plain_torchvision_state_dict_loads(tmp_path, source_resnet):
    sd = {k: v.clone() for k, v in source_resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50-old.pth"
    torch.save(sd, path)
    net = ResNet50()
    report = load_resnet50_weights(net, path)
    assert report["format"] == "torchvision" and report["loaded"] == 320 - 53
    assert torch.equal(net.fc.weight, source_resnet.fc.weight)
    assert torch.equal(net.layer4[2].bn3.running_var, source_resnet.layer4[2].bn3.running_var)


@pytest.mark.parametrize("corruption", ["missing", "shape", "unexpected"])
def test_bad_checkpoint_names_key_and_file(tmp_path, source_resnet, corruption):
    ckpt = _fake_moco_checkpoint(source_resnet)
    sd = ckpt["state_dict"]
    if corruption == "missing":
        del sd["module.encoder_q.layer3.2.bn2.running_var"]
        key = "layer3.2.bn2.running_var"
    elif corruption == "shape":
        sd["module.encoder_q.layer1.0.conv1.weight"] = torch.zeros(32, 64, 1, 1)
        key = "layer1.0.conv1.weight"
    else:
        sd["module.encoder_q.layer5.0.conv1.weight"] = torch.zeros(1)
        key = "layer5.0.conv1.weight"
    path = tmp_path / f"broken_{corruption}.pth.tar"
    torch.save(ckpt, path)
    net = ResNet50()
    before = net.layer2[0].conv1.weight.clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_resnet50_weights(net, path)
    msg = str(err.value)
    assert key in msg and str(path) in msg
    if corruption == "shape":
        assert "(32, 64, 1, 1)" in msg and "(64, 64, 1, 1)" in msg
    assert torch.equal(net.layer2[0].conv1.weight, before)  # nothing was loaded


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_resnet50_weights(ResNet50(), tmp_path / "nope.pth")


def test_resnet50_encoder_shapes_and_freezing():
    torch.manual_seed(0)
    enc = ResNet50Encoder(out_dim=64)
    enc.train()  # the frozen trunk must stay in eval mode
    assert not enc.trunk.training and enc.shared.training
    assert all(not p.requires_grad for p in enc.trunk.parameters())
    rv = enc.trunk.bn1.running_var.clone()
    with torch.no_grad():  # the paper's 224 x 416 crop gives a 7 x 13 C5 map
        assert enc.trunk_features(torch.rand(1, 3, 224, 416)).shape == (1, 2048, 7, 13)
    img = torch.rand(2, 3, 64, 96)
    c5 = enc.trunk_features(img)
    assert c5.shape == (2, 2048, 2, 3)
    shared, specific = enc.forward_heads(img)
    assert shared.shape == specific.shape == (2, 64, 64, 96)
    assert torch.allclose(shared.norm(dim=1), torch.ones(2, 64, 96), atol=1e-5)
    assert not torch.allclose(specific.norm(dim=1), torch.ones(2, 64, 96), atol=1e-2)
    assert torch.equal(enc.trunk.bn1.running_var, rv)  # BN statistics untouched
    # Upsampling factor 32: the head applied to the C5 map, resized x32, is the output.
    ref = F.normalize(F.interpolate(enc.shared.proj(c5), scale_factor=32, mode="bilinear"), dim=1)
    assert torch.allclose(shared, ref, atol=1e-6)
    (shared.sum() + specific.sum()).backward()
    assert enc.shared.proj.weight.grad is not None and enc.specific.proj.weight.grad is not None
    assert torch.equal(enc(img), shared)


def test_small_teacher_interface():
    torch.manual_seed(0)
    for stride, trunk_hw in [(8, (4, 6)), (4, (8, 12))]:
        t = SmallImageTeacher(out_dim=64, width=16, stride=stride)
        img = torch.rand(2, 3, 32, 48)
        assert t.trunk_features(img).shape == (2, t.trunk_dim, *trunk_hw)
        out = t(img)
        assert out.shape == (2, 64, 32, 48)
        assert torch.allclose(out.norm(dim=1), torch.ones(2, 32, 48), atol=1e-5)
        out.sum().backward()  # trainable until frozen
        assert all(p.grad is not None for p in t.trunk.parameters())
    freeze(t)
    t.train()
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    with pytest.raises(ValueError, match="stride"):
        SmallImageTeacher(stride=6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t(torch.rand(2, 1, 32, 48))


@pytest.mark.parametrize("low_hw, size", [((14, 26), (112, 208)), ((7, 13), (224, 416)), ((5, 9), (37, 50)),
                                          ((8, 8), (8, 8)), ((3, 4), (2, 3))])
def test_upsampled_at_equals_indexing_the_upsampled_map(low_hw, size):
    """Reading the paired pixels straight from the low-resolution map gives torch's own bilinear
    upsampling (align_corners=False) at those pixels, including the clamped borders."""
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3, 5, *low_hw, generator=g)
    H, W = size
    rows = torch.cat([torch.tensor([0, H - 1]), torch.randint(0, H, (300,), generator=g)])
    cols = torch.cat([torch.tensor([W - 1, 0]), torch.randint(0, W, (300,), generator=g)])
    pixels = torch.stack([torch.randint(0, 3, (302,), generator=g), rows, cols], 1)
    full = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
    expected = full[pixels[:, 0], :, pixels[:, 1], pixels[:, 2]]
    assert torch.allclose(upsampled_at(low, pixels[:, 0], pixels[:, 1:], size), expected, atol=1e-6)


def test_encoder_features_at_pixels_match_the_full_map():
    enc = SmallImageTeacher(out_dim=8)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    pixels = torch.tensor([[0, 0, 0], [1, 63, 95], [1, 10, 50], [0, 33, 7]])
    full = enc(images)
    assert torch.allclose(enc.forward_at_pixels(images, pixels), full[pixels[:, 0], :, pixels[:, 1], pixels[:, 2]],
                          atol=1e-6)

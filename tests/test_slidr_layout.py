"""MinkUNet weights in SLidR's layout (cmcr_lite/models/slidr_layout.py): the name map against names
and shapes copied by hand from SLidR's ``model/res16unet.py``, bit-exact round trips, SLidR's and
CMCR's checkpoints through the real downstream loader, the export command, and one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.downstream.export import main as export_main
from cmcr_lite.downstream.model import PretrainedWeightsError, SegmentationModel, load_pretrained_trunk
from cmcr_lite.models.minkunet import MinkUNet, MinkUNetConfig, sparse_tensor_from_voxels
from cmcr_lite.models.slidr_layout import WeightsLayoutError, from_slidr_layout, our_name, slidr_name, to_slidr_layout
from cmcr_lite.runtime import InputError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}

# Res16UNet34C (SLidR model/res16unet.py, MinkUNet(1, model_n_out=64)): INIT_DIM 32, PLANES
# (32, 64, 128, 256, 256, 128, 96, 96), LAYERS (2, 3, 4, 6, 2, 2, 2, 2); conv0p1s1 kernel_size 3,
# conv{k}p{s}s2 / convtr{k}p{s}s2 kernel 2, BasicBlock convs kernel 3, downsample a 1x1 conv + BN,
# block5..8 take the concatenation (PLANES[4+i] + skip) channels; final 1x1 with bias.
SLIDR_SHAPES = {
    "conv0p1s1.kernel": (27, 1, 32),
    "bn0.bn.weight": (32,),
    "conv1p1s2.kernel": (8, 32, 32),
    "bn1.bn.running_var": (32,),
    "block1.0.conv1.kernel": (27, 32, 32),
    "block1.1.norm2.bn.bias": (32,),
    "conv2p2s2.kernel": (8, 32, 32),
    "block2.0.downsample.0.kernel": (32, 64),
    "block2.0.downsample.1.bn.weight": (64,),
    "block2.2.conv2.kernel": (27, 64, 64),
    "conv3p4s2.kernel": (8, 64, 64),
    "block3.3.norm1.bn.running_mean": (128,),
    "conv4p8s2.kernel": (8, 128, 128),
    "block4.5.conv1.kernel": (27, 256, 256),
    "convtr4p16s2.kernel": (8, 256, 256),
    "bntr4.bn.weight": (256,),
    "block5.0.conv1.kernel": (27, 384, 256),
    "block5.0.downsample.0.kernel": (384, 256),
    "convtr5p8s2.kernel": (8, 256, 128),
    "block6.0.conv1.kernel": (27, 192, 128),
    "convtr6p4s2.kernel": (8, 128, 96),
    "block7.0.conv1.kernel": (27, 128, 96),
    "convtr7p2s2.kernel": (8, 96, 96),
    "bntr7.bn.running_mean": (96,),
    "block8.0.conv1.kernel": (27, 128, 96),
    "block8.1.norm2.bn.weight": (96,),
    "final.kernel": (96, 64),
    "final.bias": (1, 64),
}
SLIDR_MODULES = {"conv0p1s1", "bn0", "conv1p1s2", "bn1", "conv2p2s2", "bn2", "conv3p4s2", "bn3", "conv4p8s2", "bn4",
                 "convtr4p16s2", "bntr4", "convtr5p8s2", "bntr5", "convtr6p4s2", "bntr6", "convtr7p2s2", "bntr7",
                 *(f"block{n}" for n in range(1, 9)), "final"}
SLIDR_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)


def _randomized(model: MinkUNet, seed: int) -> MinkUNet:
    """``model`` with random BN statistics and affine terms (so that a mix-up changes the output), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("running_mean", "bn.bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith(("running_var", "bn.weight")):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def full():
    """A full-size (Res16UNet34C) trunk with a 96 -> 64 head (SLidR's pretraining ``final``)."""
    torch.manual_seed(0)
    return _randomized(MinkUNet(MinkUNetConfig.full(out_channels=64)), 1)


def _sparse_input():
    """64 voxels of a 6^3 grid (stride 1), one intensity channel."""
    g = torch.Generator().manual_seed(2)
    grid = torch.stack(torch.meshgrid(*[torch.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = grid[torch.randperm(len(grid), generator=g)[:64]]
    return sparse_tensor_from_voxels(coords, torch.rand(64, 1, generator=g))


def _trunk_state(full):
    return {k: v for k, v in full.state_dict().items() if not k.startswith("head.")}


def _slidr_file(full) -> dict:
    """SLidR's ``model.pt`` (and the released minkunet_slidr_1gpu.pt): model_points, model_images, epoch, config."""
    return {"model_points": to_slidr_layout(full.state_dict())["model_points"],
            "model_images": {"encoder.conv1.weight": torch.randn(64, 3, 7, 7)},
            "epoch": 50, "config": {"voxel_size": 0.1, "cylindrical_coordinates": False, "kernel_size": 3}}


def _cmcr_file(full) -> dict:
    """CMCR's ``model.pt``: the LightningModule's whole state_dict (+ epoch, config)."""
    sd = {f"model_points.{k}": v for k, v in to_slidr_layout(full.state_dict())["model_points"].items()}
    sd["model_points.final_class_level.kernel"] = torch.randn(96, 64)
    sd["model_points.final_class_level.bias"] = torch.randn(1, 64)
    sd["model_images.encoder.conv1.weight"] = torch.randn(64, 3, 7, 7)
    sd.update(embedding=torch.randn(400, 64), ema_count=torch.zeros(400), ema_weight=torch.randn(400, 64),
              unactivated_count=-torch.ones(400))
    return {"state_dict": sd, "epoch": 50, "config": {"voxel_size": 0.1, "cylindrical_coordinates": False}}


def test_names_and_shapes_are_slidr_res16unet34c(full):
    slidr = to_slidr_layout(full.state_dict())["model_points"]
    for name, shape in SLIDR_SHAPES.items():
        assert name in slidr, name
        assert tuple(slidr[name].shape) == shape, (name, tuple(slidr[name].shape), shape)
    assert {k.split(".")[0] for k in slidr} == SLIDR_MODULES
    blocks = [1 + max(int(k.split(".")[1]) for k in slidr if k.startswith(f"block{n}.")) for n in range(1, 9)]
    assert tuple(blocks) == SLIDR_LAYERS
    assert len(slidr) == len(full.state_dict())


def test_round_trip_is_bit_exact(full):
    sd = full.state_dict()
    back, dropped = from_slidr_layout(to_slidr_layout(sd))
    assert dropped == [] and list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert all(our_name(slidr_name(k)) == k for k in sd)
    assert our_name("final_class_level.kernel") is None and slidr_name("model_points.x") is None


@pytest.fixture(scope="module")
def expected(full):
    """The trunk's (64, 96) features on :func:`_sparse_input`, computed by a trunk holding ``full``'s weights."""
    ref = MinkUNet(MinkUNetConfig.full())
    ref.load_state_dict(_trunk_state(full))
    with torch.no_grad():
        return ref.eval()(_sparse_input()).F


@pytest.mark.parametrize("layout", ["slidr_file", "slidr_bare", "cmcr_file", "cmcr_state_dict"])
def test_checkpoint_loads_through_downstream_and_forward_matches(full, expected, layout, tmp_path):
    base = _cmcr_file(full) if layout.startswith("cmcr") else _slidr_file(full)
    ckpt = {"slidr_bare": base.get("model_points"), "cmcr_state_dict": base.get("state_dict")}.get(layout, base)
    path = tmp_path / "weights.pt"
    torch.save(ckpt, path)
    model = SegmentationModel(MinkUNetConfig.full(), 17)
    report = load_pretrained_trunk(model, str(path), DownstreamConfig.full())
    assert report["layout"] == "slidr" and report["source"] == str(path)
    assert set(report["loaded"]) == set(_trunk_state(full))
    assert {"final.kernel", "final.bias"} <= set(report["ignored"])  # the pretraining head; ours is new
    if layout.startswith("cmcr"):
        assert {"embedding", "ema_count", "ema_weight", "unactivated_count", "final_class_level.kernel",
                "model_images.encoder.conv1.weight"} <= set(report["ignored"])
    assert all(torch.equal(model.trunk.state_dict()[k], v) for k, v in _trunk_state(full).items())
    with torch.no_grad():
        got = model.trunk.eval()(_sparse_input()).F
    assert got.shape == (64, 96) and torch.equal(got, expected)


def test_export_writes_slidr_layout_that_loads_back(tmp_path):
    torch.manual_seed(3)
    trunk = _randomized(MinkUNet(MinkUNetConfig.lite()), 4)
    pre = tmp_path / "checkpoint.pt"
    torch.save({"model3d": trunk.state_dict(), "epoch": 1,
                "config": {"method": "cmcr", "pipeline": {"voxel_size": 0.1, "cylindrical": False}}}, pre)
    out = tmp_path / "minkunet_cmcr.pt"
    export_main(["--checkpoint", str(pre), "--out", str(out)])
    written = torch.load(out, map_location="cpu", weights_only=True)
    assert set(written) == {"model_points", "config"}
    assert written["config"] == {"voxel_size": 0.1, "cylindrical_coordinates": False}
    assert written["model_points"]["conv0p1s1.kernel"].shape == (27, 1, 16)
    assert "block8.0.conv1.kernel" in written["model_points"] and "final.kernel" not in written["model_points"]
    model = SegmentationModel(MinkUNetConfig.lite(), 17)
    report = load_pretrained_trunk(model, str(out), DownstreamConfig.lite())
    assert report["layout"] == "slidr" and report["ignored"] == []
    assert all(torch.equal(model.trunk.state_dict()[k], v) for k, v in trunk.state_dict().items())


def test_wrong_size_missing_key_and_not_a_checkpoint_are_one_line_errors(full, tmp_path):
    path = tmp_path / "minkunet_slidr_1gpu.pt"
    torch.save(_slidr_file(full), path)
    lite = SegmentationModel(MinkUNetConfig.lite(), 17)
    with pytest.raises(PretrainedWeightsError) as e:
        load_pretrained_trunk(lite, str(path))
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg and str(path) in msg and "conv0p1s1.kernel is (27, 1, 32) in the file but (27, 1, 16)" in msg

    cylindrical = {**_slidr_file(full), "config": {"voxel_size": 0.1, "cylindrical_coordinates": True}}
    with pytest.raises(PretrainedWeightsError) as e:  # SLidR's released configs are cylindrical
        load_pretrained_trunk(SegmentationModel(MinkUNetConfig.full(), 17), cylindrical, DownstreamConfig.full())
    print(e.value)
    assert "cylindrical_coordinates=True" in str(e.value) and "cylindrical=False" in str(e.value)

    broken = _slidr_file(full)
    del broken["model_points"]["block8.1.conv2.kernel"]
    torch.save(broken, path)
    with pytest.raises(PretrainedWeightsError) as e:
        load_pretrained_trunk(SegmentationModel(MinkUNetConfig.full(), 17), str(path))
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg and str(path) in msg and "block8.1.conv2.kernel" in msg and "missing" in msg

    with pytest.raises(WeightsLayoutError) as e:
        from_slidr_layout({"epoch": 3, "weights": [1, 2]}, source="notes.pt")
    print(e.value)
    assert "\n" not in str(e.value) and "notes.pt: not in SLidR's layout" in str(e.value)

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(InputError) as e:
        export_main(["--checkpoint", str(text), "--out", str(tmp_path / "x.pt")])
    print(e.value)
    assert str(text) in str(e.value) and "truncated, corrupt or not a torch checkpoint" in str(e.value)
    with pytest.raises(InputError) as e:  # a SLidR file is not ours to export
        export_main(["--checkpoint", str(path), "--out", str(tmp_path / "x.pt")])
    print(e.value)
    assert "is not a pretraining checkpoint" in str(e.value) and not (tmp_path / "x.pt").exists()


def test_downstream_command_refuses_a_full_size_slidr_file_for_the_lite_trunk(full, tmp_path, synthetic_root):
    path = tmp_path / "minkunet_slidr_1gpu.pt"
    torch.save(_slidr_file(full), path)
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "cmcr_lite.downstream", "--pretrained", str(path),
                           "--output-dir", str(tmp_path / "run")], env=ENV, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    print(lines)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert str(path) in lines[0] and "conv0p1s1.kernel" in lines[0] and "--config full" in lines[0]
    assert not (tmp_path / "run").exists()

"""Tests for cmcr_lite.models.minkunet against independent references: a dense torch conv3d for
one sparse convolution, the floor(c / 2) * 2 rule for stride-2 coordinates, and row-permutation /
translation equivariance of the whole UNet."""
import MinkowskiEngine as ME
import pytest
import torch
import torch.nn.functional as F

from cmcr_lite.models.minkunet import BasicBlock, MinkUNet, MinkUNetConfig, sparse_tensor_from_voxels


def kernel_offset(k: int, kernel_size: int = 3) -> tuple:
    """Our claim about ME 0.5.4's hyper-cube kernel ordering: index k = ix + 3 iy + 9 iz,
    x varies fastest, offset = index - 1 along each axis (checked against kernel maps below)."""
    return (k % kernel_size - 1, (k // kernel_size) % kernel_size - 1, k // kernel_size ** 2 - 1)


def random_voxels(n_per_batch, extent, n_batches=1, seed=0):
    """Unique (N, 4) int32 coordinates (batch, x, y, z) with x, y, z in [0, extent), in random order."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(n_batches):
        cells = torch.randperm(extent[0] * extent[1] * extent[2], generator=g)[:n_per_batch]
        x = cells // (extent[1] * extent[2])
        y = (cells // extent[2]) % extent[1]
        z = cells % extent[2]
        rows.append(torch.stack([torch.full_like(x, b), x, y, z], dim=1))
    coords = torch.cat(rows)
    return coords[torch.randperm(len(coords), generator=g)].int()


def test_kernel_offset_ordering_matches_kernel_maps():
    coords = random_voxels(150, (6, 7, 8), n_batches=2, seed=1)
    x = ME.SparseTensor(torch.zeros(len(coords), 1), coordinates=coords)
    kmaps = x.coordinate_manager.kernel_map(x.coordinate_map_key, x.coordinate_map_key, stride=1, kernel_size=3)
    assert sorted(kmaps) == list(range(27))
    C = x.C
    for k, pairs in kmaps.items():
        in_idx, out_idx = pairs[0].long(), pairs[1].long()
        assert len(in_idx) > 0
        delta = (C[in_idx] - C[out_idx]).unique(dim=0)
        # one constant offset per kernel index, no cross-batch pairs, and the claimed ordering
        assert delta.tolist() == [[0, *kernel_offset(k)]], k


def test_sparse_conv_equals_dense_conv3d_at_occupied_sites():
    torch.manual_seed(0)
    extent, c_in, c_out = (6, 7, 8), 3, 4
    coords = random_voxels(120, extent, n_batches=2, seed=2)
    feats = torch.randn(len(coords), c_in)
    weight = torch.randn(c_out, c_in, 3, 3, 3)  # conv3d layout: (out, in, dx, dy, dz)

    conv = ME.MinkowskiConvolution(c_in, c_out, kernel_size=3, stride=1, bias=False, dimension=3)
    assert conv.kernel.shape == (27, c_in, c_out)
    with torch.no_grad():
        for k in range(27):
            dx, dy, dz = kernel_offset(k)
            conv.kernel[k] = weight[:, :, dx + 1, dy + 1, dz + 1].T
    out = conv(ME.SparseTensor(feats, coordinates=coords))

    dense = torch.zeros(2, c_in, *extent)
    b, xi, yi, zi = coords.long().unbind(1)
    dense[b, :, xi, yi, zi] = feats
    ref = F.conv3d(dense, weight, padding=1)  # cross-correlation with zero padding
    oc = out.C.long()
    expected = ref[oc[:, 0], :, oc[:, 1], oc[:, 2], oc[:, 3]]
    assert torch.allclose(out.F, expected, atol=1e-5, rtol=0)
    # A wrong ordering (e.g. z fastest) must be detectably different: the test can fail.
    with torch.no_grad():
        for k in range(27):
            dz, dy, dx = kernel_offset(k)
            conv.kernel[k] = weight[:, :, dx + 1, dy + 1, dz + 1].T
    wrong = conv(ME.SparseTensor(feats, coordinates=coords))
    assert not torch.allclose(wrong.F, expected, atol=1e-3)


def test_stride2_conv_and_transposed_conv_round_trip():
    coords = random_voxels(400, (20, 20, 12), n_batches=2, seed=3)
    x = sparse_tensor_from_voxels(coords, torch.randn(len(coords), 2))
    assert torch.equal(x.C, coords)  # row order kept
    down = ME.MinkowskiConvolution(2, 4, kernel_size=2, stride=2, dimension=3)
    up = ME.MinkowskiConvolutionTranspose(4, 3, kernel_size=2, stride=2, dimension=3)
    y = down(x)
    assert y.tensor_stride == [2, 2, 2]
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coarse[:, 1:], 2, rounding_mode="floor") * 2
    assert set(map(tuple, y.C.tolist())) == set(map(tuple, coarse.unique(dim=0).tolist()))
    z = up(y)
    assert z.tensor_stride == [1, 1, 1]
    assert z.coordinate_map_key == x.coordinate_map_key
    assert torch.equal(z.C, x.C)


def _lite_input(n=3000, seed=4):
    coords = random_voxels(n // 2, (60, 60, 20), n_batches=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return coords, torch.rand(len(coords), 1, generator=g)


def test_lite_unet_forward_rows_follow_input_order():
    torch.manual_seed(0)
    net = MinkUNet(MinkUNetConfig.lite())
    assert net.trunk_dim == net.out_dim == MinkUNetConfig.lite().planes[-1]
    coords, feats = _lite_input()
    out = net(sparse_tensor_from_voxels(coords, feats))
    assert out.F.shape == (len(coords), net.trunk_dim)
    assert torch.equal(out.C, coords)
    assert torch.isfinite(out.F).all()

    # Row-order equivariance: permuting the input rows permutes the output rows the same way.
    net.eval()
    with torch.no_grad():
        ref = net(sparse_tensor_from_voxels(coords, feats)).F
        perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(5))
        permuted = net(sparse_tensor_from_voxels(coords[perm], feats[perm]))
        assert torch.equal(permuted.C, coords[perm])
        assert torch.allclose(permuted.F, ref[perm], atol=1e-5)
        # Translation by a multiple of the deepest stride (16) changes nothing.
        shifted = coords.clone()
        shifted[:, 1:] += torch.tensor([16, -32, 48], dtype=torch.int32)
        assert torch.allclose(net(sparse_tensor_from_voxels(shifted, feats)).F, ref, atol=1e-5)
        # ... while a 1-voxel shift regroups voxels at the coarse levels (the check is sensitive).
        shifted[:, 1] += 1
        assert not torch.allclose(net(sparse_tensor_from_voxels(shifted, feats)).F, ref, atol=1e-3)


def test_gradient_reaches_every_parameter_and_head():
    torch.manual_seed(0)
    net = MinkUNet(MinkUNetConfig.lite(out_channels=5, bn_momentum=0.02))
    assert net.out_dim == 5 and net.trunk_dim == MinkUNetConfig.lite().planes[-1]
    assert all(m.bn.momentum == 0.02 for m in net.modules() if isinstance(m, ME.MinkowskiBatchNorm))
    coords, feats = _lite_input(seed=6)
    out = net(sparse_tensor_from_voxels(coords, feats))
    assert out.F.shape == (len(coords), 5)
    F.cross_entropy(out.F, torch.randint(0, 5, (len(coords),))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_full_config_is_the_papers_res16unet34c():
    cfg = MinkUNetConfig()
    assert cfg == MinkUNetConfig.full()
    assert MinkUNetConfig.tiny().planes[-1] == MinkUNet(MinkUNetConfig.tiny()).trunk_dim == 16
    assert (cfg.in_channels, cfg.layers, cfg.planes, cfg.init_dim, cfg.bn_momentum) == (
        1, (2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 96), 32, 0.05)
    net = MinkUNet(cfg)
    assert net.trunk_dim == 96 and net.head is None
    assert sum(isinstance(m, BasicBlock) for m in net.modules()) == 23
    strided = [m for m in net.modules() if isinstance(m, ME.MinkowskiConvolutionTranspose)]
    assert len(strided) == 4
    # skip concatenations widen the first block of each decoder stage
    assert [net.dec[i][0].conv1.in_channels for i in range(4)] == [256 + 128, 128 + 64, 96 + 32, 96 + 32]
    with pytest.raises(ValueError, match="8 entries"):
        MinkUNetConfig(layers=(1, 1, 1))


def test_duplicate_voxels_are_rejected():
    coords = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match="1 duplicate voxel"):
        sparse_tensor_from_voxels(coords, torch.ones(3, 1))
    # (N, 3) coordinates get batch index 0, or the given one
    x = sparse_tensor_from_voxels(coords, torch.ones(3, 1), batch=torch.tensor([0, 0, 1]))
    assert x.C.tolist() == [[0, 0, 1, 2], [0, 3, 4, 5], [1, 0, 1, 2]]

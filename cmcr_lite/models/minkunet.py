"""The 3D backbone: a Res16UNet34C-layout sparse residual UNet on MinkowskiEngine (docs/paper.md §3.1).

CMCR (like SLidR and PointContrast before it) uses the "SR-UNet" ``Res16UNet34C``:

* a stem convolution at full resolution (kernel 3, ``in_channels -> init_dim``);
* an encoder of 4 stages, each one a stride-2 sparse convolution (kernel 2) followed by
  ``layers[i]`` residual BasicBlocks with ``planes[i]`` channels;
* a decoder of 4 stages, each one a stride-2 *transposed* sparse convolution (kernel 2) back onto
  the coordinates of the matching encoder level, a channel concatenation with that level's output
  (the skip connection), and ``layers[4 + i]`` BasicBlocks with ``planes[4 + i]`` channels.

Tensor strides (voxel units) along the network::

    input  s1 --stem--> s1 --down--> s2 --down--> s4 --down--> s8 --down--> s16
    s16 --up--> s8 (+skip s8) --up--> s4 (+skip s4) --up--> s2 (+skip s2) --up--> s1 (+skip stem)

The network returns the per-voxel *trunk* features (``planes[-1]`` = 96 channels for the paper's
setting), on exactly the input coordinates and in the input's row order. CMCR's pretraining heads
(``final``: shared F^3D and ``final_class_level``: specific G^3D, both 1x1 convs 96 -> 64) and the
downstream classifier are thin 1x1 layers on this trunk; an optional ``out_channels`` 1x1 head is
provided here for the downstream case (``MinkUNet(1, n_classes)``).

Everything here is written for MinkowskiEngine 0.5.4 (``import MinkowskiEngine as ME``), D = 3.

CPU notes (``benchmarks/minkunet_step.py`` measures a step):

* ME's CPU kernels call OpenBLAS once per kernel offset; its threads and kernels are set before
  this module imports ME (``runtime.prepare_openblas``: one thread, the CPU's own kernels).
* ME's OpenMP loops spin-wait at their barriers, which starves other processes on a small CPU:
  ``cmcr_lite/__init__.py`` sets ``OMP_WAIT_POLICY=passive`` before torch loads.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

from cmcr_lite.runtime import prepare_openblas


prepare_openblas()  # OpenBLAS's threads and kernels are fixed when MinkowskiEngine loads it (runtime.py)

import MinkowskiEngine as ME  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

__all__ = ["MinkUNetConfig", "BasicBlock", "MinkUNet", "sparse_tensor_from_voxels"]


@dataclass
class MinkUNetConfig:
    """Hyper-parameters of :class:`MinkUNet`. Defaults are the paper's Res16UNet34C.

    Attributes:
        in_channels: input feature channels per voxel (1 = LiDAR intensity).
        out_channels: if set, a 1x1 convolution head ``planes[-1] -> out_channels`` (with bias) is
            applied after the trunk (e.g. the number of classes downstream). ``None``: return the
            trunk features.
        layers: number of BasicBlocks per stage, 4 encoder stages then 4 decoder stages.
        planes: channels of each stage (same indexing as ``layers``); ``planes[-1]`` is the trunk
            output dimension (96 in the paper).
        init_dim: channels of the full-resolution stem convolution.
        kernel_size: kernel of the stem and of every convolution inside the BasicBlocks.
        down_kernel_size: kernel of the stride-2 (transposed) convolutions between levels.
        bn_momentum: BatchNorm momentum (0.05 for pretraining, 0.02 downstream in the paper).
        dimension: spatial dimension D of the sparse tensors.
    """

    in_channels: int = 1
    out_channels: Optional[int] = None
    layers: Tuple[int, ...] = (2, 3, 4, 6, 2, 2, 2, 2)
    planes: Tuple[int, ...] = (32, 64, 128, 256, 256, 128, 96, 96)
    init_dim: int = 32
    kernel_size: int = 3
    down_kernel_size: int = 2
    bn_momentum: float = 0.05
    dimension: int = 3

    def __post_init__(self):
        self.layers = tuple(int(n) for n in self.layers)
        self.planes = tuple(int(p) for p in self.planes)
        if len(self.layers) != 8 or len(self.planes) != 8:
            raise ValueError(
                f"MinkUNetConfig: 'layers' and 'planes' need 8 entries (4 encoder + 4 decoder "
                f"stages), got layers={self.layers} and planes={self.planes}")
        if min(self.layers) < 1:
            raise ValueError(f"MinkUNetConfig: every stage needs >= 1 block, got layers={self.layers}")

    @classmethod
    def full(cls, **overrides) -> "MinkUNetConfig":
        """The paper's Res16UNet34C (trunk 96-d, 37.84 M parameters)."""
        return replace(cls(), **overrides)

    @classmethod
    def lite(cls, **overrides) -> "MinkUNetConfig":
        """A narrow, one-block-per-stage variant for 2-core CPUs (trunk 32-d, 1.09 M parameters).

        Same topology (4 down / 4 up, skip concatenations) as :meth:`full`; measured by
        ``benchmarks/minkunet_step.py``.
        """
        base = cls(layers=(1, 1, 1, 1, 1, 1, 1, 1), planes=(16, 32, 48, 64, 64, 48, 32, 32),
                   init_dim=16)
        return replace(base, **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "MinkUNetConfig":
        """Narrower still (trunk 16-d, 0.27 M parameters): about half the step time of :meth:`lite`.

        On ME's CPU kernels a fixed per-step cost (kernel maps, per-offset loops) remains, so even
        narrower networks are barely faster (all planes 8: about 0.35-0.45 x :meth:`lite`).
        """
        base = cls(layers=(1, 1, 1, 1, 1, 1, 1, 1), planes=(8, 16, 24, 32, 32, 24, 16, 16), init_dim=8)
        return replace(base, **overrides)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int, dimension: int) -> ME.MinkowskiConvolution:
    return ME.MinkowskiConvolution(in_ch, out_ch, kernel_size=kernel_size, stride=stride,
                                   bias=False, dimension=dimension)


def _bn(channels: int, momentum: float) -> ME.MinkowskiBatchNorm:
    return ME.MinkowskiBatchNorm(channels, momentum=momentum)


class BasicBlock(nn.Module):
    """Residual block: conv-BN-ReLU-conv-BN, plus identity (or 1x1 conv-BN projection), ReLU.

    Input: SparseTensor with ``in_ch`` channels; output: the same coordinates with ``out_ch``
    channels. The projection is used whenever ``in_ch != out_ch`` (e.g. after a skip concatenation).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, bn_momentum: float = 0.05,
                 dimension: int = 3):
        super().__init__()
        self.conv1 = _conv(in_ch, out_ch, kernel_size, 1, dimension)
        self.norm1 = _bn(out_ch, bn_momentum)
        self.conv2 = _conv(out_ch, out_ch, kernel_size, 1, dimension)
        self.norm2 = _bn(out_ch, bn_momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        self.downsample = None
        if in_ch != out_ch:
            self.downsample = nn.Sequential(_conv(in_ch, out_ch, 1, 1, dimension), _bn(out_ch, bn_momentum))

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + residual)


def _stage(in_ch: int, out_ch: int, n_blocks: int, cfg: MinkUNetConfig) -> nn.Sequential:
    blocks = [BasicBlock(in_ch, out_ch, cfg.kernel_size, cfg.bn_momentum, cfg.dimension)]
    blocks += [BasicBlock(out_ch, out_ch, cfg.kernel_size, cfg.bn_momentum, cfg.dimension)
               for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class MinkUNet(nn.Module):
    """Res16UNet34C-layout sparse UNet (docs/paper.md §3.1).

    Args:
        config: a :class:`MinkUNetConfig` (default: the paper's setting). Keyword overrides may be
            given instead of / on top of it, e.g. ``MinkUNet(in_channels=1, out_channels=16)``.

    Attributes:
        trunk_dim: channels of the trunk output, ``config.planes[-1]``.
        out_dim: channels returned by :meth:`forward` (``out_channels`` if set, else ``trunk_dim``).

    Forward:
        x: ``ME.SparseTensor`` with N voxels, coordinates (N, 1 + D) int32 (batch index first),
           features (N, in_channels) float32, tensor stride 1.
        returns: ``ME.SparseTensor`` with features (N, out_dim), on the *same* coordinate map as
           ``x`` (``out.C`` equals ``x.C`` row for row, so ``out.F[i]`` belongs to voxel ``x.C[i]``).
    """

    def __init__(self, config: Optional[MinkUNetConfig] = None, **overrides):
        super().__init__()
        cfg = replace(config or MinkUNetConfig(), **overrides)
        self.config = cfg
        P, L, D = cfg.planes, cfg.layers, cfg.dimension
        k, kd, m = cfg.kernel_size, cfg.down_kernel_size, cfg.bn_momentum
        self.trunk_dim = P[7]
        self.out_dim = cfg.out_channels if cfg.out_channels is not None else P[7]
        self.relu = ME.MinkowskiReLU(inplace=True)

        # Stem, stride 1.
        self.stem = nn.Sequential(_conv(cfg.in_channels, cfg.init_dim, k, 1, D), _bn(cfg.init_dim, m))

        # Encoder: stride-2 conv (+BN+ReLU) then blocks, four times. Channel count entering each.
        enc_in = [cfg.init_dim, P[0], P[1], P[2]]
        self.down = nn.ModuleList(
            nn.Sequential(_conv(c, c, kd, 2, D), _bn(c, m)) for c in enc_in)
        self.enc = nn.ModuleList(_stage(enc_in[i], P[i], L[i], cfg) for i in range(4))

        # Decoder: stride-2 transposed conv (+BN+ReLU), concat skip, blocks, four times.
        # Skip sources from the deepest to the shallowest: enc[2] (s8), enc[1] (s4), enc[0] (s2), stem (s1).
        dec_in = [P[3], P[4], P[5], P[6]]
        skip_ch = [P[2], P[1], P[0], cfg.init_dim]
        self.up = nn.ModuleList(
            nn.Sequential(ME.MinkowskiConvolutionTranspose(dec_in[i], P[4 + i], kernel_size=kd, stride=2,
                                                           bias=False, dimension=D),
                          _bn(P[4 + i], m))
            for i in range(4))
        self.dec = nn.ModuleList(_stage(P[4 + i] + skip_ch[i], P[4 + i], L[4 + i], cfg) for i in range(4))

        self.head = None
        if cfg.out_channels is not None:
            self.head = ME.MinkowskiConvolution(P[7], cfg.out_channels, kernel_size=1, bias=True, dimension=D)
        self._init_weights()

    def _init_weights(self) -> None:
        for mod in self.modules():
            if isinstance(mod, (ME.MinkowskiConvolution, ME.MinkowskiConvolutionTranspose)):
                nn.init.kaiming_normal_(mod.kernel, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, ME.MinkowskiBatchNorm):
                nn.init.ones_(mod.bn.weight)
                nn.init.zeros_(mod.bn.bias)

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        out = self.relu(self.stem(x))
        skips = [out]                                    # s1, s2, s4, s8
        for down, enc in zip(self.down, self.enc):
            out = enc(self.relu(down(out)))
            skips.append(out)
        skips.pop()                                      # the s16 output is not a skip
        for up, dec in zip(self.up, self.dec):
            out = self.relu(up(out))
            out = dec(ME.cat(out, skips.pop()))
        if self.head is not None:
            out = self.head(out)
        return out

    def num_parameters(self) -> int:
        """Total number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def sparse_tensor_from_voxels(coords: torch.Tensor, feats: torch.Tensor,
                              batch: Optional[torch.Tensor] = None) -> ME.SparseTensor:
    """Build a stride-1 SparseTensor from *unique* integer voxel coordinates.

    Args:
        coords: (N, 3) integer voxel coordinates, or (N, 4) with the batch index in column 0.
        feats: (N, C) float32 features.
        batch: optional (N,) batch index, only with (N, 3) ``coords``.
    Returns:
        SparseTensor whose rows follow the order of ``coords`` (duplicates raise ValueError).
    """
    coords = torch.as_tensor(coords)
    if coords.dim() != 2 or coords.shape[1] not in (3, 4):
        raise ValueError(f"sparse_tensor_from_voxels: coords must be (N, 3) or (N, 4), got {tuple(coords.shape)}")
    if coords.shape[1] == 3:
        b = torch.zeros(len(coords), dtype=coords.dtype) if batch is None else torch.as_tensor(batch).to(coords.dtype)
        coords = torch.cat([b[:, None], coords], dim=1)
    coords = coords.to(torch.int32)
    tensor = ME.SparseTensor(features=feats.float(), coordinates=coords)
    if len(tensor.C) != len(coords):  # ME merged duplicate rows: the row order would be lost
        raise ValueError(
            f"sparse_tensor_from_voxels: {len(coords) - len(tensor.C)} duplicate voxel coordinates; "
            "quantize first (e.g. ME.utils.sparse_quantize) so that rows map one-to-one to voxels")
    return tensor

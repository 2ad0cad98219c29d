"""Forward + backward time of the MinkUNet trunk (tiny and lite presets vs the full Res16UNet34C) on CPU.

    .venv/bin/python benchmarks/minkunet_step.py [--voxels 20000] [--steps 5] [--threads 2]

Input (``--layout lidar``, default): ~20k unique 0.1 m voxels of a ray-cast, LiDAR-like scan
(ground rings plus walls), 1 intensity channel; ``--layout random`` scatters isolated voxels instead
(the worst case: no level shrinks). Prints ms/step (median
over ``--steps`` timed steps after one warm-up) and the parameter count of each config.
"""
import argparse
import math
import os
import statistics
import time

# Before torch loads libgomp / ME loads OpenBLAS (see the notes in cmcr_lite/models/minkunet.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from cmcr_lite.models.minkunet import MinkUNet, MinkUNetConfig, sparse_tensor_from_voxels  # noqa: E402


def lidar_like_voxels(n: int, voxel: float = 0.1, seed: int = 0) -> torch.Tensor:
    """About ``n`` unique (M, 3) int32 voxels of a ray-cast scan: 32 beams (-30..+10 deg) from 1.8 m
    height hitting a ground plane or a wall 5-40 m away (one per azimuth), 2 cm noise, 0.1 m voxels."""
    g = torch.Generator().manual_seed(seed)
    n_az = max(8, int(840 * n / 20000))  # about 20k voxels for 840 azimuths
    elev = torch.linspace(-30, 10, 32) * math.pi / 180
    az = torch.rand(n_az, generator=g) * 2 * math.pi
    wall = 5 + 35 * torch.rand(n_az, generator=g)
    E, A = torch.meshgrid(elev, az, indexing="ij")
    t_ground = torch.where(E < 0, 1.8 / torch.tan(-E).clamp(min=1e-6), torch.full_like(E, 1e9))
    t = torch.minimum(t_ground, wall[None] / torch.cos(E))
    pts = torch.stack([t * torch.cos(E) * torch.cos(A), t * torch.cos(E) * torch.sin(A), 1.8 + t * torch.sin(E)], -1)
    pts = pts.reshape(-1, 3) + 0.02 * torch.randn(E.numel(), 3, generator=g)
    return torch.floor(pts / voxel).int().unique(dim=0)


def random_voxels(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) unique int32 voxels scattered uniformly in a 1000 x 1000 x 40 grid (no neighbours:
    a worst case where no level shrinks)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(1000 * 1000 * 40, generator=g)[:n]
    return torch.stack([cells // 40000, (cells // 40) % 1000, cells % 40], 1).int()


def voxels_per_level(coords: torch.Tensor) -> list:
    counts, c = [len(coords)], coords
    for _ in range(4):
        c = torch.div(c, 2, rounding_mode="floor").unique(dim=0)
        counts.append(len(c))
    return counts


def time_config(name: str, cfg: MinkUNetConfig, coords: torch.Tensor, steps: int) -> None:
    torch.manual_seed(0)
    net = MinkUNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    feats = torch.rand(len(coords), cfg.in_channels)
    times = []  # wall-clock seconds per step
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = net(sparse_tensor_from_voxels(coords, feats))
        loss = out.F.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    print(f"{name:5s} layers={cfg.layers} planes={cfg.planes} init={cfg.init_dim} "
          f"params={net.num_parameters() / 1e6:.2f}M  trunk={net.trunk_dim}  "
          f"{1000 * statistics.median(times):.0f} ms/step median, {1000 * min(times):.0f} min "
          f"(fwd+bwd+AdamW, {steps} steps)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="tiny,lite,full")
    ap.add_argument("--layout", choices=("lidar", "random"), default="lidar")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    coords = (lidar_like_voxels if args.layout == "lidar" else random_voxels)(args.voxels)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"layout {args.layout}, "
          f"voxels per level (s1..s16) {voxels_per_level(coords)}")
    if os.path.exists("/proc/pressure/cpu"):  # other processes on the machine distort timings
        print("CPU pressure before:", open("/proc/pressure/cpu").readline().strip())
    for name in args.configs.split(","):
        time_config(name, getattr(MinkUNetConfig, name)(), coords, args.steps)
    if os.path.exists("/proc/pressure/cpu"):
        print("CPU pressure after: ", open("/proc/pressure/cpu").readline().strip())


if __name__ == "__main__":
    main()

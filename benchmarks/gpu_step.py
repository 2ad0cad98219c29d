"""What one pretraining step costs at nuScenes scale: seconds per step, data-loading seconds per step
and peak GPU memory, for PPKT, SLidR and CMCR with the ``full`` preset; and the codebook's 2D
quantisation three ways.

    python benchmarks/gpu_step.py --output benchmarks/results/gpu_step.md          # on a GPU box
    python benchmarks/gpu_step.py --small --steps 1                                 # CPU smoke size

Scans are synthetic but at nuScenes density: a 32-beam ray cast of about 34k points (ground and
walls 5-50 m away), six 1600x900 camera images of smooth noise, and point->pixel pairs from six
pinhole cameras 60 degrees apart. Nothing is read from disk except the SLIC cache of SLidR, which is
filled before timing (as the README's precompute step does). The ResNet-50 teacher is random
(``random_image_encoder=True``): weights do not change the cost.

Codebook rows (2D shared features of one process's 2 scans = 12 images, 224x416 each, 400 codes):
  * "per pixel, one block" — what the released code does: the (pixels x codes) distance matrix of
    every pixel of the upsampled map at once, in float and again in double for the argmin;
  * "per pixel, chunked" — the same nearest codes, ``UnifiedCodebook.quantize`` 16,384 rows at a time;
  * "trunk resolution + upsample" — what ``CMCRModel`` does: quantise the stride-32 map, upsample.
The first two choose the same codes (the script checks it); the third is a different, cheaper
formulation (see ``cmcr_lite/cmcr.py``).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cmcr_lite.data.dense_scans import NuScenesDensityScans  # noqa: E402
from cmcr_lite.data.nuscenes_loader import CAMERAS  # noqa: E402
from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs  # noqa: E402
from cmcr_lite.losses.codebook import UnifiedCodebook, code_distances  # noqa: E402
from cmcr_lite.models.minkunet import MinkUNetConfig  # noqa: E402
from cmcr_lite.pretrain import METHODS, PretrainConfig, build_model, training_losses  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(method: str, args, device, cache: Path) -> dict:
    """Median seconds per step, data seconds per step and peak GPU memory over ``args.steps`` steps."""
    cfg = PretrainConfig.full(method=method, random_image_encoder=True, batch_size=args.batch_size,
                              num_workers=args.workers, device=str(device), tensorboard=False)
    cfg = replace(cfg, pipeline=replace(cfg.pipeline, superpixel_cache=str(cache)))
    if args.small:
        cfg = replace(cfg, num_matches=64, backbone=MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8),
                      pipeline=replace(cfg.pipeline, crop_size=(56, 104), crop_min_pairs=50, occupancy_queries=96,
                                       slic=replace(cfg.pipeline.slic, n_segments=30)))
    scans = NuScenesDensityScans(args.batch_size * (args.steps + 1), cache.parent, args.points,
                           (90, 160) if args.small else (900, 1600))
    dataset = PairedScanDataset(scans, cfg.pipeline, seed=0)
    if cfg.pipeline.superpixels:  # fill the SLIC cache first, as the README's precompute step does
        for i in range(len(dataset)):
            dataset[i]
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_pairs,
                                         num_workers=args.workers)
    step_s, data_s = [], []
    tick = time.perf_counter()
    for step, batch in enumerate(loader):
        waited = time.perf_counter() - tick
        if step == 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        terms = training_losses(model, cfg, batch, batch_to_sparse_tensor(batch, device),
                                torch.Generator().manual_seed(step))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        sync(device)
        if step >= 1:  # step 0 warms up (CUDA kernels, allocator, worker start-up)
            step_s.append(time.perf_counter() - tick)
            data_s.append(waited)
        assert math.isfinite(terms["loss"].item()), (method, terms)
        tick = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"method": method, "step_s": statistics.median(step_s), "data_s": statistics.median(data_s),
            "peak_gib": peak, "steps": len(step_s)}


def per_pixel_one_block(codebook: UnifiedCodebook, x: torch.Tensor) -> torch.Tensor:
    """The released code's formulation: every row's distances to every code at once, float, and the
    argmin over a double copy. (N,) int64."""
    d = code_distances(x, codebook.embedding)
    return torch.argmin(d.double(), dim=-1)


def time_codebook(args, device) -> list:
    images = 2 * len(CAMERAS)                                    # one process's batch in the paper: 2 scans
    H, W = (56, 104) if args.small else (224, 416)
    torch.manual_seed(0)
    cb = UnifiedCodebook(400, 64).to(device)
    low = F.normalize(torch.randn(images, 64, math.ceil(H / 32), math.ceil(W / 32), device=device), dim=1)
    full = F.normalize(F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False), dim=1)
    rows = full.permute(0, 2, 3, 1).reshape(-1, 64)

    def run(fn):
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else float("nan")
        return out, seconds, peak

    with torch.no_grad():
        one, t_one, m_one = run(lambda: per_pixel_one_block(cb, rows))
        chunked, t_chunk, m_chunk = run(lambda: cb.nearest(rows))
        _, t_low, m_low = run(lambda: F.interpolate(
            cb.quantize(low.permute(0, 2, 3, 1).reshape(-1, 64))[0].reshape(images, low.shape[2], low.shape[3], 64)
            .permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False))
    agree = float((one == chunked).float().mean())
    assert agree > 0.999, f"chunked and one-block quantisation disagree on {1 - agree:.4%} of pixels"
    n = len(rows)
    return [{"variant": "per pixel, one block (released code)", "rows": n, "seconds": t_one, "peak_gib": m_one},
            {"variant": "per pixel, chunked (UnifiedCodebook.quantize)", "rows": n, "seconds": t_chunk,
             "peak_gib": m_chunk, "same_codes": agree},
            {"variant": "trunk resolution + upsample (CMCRModel)", "rows": low.shape[0] * low.shape[2] * low.shape[3],
             "seconds": t_low, "peak_gib": m_low}]


def markdown(steps: list, codebook: list, args, device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"# Pretraining step cost ({name}, torch {torch.__version__})", "",
             f"`python benchmarks/gpu_step.py {'--small ' if args.small else ''}--steps {args.steps} "
             f"--batch-size {args.batch_size} --workers {args.workers} --points {args.points}`: "
             f"`full` preset, random ResNet-50 teacher, synthetic nuScenes-density scans; median over "
             f"{args.steps} steps after one warm-up step.", "",
             "| method | s / step | data-loading s / step | peak GPU memory (GiB) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['step_s']:.3f} | {r['data_s']:.3f} | {r['peak_gib']:.2f} |" for r in steps]
    lines += ["", "Codebook, 2D shared features of 12 images (one process of the paper's 6 x 2):", "",
              "| formulation | rows quantised | s | peak extra GPU memory (GiB) |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['rows']:,} | {r['seconds']:.4f} | {r['peak_gib']:.2f} |" for r in codebook]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (after one warm-up step)")
    p.add_argument("--batch-size", type=int, default=12, help="scans per step (the paper's total: 12)")
    p.add_argument("--workers", type=int, default=8, help="data-loader processes")
    p.add_argument("--points", type=int, default=34_000, help="LiDAR points per scan (nuScenes: about 34k)")
    p.add_argument("--small", action="store_true", help="CPU smoke size: tiny MinkUNet, 56x104 crops, 160x90 images")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="also write the markdown table here")
    args = p.parse_args(argv)
    from cmcr_lite.runtime import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        steps = [time_method(m, args, device, Path(tmp) / "superpixels") for m in args.methods]
    text = markdown(steps, time_codebook(args, device), args, device)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return steps


if __name__ == "__main__":
    main()

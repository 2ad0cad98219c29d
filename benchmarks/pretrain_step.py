"""Where a lite pretraining step spends its time, per method, on one CPU thread (how the bench runs).

    python benchmarks/pretrain_step.py                      # embedded set, 6 steps per method
    python benchmarks/pretrain_step.py --dataroot D --steps 10 --methods ppkt cmcr --out benchmarks/results/pretrain_step.md

For each method it times, step by step on the same batches: data (``PairedScanDataset.__getitem__``
+ ``collate_pairs``, i.e. what a loader worker does), the frozen 2D teacher's trunk, the 3D
network's forward, the rest of the forward (2D and 3D heads, every loss term and its decoder),
backward and the optimizer step. The columns are
measured side by side in one run, so the ratios (CMCR / PPKT) are what to read; absolute seconds
depend on the machine.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from cmcr_lite.cmcr import CMCROptions
from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
from cmcr_lite.pretrain import PretrainConfig, step_generator, build_model, training_losses

# Rows: a method name, or CMCR with some parts off (what each part costs).
VARIANTS = {
    "ppkt": ("ppkt", None),
    "cmcr": ("cmcr", CMCROptions()),
    "cmcr without MIM": ("cmcr", CMCROptions(mim=False, geomim=False)),
    "cmcr without occupancy": ("cmcr", CMCROptions(occupancy=False)),
    "occupancy only": ("cmcr", replace(CMCROptions.contrastive_only(), decouple=True, codebook=True, occupancy=True)),
}
PARTS = ("data", "2d teacher", "3d forward", "heads + losses", "backward", "optimizer", "step")


def profile_method(variant: str, keyframes, steps: int, seed: int = 0) -> dict:
    """Median seconds per part over ``steps`` steps (after one warm-up step) of a lite run of one
    of ``VARIANTS``."""
    method, options = VARIANTS[variant]
    extra = {"cmcr": options} if options is not None else {}
    config = PretrainConfig.lite(method=method, seed=seed, tensorboard=False, **extra)
    dataset = PairedScanDataset(keyframes, config.pipeline, seed=seed)
    model = build_model(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    model.train()
    times = {k: [] for k in PARTS}
    n = len(dataset)
    for step in range(steps + 1):
        t0 = time.perf_counter()
        idx = [(step * config.batch_size + j) % n for j in range(config.batch_size)]
        batch = collate_pairs([dataset[i] for i in idx])
        x = batch_to_sparse_tensor(batch)
        t1 = time.perf_counter()
        with torch.no_grad():  # the branches alone, to split the forward into its parts
            model.image_encoder.trunk_features(batch["images"])  # the frozen 2D trunk
            t2 = time.perf_counter()
            model.features_3d(x)
            t3 = time.perf_counter()
        x = batch_to_sparse_tensor(batch)
        t4 = time.perf_counter()
        terms = training_losses(model, config, batch, x, step_generator(seed, 0, step))
        t5 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        t6 = time.perf_counter()
        optimizer.step()
        t7 = time.perf_counter()
        if step == 0:
            continue  # warm-up: kernel maps, allocator
        d2, d3 = t2 - t1, t3 - t2
        for k, v in zip(PARTS, (t1 - t0, d2, d3, max(0.0, (t5 - t4) - d2 - d3), t6 - t5, t7 - t6,
                                (t1 - t0) + (t7 - t4))):
            times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset
    from cmcr_lite.runtime import machine, torch_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", help="a synthetic dataset root (default: the embedded set)")
    p.add_argument("--version", default=EMBEDDED_VERSION)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="ROW",
                   help=f"rows to time (default all): {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the bench runs one per seed)")
    p.add_argument("--out", help="also write the table to this markdown file")
    a = p.parse_args(argv)
    root = ensure_embedded_dataset() if a.dataroot is None else a.dataroot
    keyframes = NuScenesKeyframes(root, a.version, split="train")
    rows = {}
    with torch_threads(a.threads):
        for m in a.methods:
            rows[m] = profile_method(m, keyframes, a.steps)
            print(m, {k: round(v, 3) for k, v in rows[m].items()}, flush=True)
    m = machine()
    lines = [f"# Lite pretraining step, median seconds over {a.steps} steps, {a.threads} thread(s)", "",
             f"Machine: {m['cpu']}, {m['cpu_capability']} kernels in torch, OpenBLAS on its {m['blas_kernels']} "
             f"kernels, {m['cores']} cores.", "",
             "| method | " + " | ".join(PARTS) + " | step / ppkt |", "|---" * (len(PARTS) + 2) + "|"]
    base = rows.get("ppkt", next(iter(rows.values())))["step"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in PARTS) + f" | {r['step'] / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return rows


if __name__ == "__main__":
    main()

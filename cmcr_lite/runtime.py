"""How the loops run: the device, the seeds, the CPU threads, and files written all at once.

One small module that every loop (pretraining, downstream, the teacher, notebooks) shares:

* ``resolve_device("auto")`` -- cuda if a GPU is visible, else cpu;
* ``seed_everything(seed)`` -- Python, NumPy and torch generators;
* ``torch_threads(n)`` -- a block on ``n`` intra-op threads, restored afterwards (tiny matrices
  are many times faster on one thread of a busy 2-core machine than spread over two);
* ``check_resumable(saved, config, ignored, checkpoint)`` -- a resume continues the same run;
* ``atomic_path(path)`` / ``save_checkpoint_atomic(state, path)`` -- write to a temporary file in
  the same folder, then rename: a crash never leaves a truncated file where a reader would look;
* ``machine()`` -- the CPU a run timed itself on, and the kernels its OpenBLAS runs (times, and
  the last bits of floats, depend on both).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cmcr_lite.openblas import openblas_kernels


def machine() -> dict:
    """The CPU this process runs on: ``{"cpu": model name, "cpu_capability": the widest vector
    instructions torch's kernels use here ("AVX2", "AVX512", ...), "cores": visible cores,
    "blas_kernels": the kernels of MinkowskiEngine's OpenBLAS (None before it is imported)}``.

    Why it is recorded: the same seed gives bit-identical results on the same kind of CPU with the
    same OpenBLAS kernels, but the float kernels differ between, say, AVX2 and AVX-512 machines,
    OpenBLAS's generic and SkylakeX kernels, or an Intel and an AMD CPU of the same vector width (the
    model name tells them apart; MKL inside torch takes another code path on AMD), so two such runs
    agree only to float rounding at first and then drift apart; and step times differed up to 2.6x
    between the machines this project has run on (``benchmarks/results/cross_machine_runs/``)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        import platform

        cpu = platform.processor() or cpu
    # asked only once MinkowskiEngine has loaded OpenBLAS: loading it here would fix its kernels early
    blas = openblas_kernels() if "MinkowskiEngine" in sys.modules else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "blas_kernels": blas}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` if a GPU is visible, else ``cpu``; any other name as ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int):
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore the count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_resumable(saved, config, ignored, checkpoint) -> None:
    """A resumed run must continue the saved one: raise ValueError naming every dataclass field of
    ``config`` that differs from ``saved`` (the checkpoint's config), except the ``ignored`` ones."""
    differs = [f.name for f in dataclasses.fields(config)
               if f.name not in ignored and getattr(saved, f.name) != getattr(config, f.name)]
    if differs:
        raise ValueError(f"cannot resume {checkpoint}: config fields differ from the checkpoint: {differs}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path`` (same suffix); when the block succeeds it is renamed
    onto ``path`` in one step, when it fails it is deleted. The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint_atomic(state: dict, path):
    """``torch.save(state, path)`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)

"""Which OpenBLAS kernels MinkowskiEngine's CPU convolutions run, and a better choice where
OpenBLAS's own is its slowest.

MinkowskiEngine's CPU convolutions are OpenBLAS matrix products (one per kernel offset). Debian's
OpenBLAS 0.3.21 picks its kernels by CPU model when it loads, and on a CPU newer than itself (an
Intel Xeon of model 207 here, which has AVX-512) it falls back to its generic SSE3 "Prescott"
kernels: the lite trunk's forward + backward took 1.7x as long (``benchmarks/openblas_kernels.py``).

``import cmcr_lite`` calls :func:`choose_openblas_kernels`: unless ``OPENBLAS_CORETYPE`` is set
already, it asks a child process which kernels OpenBLAS would pick, and on that fallback sets the
variable to the kernels OpenBLAS gives recognised CPUs of the same kind, for this process (where
OpenBLAS has not loaded yet) and every process it starts. Only the standard library is used here,
so that this runs before torch and MinkowskiEngine load.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

OPENBLAS_LIBRARY = "libopenblas.so.0"  # the library MinkowskiEngine's CPU backend links (Debian's libopenblas0)


def openblas_kernels(library: str = OPENBLAS_LIBRARY) -> Optional[str]:
    """The kernels OpenBLAS runs in this process ("Haswell", "SkylakeX", "Prescott", ...), loading
    the library if it is not loaded yet; None if there is no such library."""
    try:
        get = ctypes.CDLL(library).openblas_get_corename
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    return get().decode()


def kernels_for_cpu(flags: set, detected: Optional[str]) -> Optional[str]:
    """The OpenBLAS core type to force, given the CPU's ``flags`` (from /proc/cpuinfo) and the
    kernels OpenBLAS ``detected`` by itself: None unless it fell back to "Prescott" on a CPU that
    can run better ones. "SkylakeX" (AVX-512) and "Haswell" (AVX2 + FMA) are the kernels OpenBLAS
    gives the CPUs of those kinds that it does recognise."""
    if detected != "Prescott":
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def detected_openblas_kernels() -> Optional[str]:
    """The kernels OpenBLAS picks by itself on this CPU, asked of a child Python process (about
    30 ms) with ``OPENBLAS_CORETYPE`` unset, so that this process's library stays unloaded (OpenBLAS
    reads the variable once, when it loads). None if there is no such library.

    The child runs this file as a script (its ``__main__`` block: :func:`openblas_kernels`), not
    ``import cmcr_lite``, whose start would ask a child of its own."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    try:
        asked = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    name = asked.stdout.strip() if asked.returncode == 0 else ""
    return name or None


def cpu_flags() -> set:
    """The CPU's feature flags ("avx2", "avx512f", ...) from /proc/cpuinfo; empty if not Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


def choose_openblas_kernels() -> Optional[str]:
    """Set ``OPENBLAS_CORETYPE`` for this process's OpenBLAS (not loaded yet) and its children when
    OpenBLAS would fall back to its generic kernels on this CPU (:func:`kernels_for_cpu`).

    Returns the core type set, or None: already set by the user, OpenBLAS already loaded, its own
    choice kept, not Linux, or no OpenBLAS."""
    if "OPENBLAS_CORETYPE" in os.environ or "MinkowskiEngine" in sys.modules:
        return None
    chosen = kernels_for_cpu(cpu_flags(), detected_openblas_kernels())
    if chosen:
        os.environ["OPENBLAS_CORETYPE"] = chosen
    return chosen


if __name__ == "__main__":  # detected_openblas_kernels() runs this file in a child process
    print(openblas_kernels() or "")

"""cmcr-lite: a notebook-first, tested reproduction of CMCR (Zhang & Hou, IJCV 2026).

Data flows one way: ``data`` -> ``models`` -> ``losses`` -> training loops -> notebooks.
"""
import os

# OpenMP threads that finish early spin ("active" wait) by default. On a small CPU shared with other
# processes (notebook kernels, data workers, a test runner) that spinning starves the busy threads:
# a MinkowskiEngine training step measured 10-20x slower. Passive waiting costs nothing measurable
# when the machine is idle. This must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

# MinkowskiEngine's OpenBLAS on its generic kernels ran the trunk 1.7x slower on a CPU it did not
# recognise; this must run before MinkowskiEngine loads OpenBLAS (see cmcr_lite/openblas.py).
from cmcr_lite.openblas import choose_openblas_kernels  # noqa: E402

choose_openblas_kernels()

__version__ = "0.1.0"

"""cmcr-lite: a notebook-first, tested reproduction of CMCR (Zhang & Hou, IJCV 2026).

Data flows one way: ``data`` -> ``models`` -> ``losses`` -> training loops -> notebooks. Importing the
package loads nothing heavy and starts no process.
"""
import os

# OpenMP threads that finish early spin ("active" wait) by default; on a small CPU shared with other
# processes (notebook kernels, data workers, a test runner) that spinning starves the busy threads.
# Passive waiting costs nothing measurable on an idle machine. torch reads this when it loads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

__version__ = "0.1.0"

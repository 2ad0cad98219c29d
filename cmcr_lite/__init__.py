"""cmcr-lite: a notebook-first, tested reproduction of CMCR (Zhang & Hou, IJCV 2026).

Data flows one way: ``data`` -> ``models`` -> ``losses`` -> training loops -> notebooks.
"""
__version__ = "0.1.0"

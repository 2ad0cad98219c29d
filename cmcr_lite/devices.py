"""Where tensors go: one rule for every loop (pretraining, downstream, notebooks)."""
import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` if a GPU is visible, else ``cpu``; any other name as ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

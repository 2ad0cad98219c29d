"""The notebooks' shared start-up: one call after the ``parameters`` cell.

    session = start_notebook(preset, dataroot, version, output_dir, seed, image_weights)
    cfg = session.pretrain_config("ppkt", method="ppkt", epochs=pretrain_epochs)   # None keeps the preset's
    train_kf = session.keyframes("train")

It silences MinkowskiEngine's CPU-only warning, checks the preset, creates the output folder, seeds
Python, NumPy and torch, and resolves ``dataroot=None`` to the embedded dataset (generated on first
use). Every configuration then comes from the one preset path, ``PretrainConfig.from_preset`` and
``DownstreamConfig.lite`` / ``full``, with the notebook's parameters applied on top, so a value passed
with ``papermill -p`` is never overwritten by a preset.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset
from cmcr_lite.runtime import seed_everything

PRESETS = ("lite", "full")


@dataclass
class NotebookRun:
    """A notebook's resolved parameters. ``dataroot`` is the folder the keyframes are read from;
    ``given_dataroot`` is what the user passed (None: the embedded set, which configs also mean by None)."""
    preset: str
    out: Path
    dataroot: Path
    version: str
    seed: int
    image_weights: Optional[str]
    given_dataroot: Optional[str]

    def pretrain_config(self, name: str, **fields):
        """``PretrainConfig.from_preset(preset, ...)`` writing into ``out/name``, with this run's seed,
        image weights and (when one was given) dataset; ``fields`` set to None keep the preset's value."""
        from cmcr_lite.pretrain import PretrainConfig

        data = {} if self.given_dataroot is None else {"dataroot": str(self.given_dataroot), "version": self.version}
        return PretrainConfig.from_preset(self.preset, output_dir=str(self.out / name), seed=self.seed,
                                          image_weights=self.image_weights, **{**data, **fields})

    def probe_config(self, **overrides):
        """The preset's linear probe: ``DownstreamConfig.lite("linear_probe")`` or ``.full("linear_probe")``."""
        from cmcr_lite.downstream import DownstreamConfig

        preset = DownstreamConfig.lite if self.preset == "lite" else DownstreamConfig.full
        return preset("linear_probe", seed=self.seed, **overrides)

    def keyframes(self, split: str, nusc=None):
        """``NuScenesKeyframes`` of ``split`` from this run's dataset."""
        from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

        return NuScenesKeyframes(self.dataroot, self.version, split=split, nusc=nusc)


def start_notebook(preset: str, dataroot, version: Optional[str], output_dir, seed: int,
                   image_weights: Optional[str] = None) -> NotebookRun:
    """Check and resolve a notebook's parameters, create ``output_dir``, seed everything."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    warnings.filterwarnings("ignore", message=".*CPU_ONLY.*")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    root = ensure_embedded_dataset() if dataroot is None else Path(dataroot)
    version = version or (EMBEDDED_VERSION if dataroot is None else "v1.0-trainval")
    return NotebookRun(preset, out, root, version, seed, image_weights, None if dataroot is None else str(dataroot))

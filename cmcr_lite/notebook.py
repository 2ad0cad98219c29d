"""The notebooks' shared start-up: one call after the ``parameters`` cell.

    session = start_notebook(preset, dataroot, version, output_dir, seed, image_weights)
    cfg = session.pretrain_config("ppkt", method="ppkt", epochs=pretrain_epochs)   # None keeps the preset's
    train_kf = session.keyframes("train")

It silences MinkowskiEngine's CPU-only warning, checks the preset, creates the output folder, seeds
Python, NumPy and torch, and resolves ``dataroot=None`` to the embedded dataset (generated on first
use). Every configuration then comes from the one preset path, ``PretrainConfig.from_preset`` and
``DownstreamConfig.lite`` / ``full``, with the notebook's parameters applied on top, so a value passed
with ``papermill -p`` is never overwritten by a preset.

``load_ipython_extension`` holds the display defaults of every notebook the project's kernel runs (JupyterLab,
papermill, nbval): ``tools/setup_env.sh`` has the venv's IPython kernels load this module as an extension.
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


def _typed_arrays(node: dict):
    """Replace, in place, every numeric list (or list of lists) of 100 values or more below ``node`` by a
    base64 typed array; shorter lists stay readable JSON."""
    import base64

    import numpy as np

    for key, value in node.items():
        if isinstance(value, dict):
            _typed_arrays(value)
        elif isinstance(value, list) and value:
            try:
                array = np.asarray(value)
            except ValueError:  # a ragged list is no array
                continue
            if array.dtype.kind in "iuf" and array.ndim <= 2 and array.size >= 100:
                dtype = "f4" if array.dtype.kind == "f" else "i4"  # float32: 0.01 mm at 100 m
                node[key] = {"dtype": dtype, "shape": ",".join(map(str, array.shape)),
                             "bdata": base64.b64encode(array.astype(dtype).tobytes()).decode()}


def _compact_plotly_renderer():
    from plotly.io._base_renderers import PlotlyRenderer

    class CompactPlotlyMimetype(PlotlyRenderer):
        """plotly's JSON mimetype with long numeric arrays as base64 typed arrays (as plotly 6 writes them;
        plotly.js reads them since 2.28, JupyterLab's plotly extension has 2.35): the notebook file stores a
        coordinate in 5 characters instead of a pretty-printed line of about 25."""

        def to_mimebundle(self, fig_dict):
            bundle = super().to_mimebundle(fig_dict)
            for trace in bundle["application/vnd.plotly.v1+json"]["data"]:
                _typed_arrays(trace)
            return bundle

    return CompactPlotlyMimetype()


def load_ipython_extension(ipython):
    """Display defaults, set when the kernel starts (before a notebook's first cell, so also for notebooks
    that do not call ``start_notebook``):

    * plotly figures as plotly's JSON mimetype, drawn by JupyterLab's plotly extension (plotly.js is loaded
      once per JupyterLab session instead of being copied into every output), plus a PNG drawn by kaleido
      for static renderers (GitHub, nbconvert) that do not know the mimetype;
    * matplotlib figures scaled to JupyterLab's width when they are created (``viz.fit_to_jupyterlab``).
    """
    import matplotlib
    import plotly.io as pio

    from cmcr_lite.viz import JUPYTERLAB_WIDTH_PX

    pio.renderers["plotly_compact"] = _compact_plotly_renderer()
    pio.renderers.default = "plotly_compact+png"
    pio.renderers["png"].width = JUPYTERLAB_WIDTH_PX
    matplotlib.rcParams["figure.hooks"] = ["cmcr_lite.viz:fit_to_jupyterlab"]


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

"""Default locations: the embedded dataset and the output folder, relative to the repository.

Notebooks take a ``dataroot`` parameter; ``None`` means the embedded synthetic dataset below, which
``ensure_embedded_dataset`` generates on first use. ``CMCR_DATAROOT`` / ``CMCR_OUTPUT`` override them.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DATAROOT = Path(os.environ.get("CMCR_DATAROOT", REPO_ROOT / "data" / "nuscenes-synthetic"))
EMBEDDED_VERSION = "v1.0-synthetic"
# The embedded set: 5 scenes x 3 keyframes (teacher / val / train = 1 / 1 / 3 scenes), seed 0.
EMBEDDED_SCENES, EMBEDDED_SAMPLES_PER_SCENE, EMBEDDED_SEED = 5, 3, 0  # synthetic.PRESETS["notebook"]
OUTPUT_ROOT = Path(os.environ.get("CMCR_OUTPUT", REPO_ROOT / "outputs"))


def ensure_embedded_dataset(dataroot=None) -> Path:
    """The embedded dataset's root, generated first if missing (about half a minute on 2 cores)."""
    from cmcr_lite.data.synthetic import ensure_dataset

    root = Path(dataroot) if dataroot else EMBEDDED_DATAROOT
    return ensure_dataset(root, EMBEDDED_SCENES, EMBEDDED_SEED, EMBEDDED_SAMPLES_PER_SCENE, EMBEDDED_VERSION)


# The bench set of ``python -m experiments bench``: synthetic.PRESETS["bench"], generated on
# first use (about 3 minutes on 2 cores); CMCR_BENCH_DATAROOT overrides where it lives.
BENCH_DATAROOT = Path(os.environ.get("CMCR_BENCH_DATAROOT", REPO_ROOT / "data" / "nuscenes-bench"))


def ensure_bench_dataset(dataroot=None, workers: int = 2) -> Path:
    """The bench set's root, generated first (in ``workers`` processes) if missing."""
    from cmcr_lite.data.synthetic import PRESETS, ensure_dataset

    size = PRESETS["bench"]
    root = Path(dataroot) if dataroot else BENCH_DATAROOT
    return ensure_dataset(root, size["n_scenes"], size["seed"], size["samples_per_scene"], EMBEDDED_VERSION,
                          workers=workers)

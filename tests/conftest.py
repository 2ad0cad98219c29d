"""Shared fixtures: the embedded synthetic nuScenes dataset (generated once if missing)."""
import copy
from pathlib import Path

import pytest

from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

VERSION = EMBEDDED_VERSION


def tests_on_pythonpath() -> str:
    """PYTHONPATH for a child process that imports test modules (``test_cmcr``, ``test_minkunet``):
    this folder, then the parent's own PYTHONPATH."""
    import os

    return os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def synthetic_root() -> Path:
    """Root of the embedded dataset (5 scenes x 3 keyframes; teacher / val / train = 1 / 1 / 3 scenes).

    Tests that corrupt files must copy it first (``shutil.copytree``)."""
    return ensure_embedded_dataset()


@pytest.fixture(scope="session")
def keyframes(synthetic_root):
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    return NuScenesKeyframes(synthetic_root, VERSION, split="all")


@pytest.fixture(scope="module")
def two_keyframes(synthetic_root):
    """The first two train keyframes of the embedded set (a copy: tests may not share its state)."""
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    kf = copy.copy(NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="train"))
    kf.sample_tokens = kf.sample_tokens[:2]
    return kf

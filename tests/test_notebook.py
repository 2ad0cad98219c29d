"""start_notebook: the notebooks' one start-up and its preset path."""
import pytest

from cmcr_lite.notebook import start_notebook
from cmcr_lite.paths import EMBEDDED_VERSION
from cmcr_lite.pretrain import PretrainConfig


def test_start_notebook_resolves_the_embedded_set_and_the_presets(tmp_path, synthetic_root):
    s = start_notebook("lite", None, None, tmp_path / "out", seed=3)
    assert s.out.is_dir() and s.dataroot == synthetic_root and s.version == EMBEDDED_VERSION
    cfg = s.pretrain_config("cmcr", method="cmcr", epochs=None)        # None keeps the preset's epochs
    assert cfg == PretrainConfig.lite(method="cmcr", seed=3, output_dir=str(tmp_path / "out" / "cmcr"))
    assert s.pretrain_config("p", epochs=7).epochs == 7                 # a value passed in always wins
    assert s.probe_config().mode == "linear_probe" and s.probe_config().cache_features  # the lite probe
    assert len(s.keyframes("val")) == 3


def test_a_given_dataset_reaches_the_configs_for_both_presets(tmp_path, synthetic_root):
    for preset in ("lite", "full"):
        s = start_notebook(preset, str(synthetic_root), EMBEDDED_VERSION, tmp_path / preset, seed=0,
                           image_weights="w.pth")
        cfg = s.pretrain_config("x", method="ppkt")
        assert (cfg.dataroot, cfg.version, cfg.image_weights) == (str(synthetic_root), EMBEDDED_VERSION, "w.pth")
    assert not start_notebook("full", "/data/sets/nuscenes", None, tmp_path / "f", 0).probe_config().cache_features
    with pytest.raises(ValueError, match="preset"):
        start_notebook("medium", None, None, tmp_path, 0)

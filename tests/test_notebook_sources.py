"""The readable sources in notebooks/src/*.py are the truth: each committed .ipynb is exactly what
`make notebooks` (tools/py2nb.py) builds from its source, so an edit made only in the .ipynb (or only
in the source) fails here instead of being lost at the next rebuild."""
import importlib.util
import json

import pytest

from cmcr_lite.paths import REPO_ROOT

SOURCES = sorted((REPO_ROOT / "notebooks" / "src").glob("*.py"))


def _py2nb():
    spec = importlib.util.spec_from_file_location("py2nb", REPO_ROOT / "tools" / "py2nb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_has_a_source_and_back():
    notebooks = {p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9]*.ipynb")}
    assert notebooks == {p.stem for p in SOURCES} and len(notebooks) >= 8


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_is_built_from_its_source(src):
    built = _py2nb().notebook_text(src)
    committed = (REPO_ROOT / "notebooks" / f"{src.stem}.ipynb").read_text()
    assert committed == built, (f"notebooks/{src.stem}.ipynb differs from notebooks/src/{src.name}: edit the source "
                                f"and run `make notebooks`")
    nb = json.loads(built)
    assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    assert all(c.get("outputs", []) == [] for c in nb["cells"])

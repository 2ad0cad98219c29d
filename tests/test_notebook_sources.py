"""The readable sources in notebooks/src/*.py are the truth: each committed .ipynb is exactly what
`make notebooks` (tools/py2nb.py) builds from its source, so an edit made only in the .ipynb (or only
in the source) fails here instead of being lost at the next rebuild.

The paper notes users read are `docs/paper.md`; notebooks, modules and tests cite it by section number,
so its numbered headings are fixed here, and nothing a user gets may point at the internal notes folder."""
import importlib.util
import json
import pathlib
import re

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


# The internal notes folder that users of the repository do not have ("shared/" followed by a name).
# "shared/specific" is English (the shared/specific decomposition), not that folder.
NOTES_FOLDER = re.compile(r"shared/(?!specific)")
# The numbered headings of docs/paper.md: "docs/paper.md §N.M" citations point at these, so keep them.
PAPER_SECTIONS = (
    "## 0. Executive summary",
    "## 1. Theory",
    "### 1.1 What the accessible sources actually say",
    "### 1.2 Formalization [recon]",
    "## 2. Data pipeline (pretraining, nuScenes)",
    "## 3. Networks",
    "### 3.1 3D backbone",
    "### 3.2 2D backbone",
    "### 3.3 CMCR heads",
    "### 3.4 Feature dimensions",
    "## 4. Losses, modules and hyper-parameters",
    "### 4.1 Contrastive loss (L_NCE)",
    "### 4.2 Shared/specific decoupling (L_orth)",
    "### 4.3 Multi-modal unified codebook",
    "### 4.4 Masked image modeling (L_rec)",
    "### 4.5 Occupancy estimation (L_occ) and intensity",
    "### 4.6 Optimization and configuration",
    "## 5. Downstream protocol",
    "## 6. Paper vs. released code",
    "### 6.1 Present in the code",
    "### 6.2 Missing, or different from the figure/paper",
    "### 6.3 Pairing bug in MIM masking (verified)",
    "## 7. Practical pain points reported in GitHub issues",
    "## 8. Headline numbers",
    "### 8.1 Semantic segmentation",
    "### 8.2 Other datasets and tasks",
    "## 9. Sources",
)


def _user_files():
    """Every file a user of the repository reads: notebooks, their sources, the package, the tests, the docs."""
    root = REPO_ROOT
    files = [*SOURCES, *(root / "notebooks").glob("*.ipynb"), root / "README.md"]
    for folder in ("cmcr_lite", "tests", "docs"):
        files += [p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() != pathlib.Path(__file__).resolve()]


def test_nothing_points_at_the_internal_notes_folder():
    offenders = [f"{p.relative_to(REPO_ROOT)}:{i}: {line.strip()}" for p in _user_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if NOTES_FOLDER.search(line)]
    assert not offenders, "cite docs/paper.md, not a folder users do not have:\n" + "\n".join(offenders)


def test_docs_paper_has_the_numbered_sections():
    paper = REPO_ROOT / "docs" / "paper.md"
    assert paper.is_file()
    numbered = [line for line in paper.read_text().splitlines() if re.match(r"#{2,3} \d", line)]
    assert numbered == list(PAPER_SECTIONS), "citations like `docs/paper.md` §4.3 need these headings"

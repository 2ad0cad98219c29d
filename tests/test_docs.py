"""The front door and the pages behind it: the README stays short and reaches the course early, and
every relative link in the README, docs/ and experiments/README.md points to a file that exists."""
import re

from cmcr_lite.paths import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "experiments" / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_front_door():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; details belong in docs/ or experiments/README.md"
    course = next(i for i, line in enumerate(lines) if line.startswith("| `00_data`"))
    assert course < 40, f"the notebooks' table starts at line {course + 1}; a student should reach it within 40"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)} -> {target}")
    assert not broken, "\n".join(broken)

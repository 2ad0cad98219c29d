"""Build a clean .ipynb from a percent-format script (the notebook's readable source).

    python tools/py2nb.py notebooks/src/00_data.py     # writes notebooks/00_data.ipynb

Cell markers: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell (each line
prefixed with ``# ``), and ``# %% tags=["parameters"]`` a tagged code cell for papermill.
The notebook is written without outputs and with the metadata of the project's ``python3`` kernel
(``KERNEL_METADATA``), which papermill, nbval and JupyterLab read.
"""
import json
import pathlib
import re
import sys

# Exactly what JupyterLab writes into a notebook it opens with the kernel tools/setup_env.sh installs:
# the kernelspec of its kernel.json and the language_info of ipykernel's kernel_info reply (Python 3.11.7,
# the set-up's interpreter). JupyterLab only sets metadata that differs, so opening a committed notebook
# marks nothing modified and autosave never rewrites it. tests/test_browser.py checks both ends.
KERNEL_METADATA = {
    "kernelspec": {"display_name": "Python 3 (cmcr-lite)", "language": "python", "name": "python3"},
    "language_info": {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": "3.11.7",
    },
}
MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def parse_cells(text):
    cells, current = [], None
    for line in text.splitlines():
        m = MARKER.match(line)
        if m:
            current = {"md": bool(m.group("md")), "tags": json.loads(m.group("tags") or "[]"), "lines": []}
            cells.append(current)
        elif current is not None:
            current["lines"].append(line)
    out = []
    for c in cells:
        lines = c["lines"]
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if c["md"]:
            lines = [re.sub(r"^# ?", "", l) for l in lines]
        source = [l + "\n" for l in lines]
        if source:
            source[-1] = source[-1].rstrip("\n")
        meta = {"tags": c["tags"]} if c["tags"] else {}
        if c["md"]:
            out.append({"cell_type": "markdown", "metadata": meta, "source": source})
        else:
            out.append({"cell_type": "code", "execution_count": None, "metadata": meta,
                        "outputs": [], "source": source})
    return out


def notebook_text(src: pathlib.Path) -> str:
    """The .ipynb file's exact text for the percent-format source ``src`` (no outputs, stable ids)."""
    nb = {
        "cells": parse_cells(src.read_text()),
        "metadata": KERNEL_METADATA,
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"{src.stem[:20]}-{i:03d}".replace("_", "-")
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def convert(src: pathlib.Path, dst: pathlib.Path):
    dst.write_text(notebook_text(src))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        src = pathlib.Path(arg)
        dst = src.parent.parent / (src.stem + ".ipynb") if src.parent.name == "src" else src.with_suffix(".ipynb")
        convert(src, dst)
        print(f"wrote {dst}")

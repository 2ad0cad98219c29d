"""The README's generated blocks: ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``, rewritten from the
committed results files by ``python -m experiments readme``; a test checks the committed README
equals what this writes now."""
from __future__ import annotations

import json
from pathlib import Path

from experiments import RESULTS_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
README_BLOCKS = ("bench", "ladder")  # <!-- NAME:begin --> ... <!-- NAME:end --> blocks generated from results files


BENCH_COLUMNS = ("miou", "geometry twins told apart", "appearance twins told apart")


def bench_block(summary: dict) -> str:
    """The README's bench table: each row's seeds, mIoU and twins told apart (mean ± sample std, %)."""
    from experiments.report import COLUMN_TITLES

    lines = ["| row | seeds | " + " | ".join(COLUMN_TITLES[c] for c in BENCH_COLUMNS) + " |",
             "|---|---|" + "---|" * len(BENCH_COLUMNS)]
    for row, r in summary["rows"].items():
        cells = [f"{100 * r[c]['mean']:.1f} ± {100 * r[c]['std']:.1f}" for c in BENCH_COLUMNS]
        lines.append(f"| {row} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block(name: str) -> str:
    """The text of the README's generated block ``name``, from the committed results files."""
    if name == "bench":
        from experiments.report import load_report

        return bench_block(load_report()["summary"])
    if name == "ladder":
        from experiments.ladder import load_ladder
        from experiments.ladder import readme_block as ladder_block

        mechanism_file = RESULTS_DIR / "mechanism.json"
        return ladder_block(load_ladder()["summary"],
                            json.loads(mechanism_file.read_text()) if mechanism_file.is_file() else None)
    raise ValueError(f"no README block {name!r}; blocks are {README_BLOCKS}")


def readme_with_blocks(text: str) -> str:
    """``text`` (the README) with every generated block rewritten from the results files."""
    for name in README_BLOCKS:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in text or end not in text:
            raise ValueError(f"README.md: no {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + readme_block(name) + "\n" + end + rest.split(end, 1)[1]
    return text

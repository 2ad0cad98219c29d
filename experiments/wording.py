"""How the generated notes write numbers, and how they refuse words the numbers no longer support.

The notes (``python -m experiments notes``) are sentences with numbers filled in from the results
files. A sentence whose *words* depend on a number ("the A/A set is the outlier", "still rising")
states that premise with :func:`premise`: when a rerun breaks it, writing the notes stops with the
sentence to rewrite, instead of printing a claim the files no longer make.
"""
from __future__ import annotations

import json
from pathlib import Path


class PremiseError(ValueError):
    """A generated sentence's words no longer follow from the results files."""


def premise(holds: bool, words: str, where: str):
    """Stop unless ``holds``: ``words`` (the sentence's claim) must be rewritten in ``where``."""
    if not holds:
        raise PremiseError(f"the results files no longer support {words!r}: rewrite it in {where}")


def load(path: Path) -> dict:
    """A results JSON file."""
    return json.loads(Path(path).read_text())


def signed(x: float, digits: int = 1) -> str:
    """``x`` with its sign and a true minus: ``+1.2``, ``−0.4``."""
    return f"{x:+.{digits}f}".replace("-", "−")


def points(fraction: float, digits: int = 1) -> str:
    """A difference of fractions in signed percentage points: ``0.012`` -> ``+1.2``."""
    return signed(100 * fraction, digits)


def interval(d: dict, style: str = "brackets") -> str:
    """A paired difference ``{"mean", "low", "high"}`` (fractions) in points: ``+0.7 [−1.1, +2.5]``,
    or with ``style="words"`` ``+0.7 (−1.1 to +2.5)``."""
    m, lo, hi = points(d["mean"]), points(d["low"]), points(d["high"])
    return f"{m} [{lo}, {hi}]" if style == "brackets" else f"{m} ({lo} to {hi})"


def times(ratios, digits: int = 2) -> str:
    """Time ratios in words: ``1.29× and 1.32×``; ``1.36×, 1.38× and 1.08×``."""
    words = [f"{r:.{digits}f}×" for r in ratios]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def fraction_label(fraction: float) -> str:
    """A label fraction as the tables write it: ``1.0`` -> ``"all"``, ``1 / 18`` -> ``"1/18"``."""
    return "all" if fraction == 1 else f"1/{round(1 / fraction)}"


def count_word(n: int) -> str:
    """``0`` -> ``"no"``, ``3`` -> ``"three"`` (up to ten), else the digits."""
    words = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return words[n] if 0 <= n < len(words) else str(n)

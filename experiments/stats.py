"""How far apart disjoint seed sets of one method land: the bench's A/A noise floor, read from more
than two sets.

The bench's power check asks that PPKT on seeds 0-7 and PPKT again on seeds 100-107 (the A/A row)
agree to 1 mIoU point. If each seed is an independent draw with per-seed standard deviation sigma,
the means of sets of n seeds scatter with standard deviation sigma / sqrt(n), and two of them differ
by more than 1.96 * sigma * sqrt(2 / n) one time in twenty. With several disjoint sets of one method
both can be checked: whether the set means scatter as the per-seed spread predicts (a one-way
analysis of variance), and how often a gap of a given size comes up between two sets drawn at random
from every seed that was run.

Which classes make the spread: mIoU is the mean of C class IoUs, so its variance over seeds splits
exactly into one share per class, ``cov(IoU_c, mIoU) / (C * var(mIoU))``; the shares sum to 1.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

__all__ = ["spread_of_set_means", "chance_of_gap", "variance_shares"]


def spread_of_set_means(sets: dict) -> dict:
    """Compare the scatter of the set means with what the per-seed spread predicts.

    Args:
        sets: name -> (n,) per-seed values (any unit, e.g. mIoU in %), every set of the same n >= 2,
            at least two sets.

    Returns:
        dict with ``sets`` (name -> mean, std, n), ``pooled_std`` (the within-set standard deviation,
        pooled), ``std_of_means`` (the sample std of the set means), ``predicted_std_of_means``
        (``pooled_std / sqrt(n)``), ``F`` and ``p`` (one-way ANOVA: between-set over within-set mean
        square, and the chance of an F at least that large if every seed were the same draw), and
        ``pairs``: for every pair of sets "a - b" the difference of their means.
    """
    names = list(sets)
    values = [np.asarray(sets[k], dtype=float).reshape(-1) for k in names]
    sizes = {len(v) for v in values}
    if len(values) < 2 or len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"spread_of_set_means: needs >= 2 sets of one size >= 2; got sizes "
                         f"{ {k: len(v) for k, v in zip(names, values)} }")
    from scipy import stats

    k, n = len(values), sizes.pop()
    means = np.array([v.mean() for v in values])
    within = sum(((v - v.mean()) ** 2).sum() for v in values) / (k * (n - 1))  # mean square within
    between = n * ((means - means.mean()) ** 2).sum() / (k - 1)                # mean square between
    f = float(between / within) if within > 0 else float("inf")
    return {
        "sets": {name: {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "n": n} for name, v in zip(names, values)},
        "pooled_std": float(np.sqrt(within)),
        "std_of_means": float(means.std(ddof=1)),
        "predicted_std_of_means": float(np.sqrt(within / n)),
        "F": f,
        "p": float(stats.f.sf(f, k - 1, k * (n - 1))),
        "pairs": {f"{a} - {b}": float(va.mean() - vb.mean())
                  for (a, va), (b, vb) in combinations(zip(names, values), 2)},
    }


def chance_of_gap(values, n: int, gap: float, draws: int = 100_000, seed: int = 0) -> float:
    """The chance that two disjoint sets of ``n`` seeds, drawn at random from ``values`` (every seed
    that was run, (N,) with N >= 2n), have means at least ``gap`` apart (either sign).

    Monte Carlo over ``draws`` random splits (seeded, so the answer is reproducible); its standard
    error is at most 0.5 / sqrt(draws).
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    if len(v) < 2 * n or n < 1:
        raise ValueError(f"chance_of_gap: needs at least 2 * n = {2 * n} values; got {len(v)}")
    rng = np.random.default_rng(seed)
    hits, batch = 0, 10_000
    for start in range(0, draws, batch):
        m = min(batch, draws - start)
        picks = np.argsort(rng.random((m, len(v))), axis=1)[:, :2 * n]  # a random ordering per draw
        a, b = v[picks[:, :n]].mean(1), v[picks[:, n:]].mean(1)
        hits += int((np.abs(a - b) >= gap).sum())
    return hits / draws


def variance_shares(per_class: dict) -> dict:
    """Each class's share of the variance of the mIoU over seeds.

    Args:
        per_class: class -> (S,) IoU per seed (S >= 2), every class over the same seeds; the mIoU of a
            seed is the mean over these classes.

    Returns:
        class -> ``cov(IoU_c, mIoU) / (C * var(mIoU))``; the shares sum to 1 (a class can be
        negative when it moves against the others).
    """
    names = list(per_class)
    iou = np.stack([np.asarray(per_class[c], dtype=float).reshape(-1) for c in names])  # (C, S)
    if iou.shape[1] < 2:
        raise ValueError(f"variance_shares: needs >= 2 seeds per class; got {iou.shape[1]}")
    miou = iou.mean(0)
    var = miou.var(ddof=1)
    if var == 0:
        raise ValueError("variance_shares: the mIoU is the same for every seed; there is no variance to share")
    cov = ((iou - iou.mean(1, keepdims=True)) * (miou - miou.mean())).sum(1) / (iou.shape[1] - 1)
    return {c: float(s) for c, s in zip(names, cov / (len(names) * var))}


def t_interval(diffs) -> tuple:
    """(mean, low, high): the mean of ``diffs`` and its two-sided 95 % Student-t interval."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def welch_interval(a, b) -> tuple:
    """(mean(a) - mean(b), low, high): Welch's 95 % interval for a difference of two independent means."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * np.sqrt(va + vb)
    return diff, float(diff - half), float(diff + half)


def sample_std(values) -> float:
    """The sample standard deviation (n - 1 in the denominator) of the non-NaN values; NaN below 2."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.std(ddof=1)) if len(v) >= 2 else float("nan")

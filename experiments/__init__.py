"""The evidence beside the method: experiments that test what ``cmcr_lite`` claims, and their results.

    python -m experiments bench              # the decisive benchmark (experiments.bench)
    python -m experiments ladder             # the paper's ablation on the bench (experiments.ladder)
    python -m experiments mechanism          # which loss terms move the trunk (experiments.mechanism)
    python -m experiments label-efficiency   # fine-tune / probe at few labels (experiments.label_efficiency)
    python -m experiments notes              # rewrite every generated result block (experiments.notes)

``experiments`` imports ``cmcr_lite``'s public names, never the reverse. Results (small JSON, Markdown
and PNG files, committed) go to ``experiments/results/``; checkpoints to ``outputs/experiments/``
(not committed). Index: ``experiments/README.md``.
"""
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

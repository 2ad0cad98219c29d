"""The bench's plan and rows: which trunks are pretrained how, on which seeds, and where each job's
files go. ``experiments.bench`` says what the rows are for; ``experiments.jobs`` runs them."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cmcr_lite.metrics import GROUPS, TWIN_METRICS

ROWS = ("random init", "supervised ceiling", "image-only reference", "PPKT", "PPKT (A/A)", "occupancy only", "CMCR")
PRETRAINED = ("PPKT", "PPKT (A/A)", "occupancy only", "CMCR")
COLUMNS = ("miou",) + tuple(GROUPS) + tuple(TWIN_METRICS) + (
    "geometry twins in features", "appearance twins in features",
    "geometry twins in features (MLP)", "appearance twins in features (MLP)")
# paired differences reported with a 95 % interval: (row, minus row)
DIFFERENCES = (("CMCR", "PPKT"), ("occupancy only", "PPKT"))


@dataclass
class BenchPlan:
    """What the bench runs. Defaults: the full bench (about 2 hours on 2 cores); :meth:`smoke`."""
    seeds: tuple = (0, 1, 2, 3, 4)
    # The noise floor, PPKT against PPKT on a disjoint seed set (the A/A row), compares two means of
    # independent seeds: its standard error is sigma * sqrt(2 / n). With the measured per-seed sigma of
    # about 1 mIoU point, 5 seeds a side leave it at 0.63 points, so a gap above 1 point is an 11 %
    # draw even between identical methods (the 5-seed bench drew +1.4). Eight a side is the smallest
    # n with 1.96 * sigma * sqrt(2 / n) <= 1: PPKT runs on three more seeds and the A/A row on eight.
    noise_floor_seeds: tuple = (5, 6, 7)         # PPKT only, on top of ``seeds``
    aa_seeds: tuple = (100, 101, 102, 103, 104, 105, 106, 107)  # PPKT again, disjoint from the others
    pretrain_epochs: int = 20                    # lite pretraining epochs (27 steps each on the bench set)
    # the pretraining's learning rate: cosine from the lite 2e-3 down to 0, so every pretrained row ends
    # converged (flat losses) whatever its objective; at a constant rate the 12-epoch losses still fell
    # 2-4 % of their whole drop in the last epoch, and a constant-rate run stops at a noisy iterate
    pretrain_schedule: str = "cosine"
    # The supervised ceiling's recipe (the reference, not a method under test, so tuned for a high,
    # converged ceiling): SGD lr 0.1 for trunk and head, batch 2, 30 epochs (810 steps). The paper's
    # fine-tuning rates (0.02, head 2.0) at the lite batch of 2 for 480 steps left car at IoU 0; batch 4
    # at lr 0.05 took 60 epochs (840 steps, twice the time: a pass costs the same at either batch) and
    # still ended lower (experiments/results/ceiling_recipes_amd_epyc_17).
    ceiling_epochs: int = 30
    ceiling: dict = field(default_factory=lambda: {"lr": 0.1, "lr_head": None, "batch_size": 2})
    dataroot: str | None = None                  # None: the set named by ``dataset``, generated if missing
    dataset: str = "bench"                       # "bench" (paths.ensure_bench_dataset) or "notebook" (the embedded set)
    version: str = "v1.0-synthetic"
    output_root: str = "outputs/experiments/bench"
    results_name: str = "bench"
    workers: int = 2                             # jobs at once, one thread each
    # the frozen trunk's BatchNorm in every read-out: "running" (the statistics pretraining left, as
    # every downstream read-out uses them) or "recalibrated" (re-estimated by one pass over the train
    # scans, downstream.recalibrate_batchnorm), the control for stale running statistics
    batchnorm: str = "running"
    pretrain: dict = field(default_factory=dict)  # extra PretrainConfig.lite fields (the smoke sizes)

    def __post_init__(self):
        if self.batchnorm not in ("running", "recalibrated"):
            raise ValueError(f"BenchPlan: batchnorm must be 'running' or 'recalibrated', got {self.batchnorm!r}")

    @classmethod
    def smoke(cls, **overrides) -> "BenchPlan":
        """Every row on 2 seeds, 1 pretraining epoch, a 2-epoch ceiling, on the notebook-size set:
        checks the pipeline end to end in a few minutes; the numbers mean nothing."""
        return replace(cls(seeds=(0, 1), noise_floor_seeds=(), aa_seeds=(100, 101), pretrain_epochs=1,
                           ceiling_epochs=2, dataset="notebook",
                           output_root="outputs/experiments/bench_smoke", results_name="bench_smoke"), **overrides)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "BenchPlan":
        """:meth:`to_dict` reversed (JSON turned the seed tuples into lists); the worker processes get it."""
        return cls(**{k: tuple(v) if k in ("seeds", "noise_floor_seeds", "aa_seeds") else v for k, v in d.items()})


def row_slug(row: str) -> str:
    """A row's file name: "PPKT (A/A)" -> "ppkt__a_a", "+ MIM" -> "plus_mim", "CMCR (occupancy ×10)" ->
    "cmcr__occupancy_x10"."""
    row = row.replace("+", "plus").replace("×", "x")
    return "".join(c if c.isalnum() or c == "." else "_" for c in row).strip("_").lower()


def job_result(runs_dir, row: str, seed: int) -> Path:
    """Where the job (``row``, ``seed``) writes its result: ``<runs_dir>/<row slug>_seed<k>.json``."""
    return Path(runs_dir) / f"{row_slug(row)}_seed{seed}.json"


def pretrain_checkpoint(plan: BenchPlan, row: str, seed: int) -> Path:
    """Where the pretraining of ``row`` on ``seed`` keeps its checkpoint (under ``plan.output_root``)."""
    return Path(plan.output_root) / f"{row_slug(row)}_seed{seed}" / "pretrain" / "checkpoint.pt"


def bench_jobs(plan: BenchPlan) -> list:
    """[(row, seed)] for every row and seed, the slowest first, so that the last jobs are short and
    the workers finish together (longest-processing-time order). Measured one-thread minutes per job
    (bench.json): CMCR 11, occupancy only 8, PPKT 5, the ceiling (30 epochs at batch 2) 5 to 6, the two
    read-outs of fixed features under 1."""
    jobs = [(row, s) for row in ("CMCR", "occupancy only", "supervised ceiling", "PPKT") for s in plan.seeds]
    jobs += [("PPKT", s) for s in plan.noise_floor_seeds] + [("PPKT (A/A)", s) for s in plan.aa_seeds]
    jobs += [(row, s) for row in ("image-only reference", "random init") for s in plan.seeds]
    return jobs


# The paper's ablation ladder on the bench (experiments.ladder): PPKT, then one CMCR part more per rung,
# named as in ``cmcr.ABLATION_STEPS``; "CMCR" (the bench's own row) is the last rung, which adds occupancy.
LADDER = ("+ decoupling", "+ codebook", "+ MIM", "+ GeoMIM")
NCE_AND_OCCUPANCY = "PPKT + occupancy"  # the NCE next to the occupancy/intensity terms, nothing else
_DIAGNOSTIC = re.compile(r"CMCR \(occupancy ×([0-9.]+)\)")


def diagnostic_row(weight: float) -> str:
    """The name of the diagnostic row "CMCR with the occupancy and intensity weights × ``weight``"."""
    return f"CMCR (occupancy ×{weight:g})"


def pretrain_fields(row: str) -> dict:
    """The ``PretrainConfig`` fields of a pretrained row (ValueError for a row that is not pretrained)."""
    from cmcr_lite.cmcr import ABLATION_STEPS, CMCROptions

    if row in ("PPKT", "PPKT (A/A)"):
        return {"method": "ppkt"}
    if row == "occupancy only":
        return {"method": "cmcr", "cmcr": CMCROptions.occupancy_only()}
    if row == "CMCR":
        return {"method": "cmcr", "cmcr": CMCROptions()}
    if row in LADDER:
        return {"method": "cmcr", "cmcr": ABLATION_STEPS[row]}
    if row == NCE_AND_OCCUPANCY:
        return {"method": "cmcr", "cmcr": CMCROptions.contrastive_and_occupancy()}
    diagnostic = _DIAGNOSTIC.fullmatch(row)
    if diagnostic:
        w = float(diagnostic.group(1))
        return {"method": "cmcr", "cmcr": CMCROptions(occupancy_weight=w, intensity_weight=w)}
    raise ValueError(f"bench: {row!r} is not a pretrained row")


def is_pretrained(row: str) -> bool:
    """Whether ``row`` pretrains a trunk (every row but random init, the ceiling and the image reference)."""
    try:
        pretrain_fields(row)
    except ValueError:
        return False
    return True


def pretrain_config(plan: BenchPlan, row: str, seed: int, root: str, **fields):
    """The ``PretrainConfig`` of a pretrained row's job: the lite preset with the plan's epochs,
    schedule and extra fields, the row's method and options, writing to :func:`pretrain_checkpoint`'s
    folder; ``fields`` override (say, ``gradient_every`` or another ``output_dir``)."""
    from cmcr_lite.pretrain import PretrainConfig

    return PretrainConfig.lite(**{**plan.pretrain, **pretrain_fields(row), "dataroot": root, "version": plan.version,
                                  "epochs": plan.pretrain_epochs, "seed": seed, "lr_schedule": plan.pretrain_schedule,
                                  "output_dir": str(pretrain_checkpoint(plan, row, seed).parent),
                                  "tensorboard": False, **fields})


def downstream_config(mode: str, pretrain: dict, seed: int, **fields):
    """``DownstreamConfig.lite(mode)`` on the trunk every row reads out: the pretraining's architecture
    (``PretrainConfig.lite(**pretrain)``, lite unless ``pretrain`` changes it) with the downstream
    BatchNorm momentum of ``DownstreamConfig.lite``. A job's ``sizes["pretrain"]`` and ``seed`` rebuild it."""
    from cmcr_lite.downstream import DownstreamConfig
    from cmcr_lite.pretrain import PretrainConfig

    trunk = replace(PretrainConfig.lite(**pretrain).backbone, bn_momentum=0.1)
    return DownstreamConfig.lite(mode, seed=seed, backbone=trunk, **fields)

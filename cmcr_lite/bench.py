"""The benchmark that can decide the paper's claim on the embedded world, with its ceilings and controls.

    python -m cmcr_lite.experiments bench            # every row x 5 seeds (PPKT x 8, A/A x 8) on the bench set
    python -m cmcr_lite.experiments bench --smoke    # the same pipeline at toy size, minutes

Question: does contrastive distillation (PPKT) miss what only the LiDAR sees, and do CMCR's
reconstruction tasks bring it back? The bench set (``synthetic.PRESETS["bench"]``) has twins of
classes that only the LiDAR (geometry twins) or only the cameras (appearance twins) tell apart. The
rows, all on the same seeds so that differences are paired:

* ``random init``: linear probe of an untrained trunk (what the architecture alone gives);
* ``supervised ceiling``: the same trunk trained from scratch on every label; it shows the twins
  *can* be learned from the LiDAR, so a pretraining that does not separate them has missed them;
* ``image-only reference``: the frozen 2D teacher's features at each point's pixel, probed
  linearly; it shows what the teacher can hand down (appearance twins yes, geometry twins no);
* ``PPKT`` and ``PPKT (A/A)``: the same method on two disjoint seed sets of 8 (PPKT's first five are
  every other row's seeds), the noise floor;
* ``occupancy only``: LiDAR-only self-supervision (CMCR with every other term off, ALSO-style), the
  positive control for "a reconstruction target teaches geometry";
* ``CMCR``: the full method.

Every trunk is read out the same way (:func:`linear_readout`): a linear softmax probe of the frozen
trunk's standardised features (16 classes), fitted on the train split to the optimum of its convex
objective, scored per point on val; plus two-class probes per twin pair on the trunk's features,
linear (ridge) and a small MLP. The bench does not use the paper's SGD probe (CE + Lovász, a fixed
number of epochs): on the embedded set its result moves by several mIoU points with the probe's own
seed, which would swamp the differences between trunks that the bench exists to measure. The
downstream CLI keeps the paper's probe. Jobs run one per core on one thread
each (bit-identical when repeated) and each writes its result atomically to ``benchmarks/results/bench_runs/``, so a rerun skips what
is done. Output: ``benchmarks/results/bench.{json,md,png}``.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cmcr_lite.metrics import GROUPS, TWIN_METRICS, summarize_confusion, twin_separation

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
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
    # still ended lower (benchmarks/results/ceiling_recipes_amd_epyc_17).
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


# ------------------------------------------------------------------------------------------ jobs
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


# The paper's ablation ladder on the bench (cmcr_lite.ladder): PPKT, then one CMCR part more per rung,
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


def _per_pair(conf) -> dict:
    return {f"{a}|{b}": twin_separation(conf, a, b) for pairs in TWIN_METRICS.values() for a, b in pairs}


PROBE = "softmax, L-BFGS to convergence"  # the linear probe's name in each result's sizes: a change re-reads


def frozen_trunk(config, pretrained, seed: int, recalibrate_on=None):
    """A ``SegmentationModel`` in eval mode with the trunk of ``pretrained`` (a checkpoint path), or
    a random trunk initialised from ``seed`` when it is None. ``recalibrate_on`` (keyframes): its
    BatchNorm statistics re-estimated on them (``downstream.recalibrate_batchnorm``)."""
    import torch

    from cmcr_lite.downstream import recalibrate_batchnorm
    from cmcr_lite.downstream.model import SegmentationModel, load_pretrained_trunk

    torch.manual_seed(seed)
    model = SegmentationModel(config.backbone, config.num_classes)
    if pretrained is not None:
        load_pretrained_trunk(model, str(pretrained), config)
    if recalibrate_on is not None:
        recalibrate_batchnorm(model, recalibrate_on, config)
    return model.eval()


def linear_readout(model, train, val, config, seed: int, train_indices=None, own_head: bool = False,
                   twin_probes: bool = True) -> dict:
    """The readout every trunk row shares, on the frozen trunk's per-point features.

    The 16-class prediction comes from ``model``'s own head when ``own_head`` (the supervised
    ceiling), else from a linear softmax probe fitted to its optimum on the voxel features of the
    ``train`` keyframes (``train_indices``: a label fraction's subset) and scored per point on val
    (:func:`cmcr_lite.analysis.probes.softmax_probe`: convex, no seed, so the probe adds no noise of
    its own). With ``twin_probes``, also the two-class twin probes (ridge and MLP) on the per-point
    features.
    """
    import torch

    from cmcr_lite.analysis.probes import features_twin_summary, softmax_probe
    from cmcr_lite.downstream import evaluate, extract_features
    from cmcr_lite.metrics import confusion_matrix

    tr = extract_features(model, train, config, indices=train_indices, progress=False)
    va = extract_features(model, val, config, progress=False)
    xv = torch.cat([s.point_features for s in va])
    yv = np.concatenate([np.asarray(s.point_labels) for s in va])
    if own_head:
        conf = evaluate(model, val, config, progress=False)
    else:
        xt = torch.cat([s.voxel_features for s in tr])
        yt = np.concatenate([np.asarray(s.voxel_labels) for s in tr])
        keep = yt != config.ignore_index
        pred = softmax_probe(xt[torch.from_numpy(keep)], yt[keep], xv, config.num_classes)
        conf = confusion_matrix(pred, yv, config.num_classes, ignore_index=config.ignore_index)
    out = summarize_confusion(conf)
    out["per_pair"] = _per_pair(conf)
    if not twin_probes:
        return out
    xt_points = torch.cat([s.point_features for s in tr])
    yt_points = np.concatenate([np.asarray(s.point_labels) for s in tr])
    out.update(features_twin_summary(xt_points, yt_points, xv, yv, mlp_seed=seed))
    return out


def pretrain_config(plan: BenchPlan, row: str, seed: int, root: str, **fields):
    """The ``PretrainConfig`` of a pretrained row's job: the lite preset with the plan's epochs,
    schedule and extra fields, the row's method and options, writing to :func:`pretrain_checkpoint`'s
    folder; ``fields`` override (say, ``gradient_every`` or another ``output_dir``)."""
    from cmcr_lite.pretrain import PretrainConfig

    return PretrainConfig.lite(**{**plan.pretrain, **pretrain_fields(row), "dataroot": root, "version": plan.version,
                                  "epochs": plan.pretrain_epochs, "seed": seed, "lr_schedule": plan.pretrain_schedule,
                                  "output_dir": str(pretrain_checkpoint(plan, row, seed).parent),
                                  "tensorboard": False, **fields})


def _pretrained_steps(checkpoint: Path) -> int:
    """Optimizer steps already in a pretraining checkpoint (0 when there is none)."""
    import torch

    if not checkpoint.is_file():
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return sum(h["steps"] for h in state.get("history", []))


def _resumable(cfg, checkpoint: Path, row: str, seed: int) -> bool:
    """Whether the pretraining can continue from ``checkpoint``. One made with other settings (say,
    another epoch count under the cosine schedule) cannot: the job then pretrains from scratch,
    overwriting it, and says so."""
    import torch

    from cmcr_lite.pretrain import PretrainConfig, resume_ignores
    from cmcr_lite.runtime import check_resumable

    if not checkpoint.is_file():
        return False
    saved = PretrainConfig.from_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["config"])
    try:
        check_resumable(saved, cfg, resume_ignores(cfg), checkpoint)
    except ValueError as why:
        print(f"bench: {row}, seed {seed}: {why}; pretraining from scratch", flush=True)
        return False
    return True


def _measured_step_time(previous: dict):
    """The pretraining seconds per step a previous result measured, or None. Some early results hold
    the time of a call that trained no step (below 0.05 s; a lite step on one CPU thread takes 0.3 s
    or more), which is no measurement."""
    value = previous.get("pretrain_seconds_per_step")
    return value if value is not None and value >= 0.05 else None


def downstream_config(mode: str, pretrain: dict, seed: int, **fields):
    """``DownstreamConfig.lite(mode)`` on the trunk every row reads out: the pretraining's architecture
    (``PretrainConfig.lite(**pretrain)``, lite unless ``pretrain`` changes it) with the downstream
    BatchNorm momentum of ``DownstreamConfig.lite``. A job's ``sizes["pretrain"]`` and ``seed`` rebuild it."""
    from cmcr_lite.downstream import DownstreamConfig
    from cmcr_lite.pretrain import PretrainConfig

    trunk = replace(PretrainConfig.lite(**pretrain).backbone, bn_momentum=0.1)
    return DownstreamConfig.lite(mode, seed=seed, backbone=trunk, **fields)


def run_job(plan_dict: dict, root: str, row: str, seed: int, runs_dir: str, need_checkpoint: bool = False) -> dict:
    """Run one (row, seed) job on one thread; reuse its result when it is there. The result goes to
    ``<runs_dir>/<row>_seed<k>.json`` (small, committed with the summary, so a later session resumes
    from it); checkpoints stay under ``plan.output_root`` (not committed). ``need_checkpoint``: a
    pretrained row's result is reused only when its checkpoint is there too (label efficiency
    fine-tunes it; on a fresh clone the committed results have none, so it is pretrained again)."""
    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import train_segmentation
    from cmcr_lite.runtime import atomic_path, machine

    plan = BenchPlan.from_dict(plan_dict)
    run_dir = Path(plan.output_root) / f"{row_slug(row)}_seed{seed}"
    done = job_result(runs_dir, row, seed)
    # a result is reused when it was made with this plan's sizes and probe; with more epochs the
    # pretraining resumes from its checkpoint and continues (the loop's resume ignores ``epochs``)
    sizes = {"pretrain": plan.pretrain}  # the trunk's architecture, read by every row
    if is_pretrained(row):
        sizes.update(pretrain_epochs=plan.pretrain_epochs, pretrain_schedule=plan.pretrain_schedule)
    elif row == "supervised ceiling":
        sizes.update(ceiling_epochs=plan.ceiling_epochs, ceiling=plan.ceiling)
    if row != "supervised ceiling":
        sizes["probe"] = PROBE if plan.batchnorm == "running" else f"{PROBE}, BatchNorm {plan.batchnorm}"
    previous = json.loads(done.read_text()) if done.is_file() else {}
    ckpt = pretrain_checkpoint(plan, row, seed)
    missing = need_checkpoint and is_pretrained(row) and not ckpt.is_file()
    if previous.get("sizes") == sizes and not missing:  # results without sizes (the first jobs) are read out again
        return previous
    torch.set_num_threads(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = NuScenesKeyframes(root, plan.version, split="train")
    val = NuScenesKeyframes(root, plan.version, split="val", nusc=train.nusc)
    t0 = time.time()
    # the CPU it ran on: its step times, and the last bits of its floats, depend on it (runtime.machine)
    result = {"row": row, "seed": seed, "sizes": sizes, "machine": machine()}
    from cmcr_lite.pretrain import pretrain

    lite = lambda mode, **kw: downstream_config(mode, plan.pretrain, seed, **kw)  # noqa: E731
    recalibrate = train if plan.batchnorm == "recalibrated" else None
    if is_pretrained(row):
        cfg = pretrain_config(plan, row, seed, root)
        resume = _resumable(cfg, ckpt, row, seed)
        steps_before = _pretrained_steps(ckpt) if resume else 0
        out = pretrain(cfg, resume=resume, progress=False, keyframes=train)
        new_steps = sum(h["steps"] for h in out["history"]) - steps_before
        result["history"] = out["history"]
        # seconds per step of the steps run in this call; a re-read of a finished pretraining keeps
        # the time measured when it ran (None when that was never measured)
        result["pretrain_seconds_per_step"] = ((time.time() - t0) / new_steps if new_steps > 0
                                               else _measured_step_time(previous))
        t_readout = time.time()
        probe_cfg = lite("linear_probe")
        result.update(linear_readout(frozen_trunk(probe_cfg, out["checkpoint"], seed, recalibrate), train, val,
                                     probe_cfg, seed))
        result["readout_seconds"] = time.time() - t_readout
    elif row == "random init":
        probe_cfg = lite("linear_probe")
        result.update(linear_readout(frozen_trunk(probe_cfg, None, seed, recalibrate), train, val, probe_cfg, seed))
    elif row == "supervised ceiling":
        cfg = lite("finetune", epochs=plan.ceiling_epochs, **plan.ceiling)
        model, history = train_segmentation(cfg, train, pretrained=None, progress=False)
        result["history"] = history
        result.update(linear_readout(model, train, val, cfg, seed, own_head=True))
    elif row == "image-only reference":
        result.update(image_reference(root, plan.version, train, val, seed))
    else:
        raise ValueError(f"bench: unknown row {row!r}; rows are {ROWS}")
    result["seconds"] = time.time() - t0
    # the confusion matrix stays in the result (17 x 17 counts), so summaries can be recomputed
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def image_reference(root, version: str, train, val, seed: int) -> dict:
    """The frozen 2D teacher's features at each paired point's pixel (centre crop, lite size), read
    by a linear softmax probe (16 classes) and by the twin probes. Only points seen by a camera
    count, each once per camera that sees it."""
    import torch

    from cmcr_lite.analysis.probes import features_twin_summary, softmax_probe
    from cmcr_lite.classes import IGNORE_INDEX, NUM_CLASSES_16
    from cmcr_lite.metrics import confusion_matrix
    from cmcr_lite.teacher import keyframe_pixel_features, load_or_train_teacher

    teacher = load_or_train_teacher(root, version, progress=False)

    def rows(keyframes):
        feats, labels = [], []
        for i in range(len(keyframes)):
            f, y = keyframe_pixel_features(teacher, keyframes[i])
            feats.append(f), labels.append(np.asarray(y))
        x, y = torch.cat(feats), np.concatenate(labels).astype(np.int64)
        keep = y != IGNORE_INDEX
        return x[torch.from_numpy(keep)], y[keep]

    (xt, yt), (xv, yv) = rows(train), rows(val)
    pred = softmax_probe(xt, yt, xv, NUM_CLASSES_16)
    conf = confusion_matrix(pred, yv, NUM_CLASSES_16, ignore_index=IGNORE_INDEX)
    out = summarize_confusion(conf)
    out["per_pair"] = _per_pair(conf)
    out.update(features_twin_summary(xt, yt, xv, yv, mlp_seed=seed))
    out["points"] = {"train": int(len(yt)), "val": int(len(yv))}
    return out


# ------------------------------------------------------------------------------------------ summary
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


def _sample_std(values) -> float:
    """The sample standard deviation (n - 1 in the denominator) of the non-NaN values; NaN below 2."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.std(ddof=1)) if len(v) >= 2 else float("nan")


def machine_label(m: dict | None) -> str:
    """A job's machine (``runtime.machine()``) in words: ``"AMD EPYC, AVX2"``, with OpenBLAS's kernels
    when recorded; ``"not recorded"`` for the jobs made before machines were."""
    if not m:
        return "not recorded"
    return f"{m['cpu']}, {m['cpu_capability']}" + (f", OpenBLAS {m['blas_kernels']}" if m.get("blas_kernels") else "")


def _machines_sentence(rows: dict) -> str:
    """bench.md's note on where the jobs ran, when they did not all run on one kind of machine: their
    step times, and the last bits of their floats, depend on it."""
    kinds = {m for r in rows.values() for m in r.get("machines", [])}
    if len(kinds) < 2:
        return ""
    where = "; ".join(f"{m}: " + ", ".join(row for row, r in rows.items() if m in r.get("machines", []))
                      for m in sorted(kinds))
    return (f"The jobs ran on {len(kinds)} kinds of machine, so their times add up compute of different "
            f"speeds (rows by machine: {where}).")


def rescored(results: list) -> list:
    """``results`` with the confusion-matrix columns recomputed from each result's matrix, so a change
    of the metric's rules (``metrics``) reaches results written before it without rerunning their jobs."""
    return [{**r, **summarize_confusion(np.asarray(r["confusion"])), "per_pair": _per_pair(np.asarray(r["confusion"]))}
            if "confusion" in r else r for r in results]


def summarize_rows(results: list, row_names) -> tuple:
    """(rows, by_row): per row of ``row_names`` that has results, {column: {"mean", "std", "values"}} (sample
    std over seeds) with its seeds, per twin pair and per class means, loss flatness, step time and
    machines; ``by_row``: {row: its results sorted by seed}. ``results`` must be :func:`rescored`."""
    by_row = {row: sorted([r for r in results if r["row"] == row], key=lambda r: r["seed"]) for row in row_names}
    rows = {}
    for row, runs in by_row.items():
        if not runs:
            continue
        rows[row] = {"seeds": [r["seed"] for r in runs]}
        for col in COLUMNS:
            vals = [float(r.get(col, float("nan"))) for r in runs]
            rows[row][col] = {"mean": float(np.nanmean(vals)), "std": _sample_std(vals), "values": vals}
        pairs = sorted(runs[0].get("per_pair", {}))
        rows[row]["per_pair"] = {p: float(np.mean([r["per_pair"][p] for r in runs])) for p in pairs}
        rows[row]["per_class"] = {c: float(np.mean([r["per_class"].get(c, np.nan) for r in runs]))
                                  for c in runs[0]["per_class"]}
        curves = [[h["loss"] for h in r["history"]] for r in runs
                  if isinstance(r.get("history"), list) and len(r["history"]) >= 2 and "loss" in r["history"][0]]
        if curves and is_pretrained(row):
            # how flat the end of the curve is: the last epoch's share of the whole drop of the loss
            rows[row]["last_epoch_share"] = float(np.mean([(c[-2] - c[-1]) / (c[0] - c[-1]) for c in curves]))
        steps = [r["pretrain_seconds_per_step"] for r in runs if r.get("pretrain_seconds_per_step") is not None]
        if steps:
            rows[row]["seconds_per_step"] = float(np.mean(steps))
        rows[row]["machines"] = sorted({machine_label(r.get("machine")) for r in runs})
    return rows, by_row


def paired_differences(by_row: dict, pairs, columns=COLUMNS) -> dict:
    """{"a - b": {column: {"mean", "low", "high"}}} for each (a, b) of ``pairs`` whose rows both have
    results: the mean of a - b over the seeds both have, with its 95 % Student-t interval."""
    diffs = {}
    for a, b in pairs:
        if by_row.get(a) and by_row.get(b):
            va, vb = {r["seed"]: r for r in by_row[a]}, {r["seed"]: r for r in by_row[b]}
            common = sorted(set(va) & set(vb))
            diffs[f"{a} - {b}"] = {col: dict(zip(("mean", "low", "high"),
                                                 t_interval([va[s][col] - vb[s][col] for s in common])))
                                   for col in columns}
    return diffs


def summarize(results: list, plan: BenchPlan) -> dict:
    """{"rows": {row: {column: {"mean", "std", "values"}}}, "differences": ..., "checks": ...}, every
    confusion-matrix column recomputed by today's ``metrics`` (:func:`rescored`)."""
    rows, by_row = summarize_rows(rescored(results), ROWS)
    diffs = paired_differences(by_row, DIFFERENCES)
    if "PPKT" in rows and "PPKT (A/A)" in rows:
        aa, ppkt = rows["PPKT (A/A)"], rows["PPKT"]
        diffs["PPKT (A/A) - PPKT"] = {col: dict(zip(("mean", "low", "high"),
                                                    welch_interval(aa[col]["values"], ppkt[col]["values"])))
                                      for col in COLUMNS}
        n = len(plan.seeds)
        if len(aa["seeds"]) > n and len(ppkt["seeds"]) > n:
            # the same floor on the first n seeds of each side, the seed count of every other row: what
            # a bench without the extra noise-floor seeds would have measured
            diffs[f"PPKT (A/A) - PPKT, first {n} seeds"] = {
                col: dict(zip(("mean", "low", "high"), welch_interval(aa[col]["values"][:n], ppkt[col]["values"][:n])))
                for col in COLUMNS}
    return {"rows": rows, "differences": diffs, "checks": threshold_checks(rows)}


def threshold_checks(rows: dict) -> dict:
    """The issue's conditions for the bench to mean something, each {"value", "needed", "holds"}."""
    from cmcr_lite.classes import GEOMETRY_ONLY

    checks = {}
    if "supervised ceiling" in rows:
        c = rows["supervised ceiling"]
        for pair in ("car|truck", "terrain|vegetation"):
            v = c["per_pair"].get(pair, float("nan"))
            checks[f"ceiling tells {pair.replace('|', ' vs ')} apart"] = {"value": v, "needed": ">= 0.90", "holds": bool(v >= 0.9)}
        for name in GEOMETRY_ONLY:
            v = c["per_class"].get(name, float("nan"))
            checks[f"ceiling {name} IoU"] = {"value": v, "needed": ">= 0.60", "holds": bool(v >= 0.6)}
    if "image-only reference" in rows:
        c = rows["image-only reference"]
        for pair in ("driveable_surface|sidewalk", "bus|construction_vehicle"):
            v = c["per_pair"].get(pair, float("nan"))
            checks[f"image-only tells {pair.replace('|', ' vs ')} apart"] = {"value": v, "needed": ">= 0.90", "holds": bool(v >= 0.9)}
        v = c["geometry twins told apart"]["mean"]
        checks["image-only geometry twins near chance"] = {"value": v, "needed": "<= 0.65", "holds": bool(v <= 0.65)}
    if "PPKT" in rows and "PPKT (A/A)" in rows:
        v = abs(rows["PPKT (A/A)"]["miou"]["mean"] - rows["PPKT"]["miou"]["mean"])
        checks["A/A mIoU difference"] = {"value": v, "needed": "<= 0.010", "holds": bool(v <= 0.01)}
        for row in PRETRAINED:
            if row in rows:
                v = rows[row]["miou"]["std"]
                checks[f"{row} mIoU std"] = {"value": v, "needed": "<= 0.015", "holds": bool(v <= 0.015)}
    return checks


COLUMN_TITLES = {"miou": "mIoU", "geometry-only": "geometry-only IoU", "appearance-only": "appearance-only IoU",
                 "both": "both IoU", "geometry twins told apart": "geometry twins told apart",
                 "appearance twins told apart": "appearance twins told apart",
                 "geometry twins in features": "geometry twins in features (linear)",
                 "appearance twins in features": "appearance twins in features (linear)",
                 "geometry twins in features (MLP)": "geometry twins in features (MLP)",
                 "appearance twins in features (MLP)": "appearance twins in features (MLP)"}


def job_seconds(result: dict) -> float:
    """A job's compute in seconds, whatever part of it an earlier call ran: a pretrained row's every
    step at its measured seconds per step, plus its read-out (``readout_seconds``). Results made
    before the read-out was timed: their own time, plus the pretraining's when a later call only
    read the finished pretraining out again (``seconds`` then shorter than the pretraining itself)."""
    seconds = result.get("seconds", 0.0)
    per_step = result.get("pretrain_seconds_per_step")
    if per_step is not None and "history" in result and isinstance(result["history"], list):
        pretraining = per_step * sum(h["steps"] for h in result["history"])
        if "readout_seconds" in result:  # a pretraining resumed mid-run has ``seconds`` of its last part only
            return pretraining + result["readout_seconds"]
        if seconds < pretraining:
            seconds += pretraining
    return seconds


def _wall_sentence(wall: dict | None, minutes: float, workers: int) -> str:
    """bench.md's wall time: the measured ``wall_from_scratch`` and where it ran, else the estimate
    ``minutes / workers`` from the summed job times."""
    if not wall:
        return (f"about {minutes / workers:.0f} min of wall time on {workers} cores when run in one go (an "
                "estimate: no call has run every job).")
    n, cpu = wall["workers"], wall["machine"]
    data = ", the dataset's generation and the teacher's training included" if wall["data_made"] else ""
    return (f"{wall['minutes']:.0f} min of wall time measured from scratch, every job in one call on {n} "
            f"worker{'s' if n != 1 else ''} (CPU: {cpu['cpu']}, {cpu['cpu_capability']}){data}.")


def markdown_report(summary: dict, plan: BenchPlan, minutes: float, wall: dict | None = None) -> str:
    """bench.md: the plan, the compute, the table, the differences and the checks. ``minutes``: every
    job's one-thread compute, summed; ``wall``: a report's ``wall_from_scratch`` (None: never measured)."""
    rows, diffs = summary["rows"], summary["differences"]
    n = len(plan.seeds)
    ppkt_seeds = list(plan.seeds) + list(plan.noise_floor_seeds)
    floor = (f"; PPKT also on {list(plan.noise_floor_seeds)}, so the noise floor compares {len(ppkt_seeds)} "
             f"seeds of PPKT with {len(plan.aa_seeds)} of the A/A row {list(plan.aa_seeds)}"
             if plan.noise_floor_seeds else f"; A/A row {list(plan.aa_seeds)}")
    machines = _machines_sentence(rows)
    lines = [f"# The bench: {n} seeds per row ({list(plan.seeds)}{floor}), "
             f"{plan.pretrain_epochs} pretraining epochs ({plan.pretrain_schedule} learning rate)", "",
             f"Compute: {minutes:.0f} min of one-thread jobs in all (each job's own time, summed, where it was "
             f"measured); {_wall_sentence(wall, minutes, plan.workers)}"
             + (f" {machines}" if machines else ""), "",
             "Values in %, mean ± sample std over seeds. mIoU and IoU columns: the 16-class read-out on the val "
             "split (a linear softmax probe of the frozen trunk's features, fitted to its optimum by L-BFGS, so "
             "it adds no noise of its own; the supervised ceiling's own predictions; the same probe on the "
             "image-only reference's teacher features at the points' pixels). 'Told apart': balanced "
             "accuracy of each twin against its twin in that confusion matrix (50 = chance). 'In features': a "
             "two-class probe per twin pair on the features themselves, linear (ridge) or a small MLP.", "",
             "| row | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " | s / step |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for row in ROWS:
        if row not in rows:
            continue
        cells = [f"{100 * rows[row][c]['mean']:.1f} ± {100 * rows[row][c]['std']:.1f}" for c in COLUMNS]
        sps = rows[row].get("seconds_per_step")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {'' if sps is None else f'{sps:.2f}'} |")
    lines += ["", "## Differences (points of %, mean and 95 % interval)", "",
              "Paired over the seeds both rows have (Student t); the A/A row is PPKT on other seeds (Welch), the "
              "noise floor.", "",
              "| difference | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |",
              "|---" * (len(COLUMNS) + 1) + "|"]
    for name, d in diffs.items():
        cells = [f"{100 * d[c]['mean']:+.1f} [{100 * d[c]['low']:+.1f}, {100 * d[c]['high']:+.1f}]" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Do the ceilings and the power hold?", "", "| condition | value | needed | holds |",
              "|---|---|---|---|"]
    for name, c in summary["checks"].items():
        lines.append(f"| {name} | {c['value']:.3f} | {c['needed']} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def bench_figure(results: list, summary: dict, path: Path):
    """2 x 4: pretraining loss per epoch for each pretrained row (every seed), then per-seed dots of
    mIoU and of the geometry / appearance twins told apart, and the paired differences with their
    95 % intervals next to the A/A floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.runtime import atomic_path

    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    for ax, row in zip(axes[0], PRETRAINED):
        for r in (r for r in results if r["row"] == row):
            h = r.get("history", [])
            ax.plot([e["epoch"] + 1 for e in h], [e["loss"] for e in h], marker=".", lw=1, label=f"seed {r['seed']}")
        ax.set(title=f"{row}: pretraining loss", xlabel="epoch", ylabel="mean loss of the epoch")
        ax.legend(fontsize=7)
    rows = [r for r in ROWS if r in summary["rows"]]
    for ax, col, title in zip(axes[1][:3], ("miou", "geometry twins told apart", "appearance twins told apart"),
                              ("linear-probe mIoU (%)", "geometry twins told apart (%)",
                               "appearance twins told apart (%)")):
        for i, row in enumerate(rows):
            vals = 100 * np.asarray(summary["rows"][row][col]["values"])
            ax.scatter(vals, np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), s=18)
            ax.plot([vals.mean()] * 2, [i - 0.3, i + 0.3], color="k", lw=2)
        ax.set_yticks(range(len(rows)), rows)
        ax.invert_yaxis()
        ax.set(title=title, xlabel="% (one dot per seed, bar = mean)")
        if col != "miou":
            ax.axvline(50, color="grey", ls=":", lw=1)
    ax = axes[1][3]
    names = list(summary["differences"])
    for i, name in enumerate(names):
        for j, (col, colour) in enumerate((("miou", "C0"), ("geometry twins told apart", "C1"),
                                           ("appearance twins told apart", "C2"))):
            d = summary["differences"][name][col]
            y = i + (j - 1) * 0.22
            ax.errorbar(100 * d["mean"], y, xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]],
                        fmt="o", color=colour, capsize=3, label=COLUMN_TITLES[col] if i == 0 else None)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(title="differences, 95 % interval", xlabel="points of %")
    ax.legend(fontsize=7, loc="lower left")  # below the occupancy row's large negative mIoU, clear of the A/A rows
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ driver
def bench_dataroot(plan: BenchPlan) -> Path:
    """Where the plan's dataset lives (or will be generated): ``plan.dataroot``, else the default
    root of ``plan.dataset``."""
    from cmcr_lite.paths import BENCH_DATAROOT, EMBEDDED_DATAROOT

    if plan.dataset not in ("bench", "notebook"):
        raise ValueError(f"BenchPlan: dataset must be 'bench' or 'notebook', got {plan.dataset!r}")
    return Path(plan.dataroot) if plan.dataroot else BENCH_DATAROOT if plan.dataset == "bench" else EMBEDDED_DATAROOT


def prepare_data(plan: BenchPlan, progress: bool = True) -> str:
    """The root of the plan's dataset (generated if missing) with its small teacher trained once, in
    this process, before worker processes share it."""
    from cmcr_lite.paths import ensure_bench_dataset, ensure_embedded_dataset
    from cmcr_lite.teacher import load_or_train_teacher

    where = bench_dataroot(plan)
    root = str(ensure_bench_dataset(where, workers=plan.workers) if plan.dataset == "bench"
               else ensure_embedded_dataset(where))
    load_or_train_teacher(root, plan.version, progress=progress)
    return root


def _same_plan(saved: dict, plan: BenchPlan) -> bool:
    """Whether a report's plan is ``plan``, where its results were written aside (another output
    root or data root changes where the jobs ran, not what they computed)."""
    here = json.loads(json.dumps(plan.to_dict()))
    saved = {**BenchPlan().to_dict(), **saved}  # fields added since take their defaults
    return {k: v for k, v in saved.items() if k not in ("output_root", "dataroot")} == {
        k: v for k, v in here.items() if k not in ("output_root", "dataroot")}


def bench(plan: BenchPlan | None = None, progress: bool = True, results_dir: Path | None = None) -> dict:
    """Run (or resume) every job of ``plan`` and write ``<results_dir>/<results_name>.{json,md,png}``."""
    from cmcr_lite.runtime import atomic_path, machine

    plan = plan or BenchPlan()
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    jobs = bench_jobs(plan)
    runs_dir = str(results_dir / f"{plan.results_name}_runs")
    # a call that finds no job result runs the whole bench, so its wall time is the budget's measure
    from_scratch = not any(job_result(runs_dir, row, seed).is_file() for row, seed in jobs)
    data_made = not bench_dataroot(plan).exists()
    previous = load_report(plan.results_name, results_dir)
    root = prepare_data(plan, progress)
    results = pool_map(run_job, [(plan.to_dict(), root, row, seed, runs_dir) for row, seed in jobs], plan.workers,
                        "bench jobs", progress)
    minutes_this_call = (time.time() - t0) / 60
    minutes = sum(job_seconds(r) for r in results) / 60  # every job's compute, whenever it ran
    if from_scratch:
        wall = {"minutes": minutes_this_call, "workers": plan.workers, "data_made": data_made, "machine": machine()}
    else:  # a resumed call keeps the from-scratch measure of the same plan, if there is one
        wall = previous.get("wall_from_scratch") if previous and _same_plan(previous["plan"], plan) else None
    summary = summarize(results, plan)
    report = {"plan": plan.to_dict(), "minutes_this_call": minutes_this_call, "job_minutes": minutes,
              "wall_from_scratch": wall, "summary": summary, "runs": results}
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(results_dir / f"{plan.results_name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(results_dir / f"{plan.results_name}.md") as tmp:
        tmp.write_text(markdown_report(summary, plan, minutes, wall))
    bench_figure(results, summary, results_dir / f"{plan.results_name}.png")
    return report


# ------------------------------------------------------------------------------------------ reading
def load_report(name: str = "bench", results_dir: Path | None = None) -> dict | None:
    """The written ``<name>.json`` report, or None when the bench has not been run."""
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _significant(d: dict) -> bool:
    return d["low"] > 0 or d["high"] < 0


def bench_verdict(summary: dict) -> str:
    """What the bench shows, in plain words, every number read from ``summary`` (a report's
    ``"summary"``): the ceilings, the noise floor, CMCR − PPKT and occupancy − PPKT on the twins."""
    rows, diffs, checks = summary["rows"], summary["differences"], summary["checks"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    out = []
    ceiling = [k for k in checks if k.startswith("ceiling")]
    failed = [k for k in ceiling if not checks[k]["holds"]]
    if ceiling:
        out.append("**The ceilings.** " + (
            "The supervised LiDAR-only ceiling meets every threshold: both geometry twin pairs are told apart "
            f"(car vs truck {pct(rows['supervised ceiling']['per_pair']['car|truck'])} %, terrain vs vegetation "
            f"{pct(rows['supervised ceiling']['per_pair']['terrain|vegetation'])} %), so what separates them *can* "
            "be learned from the LiDAR." if not failed else
            "The supervised LiDAR-only ceiling falls short on: " + ", ".join(
                f"{k} = {checks[k]['value']:.3f} (needed {checks[k]['needed']})" for k in failed)
            + ": on those, a pretraining that fails may be failing a task the LiDAR cannot do at this size."))
    if "image-only reference" in rows:
        r = rows["image-only reference"]
        out.append(f"The image-only reference tells the appearance twins apart at "
                   f"{pct(r['appearance twins told apart']['mean'])} % and the geometry twins at "
                   f"{pct(r['geometry twins told apart']['mean'])} % (50 = chance): the teacher can hand down "
                   "the first and has nothing to hand down for the second.")
    flat = {row: rows[row]["last_epoch_share"] for row in PRETRAINED if "last_epoch_share" in rows.get(row, {})}
    if flat:
        out.append("**Convergence.** The last pretraining epoch brings " + ", ".join(
            f"{100 * v:.1f} % ({row})" for row, v in flat.items()) + " of the loss's whole drop. " + (
            "The curves are flat." if max(flat.values()) < 0.02 else
            "The pretrainings have not converged: the numbers below are those of trunks still learning."))
    aa = diffs.get("PPKT (A/A) - PPKT")
    if aa:
        first = next((k for k in diffs if k.startswith("PPKT (A/A) - PPKT, first")), None)
        out.append(f"**The noise floor.** PPKT on a second, disjoint seed set ({len(rows['PPKT (A/A)']['seeds'])} "
                   f"seeds against PPKT's {len(rows['PPKT']['seeds'])}) differs from PPKT by "
                   f"{100 * aa['miou']['mean']:+.1f} mIoU points (95 % interval {100 * aa['miou']['low']:+.1f} to "
                   f"{100 * aa['miou']['high']:+.1f}); the per-seed std of PPKT's mIoU is "
                   f"{pct(rows['PPKT']['miou']['std'])} points."
                   + ("" if first is None else
                      f" On the first {first.rsplit('first ', 1)[1]} of each side (the seed count of every other "
                      f"row), the gap was {100 * diffs[first]['miou']['mean']:+.1f} ({100 * diffs[first]['miou']['low']:+.1f} "
                      f"to {100 * diffs[first]['miou']['high']:+.1f})."))
        power = {k: v for k, v in checks.items() if k == "A/A mIoU difference" or k.endswith("mIoU std")}
        short = [f"{k} {100 * v['value']:.1f} points" for k, v in power.items() if not v["holds"]]
        out.append("**Power** (A/A difference ≤ 1 point, per-seed std ≤ 1.5 points in every pretrained row): "
                   + ("holds." if not short else "not reached: " + "; ".join(short) + ". Differences smaller "
                      "than these are not resolved by this bench."))
    for name, label in (("CMCR - PPKT", "CMCR"), ("occupancy only - PPKT", "Occupancy alone")):
        d = diffs.get(name)
        if not d:
            continue
        g, a, m = d["geometry twins told apart"], d["appearance twins told apart"], d["miou"]
        gf, gm = d["geometry twins in features"], d["geometry twins in features (MLP)"]

        def says(x):
            return (f"{100 * x['mean']:+.1f} points ({100 * x['low']:+.1f} to {100 * x['high']:+.1f}, "
                    + ("an interval that excludes 0" if _significant(x) else "an interval that includes 0") + ")")
        out.append(f"**{label} vs PPKT**, paired over the same seeds: geometry twins told apart {says(g)}; "
                   f"geometry twins in the features, linear probe {says(gf)}, MLP probe {says(gm)}; "
                   f"appearance twins told apart "
                   f"{says(a)}; mIoU {says(m)}.")
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------ label efficiency
# On the bench set's 18 training scenes SLidR's rule keeps 1, 3, 9 and 18 scenes at these fractions
# (the smallest fraction that keeps a scene is 1/18; nuScenes' 1 % would keep none).
BENCH_FRACTIONS = (1 / 18, 1 / 6, 1 / 2, 1.0)
PAPER_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


@dataclass
class LabelEfficiencyPlan:
    """Fine-tune and linear-probe each pretraining at each label fraction, over seeds. The pretrained
    trunks are the bench's (same configs and folders: a bench run's checkpoints are reused)."""
    seeds: tuple = (0, 1, 2)
    fractions: tuple = BENCH_FRACTIONS
    pretrainings: tuple = ("random init", "PPKT", "CMCR")
    modes: tuple = ("finetune", "linear_probe")
    finetune_steps: int = 150        # fine-tuning epochs = ceil(steps / steps per epoch): the same
    #                                  number of optimizer steps at every fraction (few labels, more epochs);
    #                                  150 lite steps (300 scans seen) keep the 72 jobs near 45 min on 2 cores
    bench: BenchPlan = field(default_factory=BenchPlan)
    results_name: str = "label_efficiency"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def _le_job(plan_dict: dict, root: str, pretraining: str, fraction: float, mode: str, seed: int, runs_dir: str):
    import math

    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.downstream import evaluate, keyframe_indices_for_fraction, train_segmentation
    from cmcr_lite.runtime import atomic_path, machine

    bench_plan = BenchPlan.from_dict(plan_dict["bench"])
    done = Path(runs_dir) / f"{row_slug(pretraining)}_{mode}_f{fraction:.4f}_seed{seed}.json"
    probe = PROBE if mode == "linear_probe" else None
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("probe") == probe:  # a linear probe's result made by another probe is redone
            return previous
    torch.set_num_threads(1)
    train = NuScenesKeyframes(root, bench_plan.version, split="train")
    val = NuScenesKeyframes(root, bench_plan.version, split="val", nusc=train.nusc)
    checkpoint = None
    if pretraining != "random init":
        checkpoint = pretrain_checkpoint(bench_plan, pretraining, seed)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"label efficiency: no {pretraining} checkpoint at {checkpoint} (its bench job "
                                    "pretrains it: run label_efficiency(), which runs those jobs first)")
    extra = {}
    if mode == "finetune":
        scans = len(keyframe_indices_for_fraction(train, fraction))
        steps_per_epoch = max(1, scans // 2)  # the lite batch of 2, last partial batch dropped
        extra["epochs"] = max(1, math.ceil(plan_dict["finetune_steps"] / steps_per_epoch))
    cfg = downstream_config(mode, bench_plan.pretrain, seed, label_fraction=fraction, **extra)
    t0 = time.time()
    indices = keyframe_indices_for_fraction(train, fraction)
    result = {"pretraining": pretraining, "fraction": fraction, "mode": mode, "seed": seed,
              "train_scans": len(indices), "epochs": cfg.epochs if mode == "finetune" else None, "probe": probe,
              "machine": machine()}
    if mode == "finetune":
        model, history = train_segmentation(cfg, train, pretrained=None if checkpoint is None else str(checkpoint),
                                            progress=False)
        assert sorted(history["train_indices"]) == sorted(indices)
        result.update(summarize_confusion(evaluate(model, val, cfg, progress=False)))
    else:  # the bench's converged linear probe, on the labelled scans only
        model = frozen_trunk(cfg, checkpoint, seed)
        result.update(linear_readout(model, train, val, cfg, seed, train_indices=indices, twin_probes=False))
    result["seconds"] = time.time() - t0
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def label_efficiency_summary(runs: list) -> dict:
    """{pretraining: {mode: {"%.4f" fraction: {"fraction", "mean", "std", "values", "seeds", "per_class"}}}}
    of label-efficiency results (mIoU recomputed from each confusion matrix, by ``metrics``' rule;
    ``per_class``: the mean IoU of each class over seeds)."""
    table = {}
    for r in runs:
        s = summarize_confusion(np.asarray(r["confusion"])) if "confusion" in r else r
        cell = table.setdefault(r["pretraining"], {}).setdefault(r["mode"], {}).setdefault(
            f"{r['fraction']:.4f}", {"fraction": r["fraction"], "values": [], "seeds": [], "classes": []})
        cell["values"].append(s["miou"]), cell["seeds"].append(r["seed"]), cell["classes"].append(s["per_class"])
    for modes in table.values():
        for cells in modes.values():
            for cell in cells.values():
                classes = cell.pop("classes")
                cell["mean"], cell["std"] = float(np.mean(cell["values"])), _sample_std(cell["values"])
                cell["per_class"] = {c: float(np.mean([k.get(c, np.nan) for k in classes])) for c in classes[0]}
    return table


def pool_map(fn, jobs: list, workers: int, desc: str, progress: bool) -> list:
    """``[fn(*job) for job in jobs]`` in ``workers`` spawned processes on one OpenMP thread each."""
    from tqdm.auto import tqdm

    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    out = []
    try:
        with tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress) as bar:
            if workers > 1 and len(jobs) > 1:
                import multiprocessing

                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for p in [pool.apply_async(fn, job) for job in jobs]:
                        out.append(p.get())
                        bar.update(1)
            else:
                for job in jobs:
                    out.append(fn(*job))
                    bar.update(1)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return out


def label_efficiency(plan: LabelEfficiencyPlan | None = None, progress: bool = True,
                     results_dir: Path | None = None) -> dict:
    """Pretrain (or reuse the bench's trunks), then fine-tune and linear-probe at every fraction and
    seed; write ``<results_dir>/<results_name>.{json,md}``. Resumable: every job's result is kept."""
    from cmcr_lite.runtime import atomic_path

    plan = plan or LabelEfficiencyPlan()
    b = plan.bench
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    root = prepare_data(b, progress)
    bench_runs = str(results_dir / f"{b.results_name}_runs")
    pre = [(b.to_dict(), root, row, s, bench_runs, True) for row in plan.pretrainings if row != "random init"
           for s in plan.seeds]
    pool_map(run_job, pre, b.workers, "pretrainings (bench jobs)", progress)  # the trunks, probed as in the bench
    runs_dir = str(results_dir / f"{plan.results_name}_runs")
    jobs = [(plan.to_dict(), root, p, f, m, s, runs_dir) for p in plan.pretrainings for m in plan.modes
            for f in plan.fractions for s in plan.seeds]
    results = pool_map(_le_job, jobs, b.workers, "label-efficiency jobs", progress)
    table = label_efficiency_summary(results)
    scans = {f"{r['fraction']:.4f}": r["train_scans"] for r in results}
    lines = [f"# Label efficiency: mIoU (%) on val, mean ± sample std over seeds {list(plan.seeds)}", "",
             "Fractions of the training scenes by SLidR's rule (scans used in parentheses). Fine-tuning runs "
             f"{plan.finetune_steps} optimizer steps at every fraction; the linear probe is the bench's (a softmax "
             "probe of the frozen trunk fitted to its optimum on the labelled scans).", "",
             "| pretraining | mode | " + " | ".join(f"{'all' if f == 1 else f'1/{round(1 / f)}'} of the scenes "
                                                  f"({scans[f'{f:.4f}']} scans)" for f in plan.fractions)
             + " |", "|---|---|" + "---|" * len(plan.fractions)]
    for p in plan.pretrainings:
        for m in plan.modes:
            cells = [f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" for c in
                     (table[p][m][f"{f:.4f}"] for f in plan.fractions)]
            lines.append(f"| {p} | {m} | " + " | ".join(cells) + " |")
    report = {"plan": plan.to_dict(), "minutes_this_call": (time.time() - t0) / 60,
              "job_minutes": sum(r["seconds"] for r in results) / 60, "runs": results}
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(results_dir / f"{plan.results_name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(results_dir / f"{plan.results_name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return report

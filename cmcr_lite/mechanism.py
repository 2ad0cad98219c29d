"""The mechanism: which of CMCR's loss terms shape the 3D trunk, measured.

    python -m cmcr_lite.experiments mechanism            # one bench pretraining of CMCR + one full-size step
    python -m cmcr_lite.experiments mechanism --smoke    # the same at toy size

Three measurements, one report (``benchmarks/results/mechanism.{json,md,png}``):

1. **Per-term gradient shares over a whole bench pretraining** of CMCR (seed 0, the bench's recipe;
   the diagnostic changes no weight, so this is the bench's own CMCR seed-0 trajectory): every
   ``gradient_every`` steps, each weighted term's gradient norm on the 3D trunk, its cosine with
   the total and its share of it (``cmcr_lite.gradients``).
2. **The same at the paper's sizes**: one step of the ``full`` preset (MinkUNet34C, ResNet-50 teacher
   with random weights, 224x416 crops, 2,048 pairs and queries) on two scans at nuScenes density
   (``data.dense_scans``), at initialisation, on the CPU.
3. **The codebook's matching term (CMCM) and the occupancy loss**: the soft code assignments'
   entropy against log K and the CMCM value against log M on bench batches of the trained model;
   CMCM and the occupancy loss per epoch in every bench job that has them (CMCR, occupancy only,
   PPKT + occupancy, the diagnostic rows), read from the job results.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cmcr_lite.bench import RESULTS_DIR, BenchPlan, is_pretrained, pretrain_config, prepare_data, row_slug
from cmcr_lite.ladder import LadderPlan


@dataclass
class MechanismPlan:
    """What the mechanism report measures."""
    bench: BenchPlan = field(default_factory=BenchPlan)
    row: str = "CMCR"            # the bench row whose pretraining is run with the gradient diagnostic
    seed: int = 0
    gradient_every: int = 10     # steps between two measurements (each costs one backward per term)
    full_step: bool = True       # also one step of the full preset at nuScenes density (minutes on a CPU)
    full_points: int = 34_000    # LiDAR points per scan of that step
    codebook_batches: int = 4    # bench batches read for the codebook's soft assignments
    results_name: str = "mechanism"

    @classmethod
    def smoke(cls, **overrides) -> "MechanismPlan":
        """The bench's smoke plan (1 epoch, notebook-size set), a measurement every 2 steps, and a
        'full' step on small scans: the pipeline end to end; the numbers mean nothing."""
        return replace(cls(bench=BenchPlan.smoke(), gradient_every=2, full_points=3_000, codebook_batches=1,
                           results_name="mechanism_smoke"), **overrides)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# ------------------------------------------------------------------------------------------ 1. lite run
def gradient_run(plan: MechanismPlan, root: str, progress: bool = True) -> dict:
    """Pretrain ``plan.row`` on ``plan.seed`` with the bench's recipe and the gradient diagnostic on
    (resumable, its own folder); returns ``{"history", "checkpoint", "records"}``, ``records`` the
    measurements of every epoch in step order."""
    import torch

    from cmcr_lite.pretrain import pretrain

    if not is_pretrained(plan.row):
        raise ValueError(f"mechanism: {plan.row!r} is not a pretrained bench row")
    out_dir = Path(plan.bench.output_root) / "gradients" / f"{row_slug(plan.row)}_seed{plan.seed}"
    cfg = pretrain_config(plan.bench, plan.row, plan.seed, root, gradient_every=plan.gradient_every,
                          output_dir=str(out_dir))
    torch.set_num_threads(1)
    out = pretrain(cfg, resume=True, progress=progress)
    records = [r for h in out["history"] for r in h.get("gradients", [])]
    return {"history": out["history"], "checkpoint": str(out["checkpoint"]), "records": records}


def share_table(records: list) -> dict:
    """{term: {"norm", "share", "cosine"}: {"first", "last", "median"}} over the measured steps:
    the first measurement (initialisation), the last, and the median over the run."""
    terms = [k for k in records[0] if k not in ("step", "total")]
    out = {}
    for t in terms + ["total"]:
        stats = ("norm",) if t == "total" else ("norm", "share", "cosine")
        out[t] = {s: {"first": records[0][t][s], "last": records[-1][t][s],
                      "median": float(np.median([r[t][s] for r in records]))} for s in stats}
    return out


# ------------------------------------------------------------------------------------------ 2. full size
def full_step_shares(points: int = 34_000, seed: int = 0) -> dict:
    """The per-term gradient shares of one ``full``-preset CMCR step at initialisation on two scans
    at nuScenes density (random ResNet-50 teacher; its weights change the NCE's direction, not the
    sizes that set each term's scale). Returns {"shares", "terms", "seconds", "sizes"}."""
    import tempfile

    import torch

    from cmcr_lite.data.dense_scans import NuScenesDensityScans
    from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
    from cmcr_lite.pretrain import PretrainConfig, build_model, training_losses, trunk_gradient_shares

    t0 = time.time()
    cfg = PretrainConfig.full(method="cmcr", random_image_encoder=True, batch_size=2, num_workers=0, device="cpu",
                              tensorboard=False, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        scans = NuScenesDensityScans(2, Path(tmp), points=points)
        dataset = PairedScanDataset(scans, cfg.pipeline, seed=seed)
        batch = collate_pairs([dataset[0], dataset[1]])
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    terms = training_losses(model, cfg, batch, batch_to_sparse_tensor(batch, torch.device("cpu")),
                            torch.Generator().manual_seed(seed))
    shares = trunk_gradient_shares(model, cfg, terms)
    return {"shares": shares, "terms": {k: float(v) for k, v in terms.items()},
            "seconds": time.time() - t0,
            "sizes": {"points_per_scan": points, "scans": 2, "num_matches": cfg.num_matches,
                      "occupancy_queries": cfg.pipeline.occupancy_queries, "crop": list(cfg.pipeline.crop_size)}}


# ------------------------------------------------------------------------------------------ 3. codebook
def codebook_readings(checkpoint: str, plan: MechanismPlan, root: str) -> dict:
    """The trained model's codebook on ``plan.codebook_batches`` bench batches: the soft assignments'
    mean entropy (nats) against log K, their mean largest probability against 1/K, the CMCM value
    against log M, and the spread over j of the matching logits S_ij (M pairs as in training)."""
    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
    from cmcr_lite.losses.codebook import cmcm_loss
    from cmcr_lite.pretrain import build_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = pretrain_config(plan.bench, plan.row, plan.seed, root)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    cb = model.codebook
    keyframes = NuScenesKeyframes(root, plan.bench.version, split="train")
    dataset = PairedScanDataset(keyframes, cfg.pipeline, seed=plan.seed)
    rows = []
    g = torch.Generator().manual_seed(plan.seed)
    with torch.no_grad():
        for b in range(plan.codebook_batches):
            batch = collate_pairs([dataset[(2 * b) % len(dataset)], dataset[(2 * b + 1) % len(dataset)]])
            x = batch_to_sparse_tensor(batch, torch.device("cpu"))
            f3d, _ = model.features_3d(x)
            pv, pp = batch["pair_voxels"], batch["pair_pixels"]
            f2d = model.features_2d(batch["images"])[0][pp[:, 0], :, pp[:, 1], pp[:, 2]]  # (P, D) unit rows
            sel = torch.randperm(len(pv), generator=g)[:cfg.num_matches]
            lp, lv = cb.soft_assign_log(f3d[pv[sel]]), cb.soft_assign_log(f2d[sel])
            entropy = -(lp.exp() * lp).sum(1).mean().item() / 2 - (lv.exp() * lv).sum(1).mean().item() / 2
            s = lp.exp() @ lv.t() + lv.exp() @ lp.t()
            rows.append({"entropy": entropy, "max_p": float((lp.exp().max(1).values.mean() + lv.exp().max(1).values.mean()) / 2),
                         "cmcm": float(cmcm_loss(lp, lv)), "m": len(sel),
                         "s_spread": float((s.max(1).values - s.min(1).values).mean()),
                         "s_diag_minus_mean": float((s.diagonal() - s.mean(1)).mean())})
    k = cb.num_codes
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    return {**mean, "log_k": math.log(k), "one_over_k": 1 / k, "log_m": math.log(mean["m"]), "num_codes": k,
            "perplexity_points_last_epoch": state["history"][-1].get("perplexity_points")}


def loss_curves(*runs_dirs: Path) -> dict:
    """{row: {term: {seed: [per-epoch mean]}}} of the occupancy, intensity, CMCM and NCE terms in
    every job result under ``runs_dirs`` (the bench's and the ladder's) that has them."""
    out = {}
    for path in sorted(p for d in runs_dirs for p in Path(d).glob("*.json")):
        r = json.loads(path.read_text())
        h = r.get("history")
        if not isinstance(h, list) or not h:
            continue
        for term in ("occupancy", "intensity", "cmcm", "nce"):
            if term in h[0]:
                out.setdefault(r["row"], {}).setdefault(term, {})[str(r["seed"])] = [e[term] for e in h]
    return out


# ------------------------------------------------------------------------------------------ report
def markdown_mechanism(report: dict) -> str:
    plan = report["plan"]
    lite = report["lite"]["table"]
    lines = [f"# Which terms shape the 3D trunk ({plan['row']}, seed {plan['seed']}, the bench's recipe)", "",
             f"Per-term gradients on the 3D trunk's parameters, every {plan['gradient_every']} steps over the whole "
             f"pretraining ({len(report['lite']['records'])} measurements). Norm: ‖∂(w·L)/∂θ‖; share: "
             "⟨g_term, g_total⟩ / ‖g_total‖² (the shares add up to 1); cosine: with the total. At initialisation "
             "(first), median over the run, and at the end (last).", "",
             "| term | norm (first) | norm (median) | norm (last) | share (first) | share (median) | share (last) "
             "| cosine (median) |", "|---|---|---|---|---|---|---|---|"]
    for t, v in lite.items():
        if t == "total":
            continue
        lines.append(f"| {t} | {v['norm']['first']:.3g} | {v['norm']['median']:.3g} | {v['norm']['last']:.3g} | "
                     f"{v['share']['first']:+.3f} | {v['share']['median']:+.3f} | {v['share']['last']:+.3f} | "
                     f"{v['cosine']['median']:+.2f} |")
    lines.append(f"| total | {lite['total']['norm']['first']:.3g} | {lite['total']['norm']['median']:.3g} | "
                 f"{lite['total']['norm']['last']:.3g} | 1 | 1 | 1 | 1 |")
    full = report.get("full")
    if full:
        lines += ["", f"## One step of the `full` preset at nuScenes density (initialisation, CPU, "
                      f"{full['seconds']:.0f} s)", "",
                  f"Two scans of {full['sizes']['points_per_scan']:,} points, {full['sizes']['num_matches']:,} pairs, "
                  f"{full['sizes']['occupancy_queries']:,} occupancy queries per scan, random ResNet-50 teacher.", "",
                  "| term | loss | norm | share | cosine |", "|---|---|---|---|---|"]
        for t, v in full["shares"].items():
            if t != "total":
                lines.append(f"| {t} | {full['terms'][t]:.4g} | {v['norm']:.3g} | {v['share']:+.3f} | {v['cosine']:+.2f} |")
        lines.append(f"| total | {full['terms']['loss']:.4g} | {full['shares']['total']['norm']:.3g} | 1 | 1 |")
    c = report["codebook"]
    lines += ["", "## The codebook's matching term (CMCM), trained model", "",
              f"Soft assignments P = softmax(−‖x − e_k‖) over K = {c['num_codes']} codes of unit features: mean "
              f"entropy {c['entropy']:.4f} nats against log K = {c['log_k']:.4f}; mean largest probability "
              f"{c['max_p']:.5f} against 1/K = {c['one_over_k']:.5f}. CMCM {c['cmcm']:.4f} against log M = "
              f"{c['log_m']:.4f} (M = {c['m']} pairs); the matching logits S_ij of a point spread over "
              f"{c['s_spread']:.4f} across the M pixels (S_ii − mean_j S_ij = {c['s_diag_minus_mean']:+.5f}).", "",
              "## Loss per epoch in the bench jobs (mean over seeds, first → last epoch)", "",
              "| row | term | seeds | first epoch | last epoch |", "|---|---|---|---|---|"]
    for row, terms in report["curves"].items():
        for term, seeds in terms.items():
            if term == "nce":
                continue
            c0 = np.mean([v[0] for v in seeds.values()])
            c1 = np.mean([v[-1] for v in seeds.values()])
            lines.append(f"| {row} | {term} | {len(seeds)} | {c0:.4f} | {c1:.4f} |")
    return "\n".join(lines) + "\n"


def mechanism_figure(report: dict, path: Path):
    """Gradient norms and shares per term over the lite run; occupancy loss and CMCM per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.runtime import atomic_path

    records = report["lite"]["records"]
    terms = [k for k in records[0] if k not in ("step", "total")]
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), constrained_layout=True)
    for i, t in enumerate(terms):
        axes[0].plot(steps, [max(r[t]["norm"], 1e-12) for r in records], label=t, color=f"C{i}")
        axes[1].plot(steps, [r[t]["share"] for r in records], label=t, color=f"C{i}")
    axes[0].set(yscale="log", title="‖∂(w·term)/∂trunk‖ over training", xlabel="step", ylabel="gradient norm")
    axes[1].set(title="share of the total gradient", xlabel="step", ylabel="⟨g_term, g⟩ / ‖g‖²")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[0].legend(fontsize=7, ncol=2)
    for ax, term, title in ((axes[2], "occupancy", "occupancy loss per epoch"), (axes[3], "cmcm", "CMCM per epoch")):
        for j, (row, curves) in enumerate(report["curves"].items()):
            if term in curves:
                c = np.mean([v for v in curves[term].values()], axis=0)
                ax.plot(np.arange(1, len(c) + 1), c, marker=".", label=f"{row} ({len(curves[term])} seeds)", color=f"C{j}")
        ax.set(title=title, xlabel="epoch", ylabel="mean loss of the epoch")
        ax.legend(fontsize=7)
    if "codebook" in report:
        axes[3].axhline(report["codebook"]["log_m"], color="k", ls=":", lw=1, label="log M")
        axes[3].legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def mechanism(plan: MechanismPlan | None = None, progress: bool = True, results_dir: Path | None = None) -> dict:
    """Run (or resume) the measurements of ``plan``; write ``<results_dir>/<results_name>.{json,md,png}``.
    The full-size step is kept from a previous report of the same plan (it is the slow part)."""
    from cmcr_lite.runtime import atomic_path

    plan = plan or MechanismPlan()
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    t0 = time.time()
    root = prepare_data(plan.bench, progress)
    run = gradient_run(plan, root, progress)
    previous_path = results_dir / f"{plan.results_name}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    full = None
    if plan.full_step:
        same = previous.get("plan", {}).get("full_points") == plan.full_points and previous.get("full")
        full = previous["full"] if same else full_step_shares(plan.full_points, plan.seed)
    report = {"plan": plan.to_dict(), "minutes_this_call": None,
              "lite": {"records": run["records"], "table": share_table(run["records"])},
              "full": full, "codebook": codebook_readings(run["checkpoint"], plan, root),
              "curves": loss_curves(results_dir / f"{plan.bench.results_name}_runs", results_dir / f"{LadderPlan().results_name}_runs")}
    report["minutes_this_call"] = (time.time() - t0) / 60
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(previous_path) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(results_dir / f"{plan.results_name}.md") as tmp:
        tmp.write_text(markdown_mechanism(report))
    mechanism_figure(report, results_dir / f"{plan.results_name}.png")
    return report

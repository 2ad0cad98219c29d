"""The mechanism: which of CMCR's loss terms shape the 3D trunk, measured.

    python -m experiments mechanism            # one bench pretraining of CMCR + one full-size step
    python -m experiments mechanism --smoke    # the same at toy size

Three measurements, one report (``experiments/results/mechanism.{json,md,png}``):

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
   PPKT + occupancy, the diagnostic rows), read from the job results; and how much the trained
   occupancy decoders read the trunk's latents at all (own, shuffled and mean latents).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from experiments import RESULTS_DIR
from experiments.jobs import prepare_data
from experiments.ladder import LadderPlan
from experiments.plan import BenchPlan, is_pretrained, pretrain_config, row_slug


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


CONTROL_ROWS = ("occupancy only", "PPKT + occupancy", "CMCR")


def trained_checkpoint(plan: MechanismPlan, row: str, root: str, progress: bool = False) -> str:
    """The seed-``plan.seed`` checkpoint of a bench row, pretrained with the bench's recipe into the
    bench's checkpoint folder when it is not there (a finished one is reused as is)."""
    from cmcr_lite.pretrain import pretrain

    return str(pretrain(pretrain_config(plan.bench, row, plan.seed, root), resume=True, progress=progress)["checkpoint"])


def latent_control(checkpoints: dict, plan: MechanismPlan, root: str) -> dict:
    """How much the trained occupancy decoder reads the trunk: its occupancy BCE and intensity L1 on
    ``plan.codebook_batches`` train batches with each point's own latent, with the latents shuffled
    across the batch's points (same values, wrong points), and with every latent set to their mean.
    If the shuffled latents cost the decoder little, the offsets q − p_j it also reads carry the task,
    and the trunk gets little to learn from it. {row: {variant: {"occupancy", "intensity"}}}."""
    import torch

    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
    from cmcr_lite.losses.occupancy import occupancy_losses
    from cmcr_lite.pretrain import build_model

    keyframes = NuScenesKeyframes(root, plan.bench.version, split="train")
    out = {}
    for row, path in checkpoints.items():
        cfg = pretrain_config(plan.bench, row, plan.seed, root)
        model = build_model(cfg)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
        model.eval()
        dataset = PairedScanDataset(keyframes, cfg.pipeline, seed=plan.seed)
        g = torch.Generator().manual_seed(plan.seed)
        sums = {}
        with torch.no_grad():
            for b in range(plan.codebook_batches):
                batch = collate_pairs([dataset[(2 * b) % len(dataset)], dataset[(2 * b + 1) % len(dataset)]])
                f3d, g3d = model.features_3d(batch_to_sparse_tensor(batch, torch.device("cpu")))
                q3d = model.codebook.quantize(f3d)[0] if model.codebook is not None else f3d
                latents = (q3d + g3d if g3d is not None else q3d)[batch["voxel_of_point"]]
                variants = {"own": latents, "shuffled": latents[torch.randperm(len(latents), generator=g)],
                            "mean": latents.mean(0, keepdim=True).expand_as(latents)}
                qi, pi = batch["neighbour_query"], batch["neighbour_point"]
                for name, lat in variants.items():
                    pred = model.occupancy_decoder.forward_pairs(lat, batch["queries"], batch["points"][:, :3], qi, pi)
                    losses = occupancy_losses(pred, batch["query_occupied"], batch["query_intensity"], qi)
                    acc = sums.setdefault(name, {"occupancy": 0.0, "intensity": 0.0})
                    acc["occupancy"] += float(losses["occupancy"]) / plan.codebook_batches
                    acc["intensity"] += float(losses["intensity"]) / plan.codebook_batches
                # the best constant: every pair predicted at the share of occupied pairs (entropy of that share)
                share = float(batch["query_occupied"][qi].float().mean())
                prior = sums.setdefault("prior", {"occupancy": 0.0, "intensity": float("nan")})
                prior["occupancy"] += -(share * math.log(share) + (1 - share) * math.log(1 - share)) / plan.codebook_batches
        out[row] = sums
    return out


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
    ratios = weight_ratios(report)
    lines += ["", "‖g_NCE‖ / (‖g_occupancy‖ + ‖g_intensity‖): median over the steps "
                  f"{ratios['lite_median']:.2f}, at initialisation {ratios['lite_first']:.1f}"
                  + (f"; in the full-preset step below {ratios['full_first']:.1f}" if "full_first" in ratios else "")
                  + ". The diagnostic rows' weights are read from these (`CMCR (occupancy ×w)`, `experiments.ladder`)."]
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
              "## Does the occupancy decoder read the trunk?", "",
              f"The trained decoders (seed {plan['seed']}) on {plan['codebook_batches']} train batches: occupancy BCE "
              "and intensity L1 with each point's own latent, with the latents shuffled across points, and with "
              "every latent set to their mean; 'constant' is the BCE of predicting the share of occupied "
              "(query, neighbour) pairs for every pair (no decoder at all).", "",
              "| row | occupancy (own) | occupancy (shuffled) | occupancy (mean) | occupancy (constant) | intensity (own) "
              "| intensity (shuffled) | intensity (mean) |", "|---|---|---|---|---|---|---|---|"]
    for row, v in report["latent_control"].items():
        cells = [v[k]["occupancy"] for k in ("own", "shuffled", "mean", "prior")] + [
            v[k]["intensity"] for k in ("own", "shuffled", "mean")]
        lines.append(f"| {row} | " + " | ".join(f"{x:.4f}" for x in cells) + " |")
    lines += ["", "## Loss per epoch in the bench jobs (mean over seeds, first → last epoch)", "",
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
    """2 x 2: gradient norms and shares per term over the lite run; occupancy loss and CMCM per epoch
    in the bench jobs (one colour per row). Terms with no path to the trunk (norm 0) are named, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.runtime import atomic_path

    records = report["lite"]["records"]
    terms = [k for k in records[0] if k not in ("step", "total")]
    unreached = [t for t in terms if all(r[t]["norm"] == 0 for r in records)]
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    (norms, shares), (occupancy, cmcm) = axes
    for i, t in enumerate(terms):
        if t in unreached:
            continue
        norms.plot(steps, [r[t]["norm"] for r in records], label=t, color=f"C{i}")
        shares.plot(steps, [r[t]["share"] for r in records], label=t, color=f"C{i}")
    norms.set(yscale="log", title="‖∂(w·term)/∂trunk‖ over the pretraining", xlabel="step", ylabel="gradient norm")
    norms.legend(fontsize=7, ncol=2, title=("not drawn (no path to the trunk): " + ", ".join(unreached)) if unreached
                 else None, title_fontsize=7)
    shares.set(title="share of the trunk's gradient, ⟨g_term, g⟩ / ‖g‖²", xlabel="step", ylabel="share (sums to 1)")
    shares.axhline(0, color="k", lw=0.8)
    colour = {row: f"C{i}" for i, row in enumerate(sorted(report["curves"]))}
    for ax, term, title in ((occupancy, "occupancy", "occupancy loss per epoch (BCE, nats)"),
                            (cmcm, "cmcm", "CMCM per epoch (nats)")):
        for row, curves in report["curves"].items():
            if term in curves:
                c = np.mean(list(curves[term].values()), axis=0)
                ax.plot(np.arange(1, len(c) + 1), c, marker=".", color=colour[row], label=f"{row} ({len(curves[term])} seeds)")
        ax.set(title=title, xlabel="epoch", ylabel="mean of the epoch, over seeds")
    if "codebook" in report:
        cmcm.axhline(report["codebook"]["log_m"], color="k", ls=":", lw=1, label="log M (unrelated pairs)")
    occupancy.legend(fontsize=7)
    cmcm.legend(fontsize=7)
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
    checkpoints = {row: run["checkpoint"] if row == plan.row else trained_checkpoint(plan, row, root, progress)
                   for row in CONTROL_ROWS}
    report = {"plan": plan.to_dict(), "minutes_this_call": None,
              "latent_control": latent_control(checkpoints, plan, root),
              "lite": {"records": run["records"], "table": share_table(run["records"]),
                       "history": [{k: v for k, v in h.items() if k != "gradients"} for h in run["history"]]},
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


def norm_ratio(shares: dict) -> float:
    """‖g_NCE‖ / (‖g_occupancy‖ + ‖g_intensity‖) of one measurement (:func:`gradients.gradient_shares`)."""
    return shares["nce"]["norm"] / (shares["occupancy"]["norm"] + shares["intensity"]["norm"])


def weight_ratios(report: dict) -> dict:
    """How much weaker the occupancy and intensity terms pull on the trunk than the NCE: the median of
    :func:`norm_ratio` over the lite run's measurements, its value at initialisation, and (when
    measured) at the full preset's step. The diagnostic rows' weights are read from these."""
    ratios = [norm_ratio(r) for r in report["lite"]["records"]]
    out = {"lite_median": float(np.median(ratios)), "lite_first": ratios[0]}
    if report.get("full"):
        out["full_first"] = norm_ratio(report["full"]["shares"])
    return out


def mechanism_verdict(report: dict) -> str:
    """The measurements in words, every number read from ``report`` (a mechanism report)."""
    t, c = report["lite"]["table"], report["codebook"]
    occ = ("occupancy", "intensity")
    lidar_share = sum(t[k]["share"]["median"] for k in occ)
    ratios = weight_ratios(report)
    others = [k for k in t if k not in ("nce", "total") + occ]
    out = [f"**Gradient shares, lite bench run.** Over the {len(report['lite']['records'])} measured steps of "
           f"{report['plan']['row']}'s pretraining the NCE carries a median {100 * t['nce']['share']['median']:.1f} % "
           f"of the 3D trunk's gradient (cosine {t['nce']['cosine']['median']:+.2f} with it); occupancy and intensity "
           f"together {100 * lidar_share:.1f} %, their gradient norms summing to 1/{ratios['lite_median']:.1f} of the "
           f"NCE's (median over the steps; at initialisation 1/{ratios['lite_first']:.0f}); every "
           f"other term at most {100 * max(abs(t[k]['share']['median']) for k in others):.1f} %."]
    full = report.get("full")
    if full:
        s = full["shares"]
        out.append(f"**At the paper's sizes** (one `full` step at initialisation): the NCE "
                   f"{100 * s['nce']['share']:.1f} %, occupancy and intensity {100 * sum(s[k]['share'] for k in occ):.1f} %, "
                   f"their norms 1/{ratios['full_first']:.1f} of the NCE's.")
    curves = report["curves"]

    def last(row, term):
        return float(np.mean([v[-1] for v in curves[row][term].values()]))
    rows = [r for r in ("occupancy only", "PPKT + occupancy", "CMCR") if "occupancy" in curves.get(r, {})]
    if rows:
        out.append("**The occupancy loss** at the last epoch (mean over seeds): " + ", ".join(
            f"{r} {last(r, 'occupancy'):.4f}" for r in rows) + ": the decoder learns about as well next to the NCE "
            "as alone.")
    ctrl = report.get("latent_control")
    if ctrl:
        out.append("**Does the decoder read the trunk?** Occupancy BCE of the trained decoders with each point's "
                   "own latent → latents shuffled across points → every latent the mean: " + "; ".join(
                       f"{r} {v['own']['occupancy']:.4f} → {v['shuffled']['occupancy']:.4f} → {v['mean']['occupancy']:.4f}"
                       for r, v in ctrl.items())
                   + f" (a constant prediction: {next(iter(ctrl.values()))['prior']['occupancy']:.4f}). "
                   + ("In every run the decoder does worse with shuffled latents than with no decoder at all: it "
                      "reads the trunk's features, and finds what the occupancy target needs in each of them, "
                      "whether or not that trunk tells the geometry twins apart."
                      if all(v["shuffled"]["occupancy"] > v["prior"]["occupancy"] for v in ctrl.values()) else
                      "In some run the decoder does no worse with shuffled latents than a constant prediction: "
                      "there, the trunk's features are not what it reads."))
    out.append(f"**CMCM** sits at {c['cmcm']:.4f} against log M = {c['log_m']:.4f}; the trained soft assignments' "
               f"entropy is {c['entropy']:.4f} nats against log K = {c['log_k']:.4f}.")
    return "\n\n".join(out)

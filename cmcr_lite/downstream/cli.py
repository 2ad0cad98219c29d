"""``python -m cmcr_lite.downstream``: train (or ``--evaluate``) and write results.json (see the package doc)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cmcr_lite.downstream.config import MODES, DownstreamConfig
from cmcr_lite.downstream.evaluate import evaluate
from cmcr_lite.downstream.model import PretrainedWeightsError, SegmentationModel
from cmcr_lite.downstream.train import load_segmentation_checkpoint, train_segmentation
from cmcr_lite.runtime import atomic_path, resolve_device


def _config_from_args(args) -> DownstreamConfig:
    """The preset (``--config lite|full`` for ``--mode``), then ``--label-fraction``, ``--epochs``,
    ``--seed`` and ``--set field=JSON`` overrides (dotted names reach into ``backbone``)."""
    import json

    overrides = {k: v for k, v in (("label_fraction", args.label_fraction), ("epochs", args.epochs),
                                   ("seed", args.seed)) if v is not None}
    preset = DownstreamConfig.lite if args.config == "lite" else DownstreamConfig.full
    base = preset(args.mode, **overrides).to_dict()
    if getattr(args, "dataset", "nuscenes") == "semantickitti":
        # the paper's nuScenes -> SemanticKITTI transfer: a 20-logit head (19 classes + ignore) on the
        # pretrained trunk; the voxel feature is SLidR's reflectance + 1 (SemanticKittiScans), unscaled
        base.update(num_classes=20, intensity_scale=1.0)
    for item in args.set or []:
        key, sep, text = item.partition("=")
        target, (*parents, leaf) = base, key.split(".")
        for p in parents:
            target = target.get(p) if isinstance(target.get(p), dict) else None
            if target is None:
                raise SystemExit(f"error: --set {key}: no such config field")
        if not sep or leaf not in target:
            raise SystemExit(f"error: --set {item!r}: no such config field (expected FIELD=VALUE with a "
                             f"DownstreamConfig field)")
        try:
            target[leaf] = json.loads(text)
        except json.JSONDecodeError:
            target[leaf] = text
    try:
        return DownstreamConfig.from_dict(base)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")


def _class_names(config: DownstreamConfig) -> list:
    from cmcr_lite.classes import CLASS_NAMES_16

    from cmcr_lite.data.semantickitti import CLASS_NAMES_19

    for names in (CLASS_NAMES_16, CLASS_NAMES_19):
        if config.num_classes == len(names):
            return list(names)
    return [str(k) for k in range(config.num_classes)]


def _results(conf: np.ndarray, config: DownstreamConfig, train_kf, val_kf, train_indices, pretrained) -> dict:
    """The JSON record of an evaluation: mIoU, per-class IoU by name, the confusion matrix, the setup."""
    from cmcr_lite.metrics import iou_report, mean_iou

    rows = iou_report(conf, _class_names(config), ignore_index=config.ignore_index)
    nusc = getattr(train_kf, "nusc", None)
    scenes = []
    if nusc is not None:
        for i in train_indices:
            name = nusc.get("scene", nusc.get("sample", train_kf.sample_tokens[i])["scene_token"])["name"]
            if name not in scenes:
                scenes.append(name)
    return {"miou": mean_iou(conf, ignore_index=config.ignore_index),
            "per_class_iou": {r["name"]: (None if math.isnan(r["iou"]) else r["iou"]) for r in rows},
            "support": {r["name"]: r["support"] for r in rows}, "confusion": conf.tolist(),
            "config": config.to_dict(), "pretrained": None if pretrained is None else str(pretrained),
            "dataset": {"dataroot": str(train_kf.dataroot), "version": train_kf.version,
                        "train_split": train_kf.split, "val_split": val_kf.split},
            "train_scenes": scenes, "train_scans": len(train_indices), "val_scans": len(val_kf)}


def main(argv=None) -> dict:
    import argparse
    import json

    from cmcr_lite.data.nuscenes_loader import DatasetError, NuScenesKeyframes
    from cmcr_lite.metrics import format_iou_report, iou_report
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    p = argparse.ArgumentParser(prog="python -m cmcr_lite.downstream",
                                description="Semantic segmentation from a pretrained trunk (SLidR's protocol): "
                                            "fine-tune or linear-probe, evaluate per point on val, write results.json.")
    p.add_argument("--pretrained", help="pretraining checkpoint (runs/<name>/checkpoint.pt); omit for random init")
    p.add_argument("--mode", choices=MODES, default="finetune")
    p.add_argument("--config", choices=("lite", "full"), default="lite",
                   help="lite: the embedded dataset on a CPU; full: the paper's protocol")
    p.add_argument("--label-fraction", type=float, help="fraction of the training scenes with labels "
                                                        "(SLidR's every-k-th-scene rule; full finetune default 0.01)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="override DownstreamConfig fields (JSON values), "
                                                                   "e.g. batch_size=8 backbone.planes=[32,...]")
    p.add_argument("--dataset", choices=("nuscenes", "semantickitti"), default=None,
                   help="nuscenes (default) or semantickitti: --dataroot then holds sequences/NN/velodyne, labels; "
                        "train 00-10 without 08, val 08, label fractions by frame")
    p.add_argument("--dataroot", help="nuScenes root (default: the embedded synthetic dataset)")
    p.add_argument("--version", help="dataset version (default v1.0-trainval, or the embedded set's)")
    p.add_argument("--train-split", help="split to train on (default train; --evaluate: the training run's)")
    p.add_argument("--val-split", help="split to evaluate on (default val; --evaluate: the training run's)")
    p.add_argument("--output-dir", required=True, help="checkpoint.pt, config.json, results.json, tensorboard/")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    p.add_argument("--evaluate", action="store_true", help="no training: evaluate the saved model")
    p.add_argument("--model", help="with --evaluate: the downstream checkpoint (default <output-dir>/checkpoint.pt)")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if args.dataset is None:  # --evaluate: the training run's dataset
        previous = out / "config.json"
        args.dataset = (json.loads(previous.read_text()).get("dataset", "nuscenes")
                        if args.evaluate and previous.is_file() else "nuscenes")
    if args.dataset == "semantickitti" and not (args.dataroot or args.evaluate):
        raise SystemExit("error: --dataset semantickitti needs --dataroot (the folder holding sequences/)")

    ckpt_path = out / "checkpoint.pt"
    if args.pretrained and not Path(args.pretrained).is_file():
        raise SystemExit(f"error: --pretrained {args.pretrained}: no such file")
    if args.evaluate:
        model_path = Path(args.model) if args.model else ckpt_path
        try:
            state = load_segmentation_checkpoint(model_path)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: --evaluate: {e}")
        config = state["config"]
    else:
        config = _config_from_args(args)
    # the data: the options, else (--evaluate) where the training run read it, else the embedded set
    run = {}
    if args.evaluate and (out / "config.json").is_file():
        run = json.loads((out / "config.json").read_text())
    dataroot = args.dataroot or run.get("dataroot")
    root = Path(dataroot) if dataroot else ensure_embedded_dataset()
    version = args.version or run.get("version") or ("v1.0-trainval" if dataroot else EMBEDDED_VERSION)
    train_split = args.train_split or run.get("train_split") or "train"
    val_split = args.val_split or run.get("val_split") or "val"
    try:
        if args.dataset == "semantickitti":
            from cmcr_lite.data.semantickitti import SemanticKittiScans

            train_kf, val_kf = SemanticKittiScans(root, train_split), SemanticKittiScans(root, val_split)
        else:
            train_kf = NuScenesKeyframes(root, version, split=train_split)
            val_kf = NuScenesKeyframes(root, version, split=val_split, nusc=train_kf.nusc)
    except (DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.evaluate:
            model = SegmentationModel(config.backbone, config.num_classes)
            model.load_state_dict(state["model"])
            model.to(resolve_device(config.device))
            if config.mode == "linear_probe":
                model.freeze_trunk()
            train_indices = state["history"].get("train_indices", [])
            pretrained = run.get("pretrained")
        else:
            run = {"downstream": config.to_dict(), "pretrained": args.pretrained,
                   "dataroot": None if dataroot is None else str(root),  # None: the embedded dataset
                   "version": version, "train_split": train_split, "val_split": val_split,
                   "dataset": args.dataset}
            if not (args.resume and (out / "config.json").is_file()):  # a refused resume keeps the run's record
                with atomic_path(out / "config.json") as tmp:
                    tmp.write_text(json.dumps(run, indent=1))
            model, history = train_segmentation(config, train_kf, pretrained=args.pretrained,
                                                checkpoint_path=ckpt_path, resume=args.resume,
                                                log_dir=out / "tensorboard")
            train_indices, pretrained = history["train_indices"], args.pretrained
    except (PretrainedWeightsError, DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    conf = evaluate(model, val_kf, config)
    results = _results(conf, config, train_kf, val_kf, train_indices, pretrained)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    if not args.evaluate:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(out / "tensorboard")) as writer:
            writer.add_scalar("val/miou", results["miou"], config.epochs)
    print(format_iou_report(iou_report(conf, _class_names(config), ignore_index=config.ignore_index)))
    print(f"results: {out / 'results.json'}")
    return results


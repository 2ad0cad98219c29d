"""``python -m cmcr_lite.downstream``: train (or ``--evaluate``) and write results.json (see the package doc)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cmcr_lite.downstream.config import MODES, DownstreamConfig
from cmcr_lite.downstream.evaluate import evaluate
from cmcr_lite.downstream.model import PretrainedWeightsError, SegmentationModel, load_pretrained_trunk
from cmcr_lite.downstream.train import train_segmentation
from cmcr_lite.runtime import (CheckpointError, CommandLineParser, InputError, atomic_path, checkpoint_kind,
                               device_problem, override_fields, read_checkpoint, reports_input_errors, resolve_device)


def _config_from_args(args) -> DownstreamConfig:
    """The preset (``--config lite|full`` for ``--mode``), then ``--label-fraction``, ``--epochs``,
    ``--seed`` and ``--set field=JSON`` overrides (dotted names reach into ``backbone``), each
    ``--set`` value type-checked against its field before the config's own checks. Any bad value is
    an InputError naming it (one line, exit status 2)."""
    overrides = {k: v for k, v in (("label_fraction", args.label_fraction), ("epochs", args.epochs),
                                   ("seed", args.seed)) if v is not None}
    preset = DownstreamConfig.lite if args.config == "lite" else DownstreamConfig.full
    try:
        base = preset(args.mode, **overrides).to_dict()
    except (ValueError, TypeError) as e:  # --label-fraction, --epochs or --seed out of range
        raise InputError(e) from None
    if getattr(args, "dataset", "nuscenes") == "semantickitti":
        # the paper's nuScenes -> SemanticKITTI transfer: a 20-logit head (19 classes + ignore) on the
        # pretrained trunk; the voxel feature is SLidR's reflectance + 1 (SemanticKittiScans), unscaled
        base.update(num_classes=20, intensity_scale=1.0)
        if args.config == "full":  # the official evaluator's mIoU; lite keeps the classes present
            base["miou_rule"] = "semantickitti"
    override_fields(base, DownstreamConfig, args.set)
    try:
        return DownstreamConfig.from_dict(base)
    except (ValueError, TypeError) as e:
        raise InputError(e) from None


def _read_downstream_checkpoint(path) -> dict:
    """A checkpoint written by ``train_segmentation`` (as ``train.load_segmentation_checkpoint`` reads
    it: its ``config`` a DownstreamConfig), or CheckpointError naming the file: missing, truncated or
    corrupt, a pretraining checkpoint (which goes to ``--pretrained``), or not a downstream one."""
    state = read_checkpoint(path, "downstream checkpoint")
    if checkpoint_kind(state) == "pretraining":
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        raise CheckpointError(f"{path} is a pretraining checkpoint (python -m cmcr_lite.pretrain, method "
                              f"{config.get('method')!r}), not a downstream one: fine-tune or probe from it with "
                              f"--pretrained {path}")
    if not {"config", "model", "epoch"} <= set(state):
        raise CheckpointError(f"{path} is not a downstream checkpoint (keys {sorted(state)[:8]}); "
                              f"a pretraining checkpoint goes to --pretrained")
    try:
        state["config"] = DownstreamConfig.from_dict(state["config"])
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: its config cannot be read ({e})") from None
    return state


def _check_pretrained(path, config: DownstreamConfig):
    """Before anything is written: ``--pretrained`` is a readable pretraining checkpoint (not a
    downstream one) whose trunk fits ``config``'s backbone. InputError naming the file otherwise."""
    try:
        state = read_checkpoint(path, "pretrained checkpoint")
    except CheckpointError as e:
        raise InputError(f"--pretrained: {e}") from None
    if checkpoint_kind(state) == "downstream":
        raise InputError(f"--pretrained {path} is a downstream checkpoint (python -m cmcr_lite.downstream, mode "
                         f"{state['config'].get('mode')!r}), not a pretraining one: --pretrained takes the "
                         f"checkpoint.pt of python -m cmcr_lite.pretrain (evaluate this one with --evaluate "
                         f"--model {path})")
    del state
    try:  # the weights fit the trunk: the same check training makes, on a throw-away model
        load_pretrained_trunk(SegmentationModel(config.backbone, config.num_classes), path, config)
    except (PretrainedWeightsError, FileNotFoundError) as e:
        raise InputError(e) from None


def _read_run_record(path: Path) -> dict:
    """The ``config.json`` a training run wrote in its output folder ({} if there is none)."""
    import json

    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable run record (JSON) ({e})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object (the run record), got {type(record).__name__}")
    return record


def _class_names(config: DownstreamConfig) -> list:
    from cmcr_lite.classes import CLASS_NAMES_16

    from cmcr_lite.data.semantickitti import CLASS_NAMES_19

    for names in (CLASS_NAMES_16, CLASS_NAMES_19):
        if config.num_classes == len(names):
            return list(names)
    return [str(k) for k in range(config.num_classes)]


def _results(conf: np.ndarray, config: DownstreamConfig, train_kf, val_kf, train_indices, pretrained) -> dict:
    """The JSON record of an evaluation: mIoU and per-class IoU by name under ``config.miou_rule``
    (named in ``miou_rule``), the mIoU under every rule (``miou_by_rule``), the confusion matrix, the setup."""
    from cmcr_lite.metrics import MIOU_RULES, iou_report, mean_iou

    rows = iou_report(conf, _class_names(config), ignore_index=config.ignore_index, rule=config.miou_rule)
    nusc = getattr(train_kf, "nusc", None)
    scenes = []
    if nusc is not None:
        for i in train_indices:
            name = nusc.get("scene", nusc.get("sample", train_kf.sample_tokens[i])["scene_token"])["name"]
            if name not in scenes:
                scenes.append(name)
    return {"miou": mean_iou(conf, ignore_index=config.ignore_index, rule=config.miou_rule),
            "miou_rule": config.miou_rule,
            "miou_by_rule": {rule: mean_iou(conf, ignore_index=config.ignore_index, rule=rule) for rule in MIOU_RULES},
            "per_class_iou": {r["name"]: (None if math.isnan(r["iou"]) else r["iou"]) for r in rows},
            "support": {r["name"]: r["support"] for r in rows}, "confusion": conf.tolist(),
            "config": config.to_dict(), "pretrained": None if pretrained is None else str(pretrained),
            "dataset": {"dataroot": str(train_kf.dataroot), "version": train_kf.version,
                        "train_split": train_kf.split, "val_split": val_kf.split},
            "train_scenes": scenes, "train_scans": len(train_indices), "val_scans": len(val_kf)}


@reports_input_errors
def main(argv=None) -> dict:
    import json

    from cmcr_lite.data.nuscenes_loader import DatasetError, NuScenesKeyframes
    from cmcr_lite.downstream.data import keyframe_indices_for_fraction
    from cmcr_lite.downstream.submission import PredictionWriter, check_prediction_folder
    from cmcr_lite.metrics import format_iou_report, iou_report
    from cmcr_lite.paths import EMBEDDED_VERSION, ensure_embedded_dataset

    p = CommandLineParser(prog="python -m cmcr_lite.downstream",
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
    p.add_argument("--write-predictions", metavar="DIR",
                   help="also write every val point's prediction in the benchmark's submission layout to the new "
                        "folder DIR (nuScenes: lidarseg/<split>/<token>_lidarseg.bin + <split>/submission.json; "
                        "SemanticKITTI: sequences/NN/predictions/*.label)")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir {out} is a file, not a folder")
    if args.write_predictions:
        try:
            check_prediction_folder(args.write_predictions)
        except ValueError as e:
            raise InputError(f"--write-predictions {e}") from None
    if args.model and not args.evaluate:
        raise InputError(f"--model {args.model} is read only with --evaluate (to fine-tune from a pretraining "
                         f"checkpoint use --pretrained)")
    # --evaluate: the training run's record (its dataset, dataroot, splits)
    run = _read_run_record(out / "config.json") if args.evaluate else {}
    if args.dataset is None:  # --evaluate: the training run's dataset
        args.dataset = run.get("dataset", "nuscenes")
    if args.dataset == "semantickitti" and not (args.dataroot or args.evaluate):
        raise InputError("--dataset semantickitti needs --dataroot (the folder holding sequences/)")

    ckpt_path = out / "checkpoint.pt"
    if args.pretrained and not Path(args.pretrained).is_file():
        raise InputError(f"--pretrained {args.pretrained}: no such file")
    if args.evaluate:
        model_path = Path(args.model) if args.model else ckpt_path
        try:
            state = _read_downstream_checkpoint(model_path)
        except CheckpointError as e:
            raise InputError(f"--evaluate: {e}") from None
        config = state["config"]
    else:
        config = _config_from_args(args)
    if args.write_predictions and args.dataset == "nuscenes" and config.num_classes != 17:
        raise InputError(f"--write-predictions: the nuScenes-lidarseg layout holds classes 1..16, but this model has "
                         f"num_classes={config.num_classes}")
    problem = device_problem(config.device)
    if problem:
        raise InputError(problem)
    # the data: the options, else (--evaluate) where the training run read it, else the embedded set
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
        raise InputError(e) from None
    if args.evaluate:
        model = SegmentationModel(config.backbone, config.num_classes)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as e:
            raise InputError(f"--evaluate: the weights in {model_path} do not fit the model of its own config "
                             f"({str(e).strip().splitlines()[0]})") from None
        model.to(resolve_device(config.device))
        if config.mode == "linear_probe":
            model.freeze_trunk()
        history = state.get("history")
        train_indices = history.get("train_indices", []) if isinstance(history, dict) else []
        pretrained = run.get("pretrained")
    else:
        # every input checked before the run's record or a checkpoint is written
        try:
            keyframe_indices_for_fraction(train_kf, config.label_fraction)
        except ValueError as e:
            raise InputError(e) from None
        if args.pretrained:
            _check_pretrained(args.pretrained, config)
        if args.resume and ckpt_path.is_file():
            try:
                _read_downstream_checkpoint(ckpt_path)
            except CheckpointError as e:
                raise InputError(f"--resume: {e}") from None
        out.mkdir(parents=True, exist_ok=True)
        try:
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
            raise InputError(e) from None
    if args.write_predictions:
        with PredictionWriter(args.write_predictions, val_kf) as write:
            conf = evaluate(model, val_kf, config, on_scan=write)
    else:
        conf = evaluate(model, val_kf, config)
    results = _results(conf, config, train_kf, val_kf, train_indices, pretrained)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    if not args.evaluate:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(out / "tensorboard")) as writer:
            writer.add_scalar("val/miou", results["miou"], config.epochs)
    print(format_iou_report(iou_report(conf, _class_names(config), ignore_index=config.ignore_index,
                                       rule=config.miou_rule), rule=config.miou_rule))
    print("mIoU by rule: " + ", ".join(f"{rule} {100 * v:.1f}" for rule, v in results["miou_by_rule"].items()))
    if args.write_predictions:
        print(f"predictions: {args.write_predictions}")
    print(f"results: {out / 'results.json'}")
    return results

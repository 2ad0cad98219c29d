"""``python -m cmcr_lite.downstream.export``: write a pretrained trunk in SLidR's layout.

    python -m cmcr_lite.downstream.export --checkpoint runs/cmcr/checkpoint.pt --out minkunet_cmcr.pt

The output is what SLidR's ``downstream.py --pretraining_path`` (and PPKT's, CMCR's) reads:
``{"model_points": Res16UNet34C state_dict, "config": {"voxel_size", "cylindrical_coordinates"}}``
(their loader asserts those two config entries against its own). Only the trunk is written: our
pretraining heads are not SLidR's ``final`` and their downstream ``final`` is trained from scratch.
"""
from __future__ import annotations

from cmcr_lite.downstream.model import find_key
from cmcr_lite.models.slidr_layout import WeightsLayoutError, to_slidr_layout
from cmcr_lite.runtime import (CheckpointError, CommandLineParser, InputError, checkpoint_kind, read_checkpoint,
                               reports_input_errors, save_checkpoint_atomic)


def export_slidr(checkpoint_path, out_path) -> dict:
    """Read a ``python -m cmcr_lite.pretrain`` checkpoint and write its trunk in SLidR's layout.

    Returns the written dict. InputError (one line naming the file) if the checkpoint cannot be read
    or is not a pretraining one."""
    try:
        state = read_checkpoint(checkpoint_path, "pretraining checkpoint")
    except CheckpointError as e:
        raise InputError(f"--checkpoint: {e}") from None
    if checkpoint_kind(state) != "pretraining" or not isinstance(state.get("model3d"), dict):
        raise InputError(f"--checkpoint {checkpoint_path} is not a pretraining checkpoint (python -m cmcr_lite.pretrain: "
                         f"key 'model3d'); got keys {sorted(map(str, state))[:8]}")
    try:
        out = to_slidr_layout(state["model3d"])
    except WeightsLayoutError as e:
        raise InputError(f"--checkpoint {checkpoint_path}: {e}") from None
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    if find_key(config, "voxel_size") is not None:  # else no config: SLidR's loader then checks nothing
        out["config"] = {"voxel_size": find_key(config, "voxel_size"),
                         "cylindrical_coordinates": bool(find_key(config, "cylindrical"))}
    save_checkpoint_atomic(out, out_path)
    return out


@reports_input_errors
def main(argv=None) -> None:
    p = CommandLineParser(prog="python -m cmcr_lite.downstream.export",
                          description="Write a pretrained MinkUNet trunk in SLidR's layout ({'model_points': ...}).")
    p.add_argument("--checkpoint", required=True, help="runs/<name>/checkpoint.pt of python -m cmcr_lite.pretrain")
    p.add_argument("--out", required=True, help="the .pt file to write")
    args = p.parse_args(argv)
    out = export_slidr(args.checkpoint, args.out)
    print(f"wrote {args.out}: {len(out['model_points'])} tensors in SLidR's Res16UNet34C names, config {out.get('config')}")


if __name__ == "__main__":
    main()

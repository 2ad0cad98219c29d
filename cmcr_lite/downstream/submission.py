"""Per-point predictions in the field's submission layouts (``python -m cmcr_lite.downstream --write-predictions DIR``).

nuScenes-lidarseg, as the devkit's ``LidarSegEval`` and ``validate_submission`` read it::

    DIR/lidarseg/<split>/<lidar sample_data token>_lidarseg.bin   (N,) uint8, classes 1..16
    DIR/<split>/submission.json                                   {"meta": {"use_camera": false, ...}}

``<split>`` is the devkit's name of the evaluated split (``mini_val`` for v1.0-mini's val, ``val``,
``test``; the embedded set's own name otherwise). SemanticKITTI, as the official
``evaluate_semantics.py --predictions DIR`` reads it::

    DIR/sequences/NN/predictions/XXXXXX.label                     (N,) uint32 raw labels

(the class's ``learning_map_inv`` label, which the evaluator maps back by ``learning_map``). Every
file holds one prediction per point of the whole scan, in the scan file's point order: the network
predicts per voxel, and each point takes its voxel's class (``evaluate``'s inverse map).

The folder is written in a temporary sibling ``.DIR.tmp-*`` and renamed onto DIR once every scan is
written; after a failure nothing is left at DIR.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

# submission.json's meta block: what the network reads at test time (the LiDAR scan only). The
# challenge asks use_external=true for external data, e.g. an ImageNet-initialised image encoder in
# pretraining: edit the file before submitting such a model.
SUBMISSION_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                   "use_external": False}


def check_prediction_folder(out) -> None:
    """ValueError naming ``out`` if it is a file or a folder that is not empty (a write never
    replaces earlier predictions)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; predictions go to a new or empty folder")


def devkit_split(keyframes) -> str:
    """The devkit's name of a NuScenesKeyframes' split (``val`` of v1.0-mini is ``mini_val``)."""
    from cmcr_lite.data.nuscenes_loader import DEVKIT_SPLITS

    return DEVKIT_SPLITS.get(keyframes.version, {}).get(keyframes.split, keyframes.split)


class PredictionWriter:
    """The ``on_scan`` callback of :func:`cmcr_lite.downstream.evaluate.evaluate` that writes each scan's
    predictions in its dataset's layout (module doc). A context manager: the files go to a temporary
    folder, renamed onto ``out`` when the block ends without an error and every scan of
    ``keyframes`` was written, deleted otherwise.

        with PredictionWriter(out, val_kf) as write:
            conf = evaluate(model, val_kf, config, on_scan=write)

    ``keyframes``: a NuScenesKeyframes or a SemanticKittiScans (it has ``frames``).
    """

    def __init__(self, out, keyframes):
        check_prediction_folder(out)
        self.out, self.keyframes = Path(out), keyframes
        self.kitti = hasattr(keyframes, "frames")
        self.tmp, self.written = None, set()

    def __enter__(self) -> "PredictionWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        if not self.kitti:
            split = devkit_split(self.keyframes)
            (self.tmp / "lidarseg" / split).mkdir(parents=True)
            (self.tmp / split).mkdir()
            (self.tmp / split / "submission.json").write_text(json.dumps({"meta": SUBMISSION_META}, indent=1))
        return self

    def __call__(self, index: int, pred: np.ndarray) -> None:
        """Write scan ``index``'s predictions: ``pred`` (N,) integer classes, one per point of the scan."""
        pred = np.asarray(pred)
        if self.kitti:
            from cmcr_lite.data.semantickitti import LEARNING_MAP_INV

            velodyne = Path(self.keyframes.frames[index][0])  # .../sequences/NN/velodyne/XXXXXX.bin
            path = self.tmp / "sequences" / velodyne.parent.parent.name / "predictions" / f"{velodyne.stem}.label"
            if len(pred) and (pred.min() < 0 or pred.max() >= len(LEARNING_MAP_INV)):
                raise ValueError(f"{velodyne}: predictions must be SemanticKITTI classes 0..19, got range "
                                 f"[{pred.min()}, {pred.max()}]")
            lut = np.array([LEARNING_MAP_INV[k] for k in range(len(LEARNING_MAP_INV))], np.uint32)
            words = lut[pred]
        else:
            token = self.keyframes.lidar_record(self.keyframes.sample_tokens[index])["token"]
            path = self.tmp / "lidarseg" / devkit_split(self.keyframes) / f"{token}_lidarseg.bin"
            if len(pred) and (pred.min() < 1 or pred.max() > 16):  # the devkit asserts 1..16
                raise ValueError(f"lidar sample_data {token}: predictions must be nuScenes-lidarseg classes 1..16, "
                                 f"got range [{pred.min()}, {pred.max()}]")
            words = pred.astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        words.tofile(path)
        self.written.add(int(index))

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                missing = sorted(set(range(len(self.keyframes))) - self.written)
                if missing:
                    raise ValueError(f"{self.out}: no predictions for {len(missing)} of the {len(self.keyframes)} "
                                     f"scans (first: index {missing[0]}); nothing written")
                if self.out.is_dir():  # empty (checked at the start)
                    self.out.rmdir()
                self.tmp.rename(self.out)
        finally:
            if self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)

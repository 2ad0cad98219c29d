"""Panoptic segmentation: a semantic class for every point and an instance for every *thing* point.

The head (in :class:`cmcr_lite.downstream.instances.InstanceModel`) adds to the semantic logits a
per-point **offset** (3,) metres to the centre of the point's instance (the mean of its points), as the
bottom-up LiDAR panoptic methods do (Panoptic-PolarNet, DS-Net). At inference every point predicted as
a thing is moved by its offset, and the moved points of each thing class are grouped into instances
by **breadth-first search**: two points belong to one instance when their moved positions are within
``radius`` metres, transitively (DBSCAN with ``min_samples=1``: connected components of the radius
graph; scikit-learn's implementation). A well-trained head collapses an object's points onto one spot
and keeps neighbours apart, so a radius well under the gap between objects separates them.

Scoring is the devkit's: :func:`write_panoptic_results` writes one ``<lidar token>_panoptic.npz`` per
sweep (``data``: 16-class index x 1000 + instance id, uint16) in the layout of the nuScenes-panoptic
challenge, and :func:`evaluate_panoptic` runs ``nuscenes.eval.panoptic.evaluate.NuScenesPanopticEval``
on it. The devkit averages PQ over all 16 classes, so a set that lacks classes (the synthetic one has 12)
caps its mean below 1; :func:`evaluate_panoptic` also returns the mean over the classes present in the
ground truth (``PQ_present``; the same rule as the lite mIoU).

PQ (panoptic quality) of a class = sum of the IoUs of matched segments / (TP + FP/2 + FN/2): a predicted
and a true segment match when their IoU exceeds 0.5 (unique by construction), so PQ = SQ x RQ with
SQ the mean IoU of the matches and RQ an F1 score of the matching. Segments of fewer than
``min_inst_points`` points are not counted (the devkit's default, 15).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmcr_lite.downstream.objects import THING_CLASSES_16

MIN_INST_POINTS = 15  # the devkit's default (nuscenes/eval/panoptic/evaluate.py)


def instance_centres(xyz: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(N, 3) the mean position of each point's instance (of points with the same id > 0); a point
    without an instance gets its own position (offset 0)."""
    centres = xyz.astype(np.float64).copy()
    ids, inverse = np.unique(instance, return_inverse=True)
    sums = np.zeros((len(ids), 3))
    np.add.at(sums, inverse, xyz)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    mean = sums / counts
    has = instance > 0
    centres[has] = mean[inverse[has]]
    return centres.astype(np.float32)


def cluster_instances(xyz: np.ndarray, offsets: np.ndarray, semantic: np.ndarray, radius: float = 0.5,
                      max_instances: int = 999) -> np.ndarray:
    """Instance ids (N,) int64 (1, 2, ... unique over the scan; 0 for stuff) of points ``xyz`` (N, 3)
    moved by ``offsets`` (N, 3): connected components, per predicted thing class of ``semantic`` (N,)
    (16-class indices), of the graph joining moved points closer than ``radius`` metres.

    The file format holds ids below 1000: when an untrained head scatters the points into more
    components, the ``max_instances`` largest keep an id (largest first) and the rest get 0, "no
    instance", which the devkit neither matches nor counts as a false positive."""
    from sklearn.cluster import DBSCAN

    ids = np.zeros(len(xyz), np.int64)
    moved = xyz + offsets
    next_id = 1
    for c in THING_CLASSES_16:
        sel = np.flatnonzero(semantic == c)
        if len(sel) == 0:
            continue
        labels = DBSCAN(eps=radius, min_samples=1).fit(moved[sel]).labels_
        ids[sel] = labels + next_id
        next_id += int(labels.max()) + 1
    if next_id - 1 > max_instances:
        found, sizes = np.unique(ids[ids > 0], return_counts=True)
        keep = found[np.argsort(-sizes, kind="stable")[:max_instances]]
        renumber = np.zeros(next_id, np.int64)
        renumber[keep] = np.arange(1, len(keep) + 1)
        ids = renumber[ids]
    return ids


def panoptic_prediction(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(N,) uint16 ``semantic * 1000 + instance`` (16-class semantic, the devkit's prediction format)."""
    if instance.max(initial=0) >= 1000:
        raise ValueError(f"panoptic_prediction: instance ids must be below 1000, got {instance.max()}")
    return (semantic.astype(np.int64) * 1000 + instance).astype(np.uint16)


def true_panoptic(keyframes) -> dict:
    """The ground truth written as a prediction: ``{lidar token: (N,) uint16}`` (16-class semantic x 1000
    + true instance id) for every scan of ``keyframes``; it scores PQ 1 on every class present."""
    from cmcr_lite.downstream.objects import load_objects

    out = {}
    for i in range(len(keyframes)):
        _, labels = keyframes.load_scan(i)
        objects = load_objects(keyframes, i)
        out[objects.lidar_token] = panoptic_prediction(labels, objects.instance)
    return out


def write_panoptic_results(folder, eval_set: str, predictions: dict) -> Path:
    """Write ``{lidar token: (N,) uint16 panoptic prediction}`` as ``folder/panoptic/<eval_set>/`` (one
    ``<token>_panoptic.npz`` per sweep) plus ``submission.json``, the challenge's layout. Returns the
    folder."""
    out = Path(folder) / "panoptic" / eval_set
    out.mkdir(parents=True, exist_ok=True)
    for token, labels in predictions.items():
        np.savez_compressed(out / f"{token}_panoptic.npz", data=np.asarray(labels, np.uint16))
    meta = {"meta": {"task": "segmentation", "use_camera": False, "use_lidar": True, "use_radar": False,
                     "use_map": False, "use_external": False}}
    (out / "submission.json").write_text(json.dumps(meta, indent=1))
    return Path(folder)


def evaluate_panoptic(nusc, folder, eval_set: str, out_dir=None, min_inst_points: int = MIN_INST_POINTS) -> dict:
    """The devkit's panoptic evaluation of the files under ``folder`` (see :func:`write_panoptic_results`)
    on the samples of ``eval_set``.

    A devkit split (``val``, ``mini_val``, ...) runs ``NuScenesPanopticEval`` itself. It only knows those
    (and needs every scene of the split), so a custom split of ``<version>/splits.json`` (the synthetic
    ``cmcr_val``) runs the same loop on the devkit's parts: ``PanopticClassMapper`` for the ground
    truth's classes, ``PanopticEval`` for the counting and ``NuScenesPanopticEval.wrap_result_segmentation``
    for the result (tests/test_instances.py checks that both paths agree on a mini set).

    Returns the devkit's result dict (``"all"``: PQ, SQ, RQ, mIoU, PQ_dagger; one entry per class name)
    with ``"present"``: the classes with ground-truth points, and ``"all"["PQ_present"]`` /
    ``["SQ_present"]`` / ``["RQ_present"]``: the means over them."""
    import contextlib
    import io

    from nuscenes.eval.panoptic.evaluate import NuScenesPanopticEval
    from nuscenes.utils.splits import is_predefined_split

    out_dir = Path(out_dir if out_dir is not None else folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the devkit prints its whole table
        if is_predefined_split(eval_set):
            ev = NuScenesPanopticEval(nusc, results_folder=str(folder), eval_set=eval_set, task="segmentation",
                                      min_inst_points=min_inst_points, out_dir=str(out_dir), verbose=False)
            results = ev.evaluate_segmentation()
            seg, id2name, n_classes = ev.evaluator["segmentation"], ev.id2name, ev.num_classes
        else:
            results, seg, id2name, n_classes = _evaluate_custom_split(nusc, Path(folder), eval_set, min_inst_points)
    gt_points = seg.px_iou_conf_matrix.sum(0)  # rows: predictions, columns: ground truth
    present = [id2name[i] for i in range(1, n_classes) if gt_points[i] > 0]
    results["present"] = present
    for m in ("PQ", "SQ", "RQ"):
        results["all"][f"{m}_present"] = float(np.mean([results[c][m] for c in present])) if present else float("nan")
    return results


def _evaluate_custom_split(nusc, folder: Path, eval_set: str, min_inst_points: int):
    """``NuScenesPanopticEval.evaluate_segmentation`` on the samples of a custom split, from the devkit's parts."""
    from types import SimpleNamespace

    from nuscenes.eval.common.loaders import get_samples_of_custom_split
    from nuscenes.eval.panoptic.evaluate import NuScenesPanopticEval
    from nuscenes.eval.panoptic.panoptic_seg_evaluator import PanopticEval
    from nuscenes.eval.panoptic.utils import PanopticClassMapper
    from nuscenes.utils.data_io import load_bin_file

    mapper = PanopticClassMapper(nusc)
    id2name = {idx: name for name, idx in mapper.coarse_name_2_coarse_idx_mapping.items()}
    n_classes = len(id2name)
    seg = PanopticEval(n_classes=n_classes, ignore=[mapper.ignore_class["index"]], min_points=min_inst_points)
    for sample_token in get_samples_of_custom_split(eval_set, nusc):
        sd_token = nusc.get("sample", sample_token)["data"]["LIDAR_TOP"]
        label = load_bin_file(str(Path(nusc.dataroot) / nusc.get("panoptic", sd_token)["filename"]), type="panoptic")
        pred_file = folder / "panoptic" / eval_set / f"{sd_token}_panoptic.npz"
        if not pred_file.is_file():
            raise FileNotFoundError(f"evaluate_panoptic: no prediction file {pred_file}")
        pred = load_bin_file(str(pred_file), type="panoptic")
        seg.addBatch(pred // 1000, pred, mapper.convert_label(label // 1000), label)
    pq, sq, rq, class_pq, class_sq, class_rq = seg.getPQ()
    miou, class_iou = seg.getSemIoU()
    wrapper = SimpleNamespace(id2name=id2name, things=mapper.things.keys(), stuff=mapper.stuff.keys())
    results = NuScenesPanopticEval.wrap_result_segmentation(wrapper, pq, sq, rq, miou, class_pq, class_sq, class_rq,
                                                            class_iou)
    return results, seg, id2name, n_classes

"""Boxes and panoptic labels of the synthetic set, and the panoptic / detection heads, against the devkit.

The references are independent of the code under test: the devkit's ``points_in_box``, its own
panoptic-label generator, its panoptic and detection evaluators, scikit-learn's adjusted Rand index,
a loop-by-loop max-pool, and the closed forms of a perfect prediction's scores.
"""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from cmcr_lite.data.synthetic import generate
from cmcr_lite.downstream import detection, panoptic
from cmcr_lite.downstream.objects import DETECTION_CLASSES, load_objects

# sha256 of every file under samples/ and lidarseg/ of `generate(out, 2, seed=0, samples_per_scene=2)`, as
# written before the generator learnt boxes and panoptic labels: adding them drew no random number.
BYTES_BEFORE_BOXES = "d0d2d71c68a70baf75e31c86376e2dddc8bd2c1183c4fc113d272c9d25c287f1"
PRESENT_DETECTION = ("car", "truck", "bus", "construction_vehicle", "pedestrian", "traffic_cone", "barrier")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("boxes") / "set", 2, seed=0, samples_per_scene=2, progress=False)
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    return root, NuScenesKeyframes(root, "v1.0-synthetic", split="val")


def _digest(root) -> str:
    h = hashlib.sha256()
    for f in sorted(list((root / "samples").rglob("*")) + list((root / "lidarseg").rglob("*"))):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode()), h.update(f.read_bytes())
    return h.hexdigest()


def test_scans_images_and_labels_are_the_bytes_of_before(dataset):
    assert _digest(dataset[0]) == BYTES_BEFORE_BOXES


def test_devkit_counts_the_same_points_in_every_box(dataset):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    nusc = dataset[1].nusc
    n = 0
    for sample in nusc.sample:
        path, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
        xyz = LidarPointCloud.from_file(path).points[:3]
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            assert points_in_box(box, xyz).sum() == ann["num_lidar_pts"], box.token
            n += ann["num_lidar_pts"] > 0
    assert n > 50  # boxes with points exist, of every present class
    names = {nusc.get("sample_annotation", t)["category_name"] for t in nusc.get("sample", nusc.sample[0]["token"])["anns"]}
    assert {"vehicle.car", "human.pedestrian.adult", "movable_object.trafficcone"} <= names


def test_instances_are_tracked_across_keyframes_and_static(dataset):
    nusc = dataset[1].nusc
    attributes = {a["token"]: a["name"] for a in nusc.attribute}
    for inst in nusc.instance:
        chain, token = [], inst["first_annotation_token"]
        while token:
            chain.append(nusc.get("sample_annotation", token))
            token = chain[-1]["next"]
        assert len(chain) == inst["nbr_annotations"] and chain[-1]["token"] == inst["last_annotation_token"]
        assert {a["instance_token"] for a in chain} == {inst["token"]}
        for ann in chain:
            assert ann["visibility_token"] in {v["token"] for v in nusc.visibility}
            names = [attributes[t] for t in ann["attribute_tokens"]]
            category = ann["category_name"]
            assert names == ([] if category.startswith("movable_object") else names) and len(names) <= 1
        if len(chain) > 1:  # the world is static: the devkit's velocity (from neighbouring boxes) is 0
            np.testing.assert_allclose(nusc.box_velocity(chain[0]["token"]), 0.0, atol=1e-9)


def test_panoptic_labels_agree_with_the_devkits_generator(dataset, tmp_path):
    from nuscenes.panoptic.generate_panoptic_labels import generate_panoptic_labels
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    nusc = dataset[1].nusc
    generate_panoptic_labels(nusc, str(tmp_path))
    for rec in nusc.panoptic:
        ours = np.load(dataset[0] / rec["filename"])["data"]
        theirs = np.load(tmp_path / rec["filename"])["data"]
        _, boxes, _ = nusc.get_sample_data(rec["token"])
        xyz = LidarPointCloud.from_file(str(dataset[0] / nusc.get("sample_data", rec["token"])["filename"])).points[:3]
        fine = ours // 1000
        index = nusc.lidarseg_name2idx_mapping
        in_boxes = sum((points_in_box(b, xyz) & (fine == index[b.name])).astype(int) for b in boxes)
        # the devkit drops the instance of a point inside two boxes of its class; elsewhere the labels agree
        assert np.array_equal(ours[in_boxes <= 1], theirs[in_boxes <= 1])
        assert np.all(theirs[in_boxes > 1] % 1000 == 0)
        assert (ours % 1000 > 0).sum() > 100


def test_panoptic_evaluator_scores_a_perfect_prediction_1_and_a_merged_one_lower(dataset, tmp_path):
    keyframes = dataset[1]
    perfect = panoptic.true_panoptic(keyframes)
    panoptic.write_panoptic_results(tmp_path / "perfect", "cmcr_val", perfect)
    r = panoptic.evaluate_panoptic(keyframes.nusc, tmp_path / "perfect", "cmcr_val")
    assert len(r["present"]) == 12
    assert r["all"]["PQ_present"] == pytest.approx(1.0) and r["all"]["RQ_present"] == pytest.approx(1.0)
    assert r["all"]["PQ"] == pytest.approx(12 / 16)  # the devkit's mean counts the 4 absent classes as 0
    merged = {t: np.where(p % 1000 > 0, p - p % 1000 + 1, p).astype(np.uint16) for t, p in perfect.items()}
    panoptic.write_panoptic_results(tmp_path / "merged", "cmcr_val", merged)
    worse = panoptic.evaluate_panoptic(keyframes.nusc, tmp_path / "merged", "cmcr_val")
    assert worse["all"]["PQ_present"] < 0.95
    assert worse["all"]["mIoU"] == pytest.approx(r["all"]["mIoU"])  # the same classes, other instances
    assert worse["pedestrian"]["PQ"] < 1.0 and worse["manmade"]["PQ"] == pytest.approx(1.0)


def test_custom_split_panoptic_path_matches_the_devkits_own_evaluator(tmp_path):
    """On a mini set both paths can run: NuScenesPanopticEval("mini_val") and the devkit's parts on a custom
    split holding the same scenes must give the same numbers for an imperfect prediction."""
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    root = generate(tmp_path / "mini", version="v1.0-mini", samples_per_scene=1, progress=False)
    keyframes = NuScenesKeyframes(root, "v1.0-mini", split="val")
    from nuscenes.utils.splits import create_splits_scenes

    (root / "v1.0-mini" / "splits.json").write_text(json.dumps({"cmcr_val": create_splits_scenes()["mini_val"]}))
    rng = np.random.default_rng(0)
    preds = {t: np.where(rng.random(len(p)) < 0.2, 11000 + (p % 1000), p).astype(np.uint16)
             for t, p in panoptic.true_panoptic(keyframes).items()}  # a fifth of the points called driveable surface
    for name in ("mini_val", "cmcr_val"):
        panoptic.write_panoptic_results(tmp_path / "pred", name, preds)
    devkit = panoptic.evaluate_panoptic(keyframes.nusc, tmp_path / "pred", "mini_val")
    custom = panoptic.evaluate_panoptic(keyframes.nusc, tmp_path / "pred", "cmcr_val")
    assert 0.2 < devkit["all"]["PQ"] < 0.7
    assert json.dumps(devkit, sort_keys=True) == json.dumps(custom, sort_keys=True)


def test_detection_evaluator_scores_the_true_boxes_1_and_shifted_ones_lower(dataset, tmp_path):
    keyframes = dataset[1]
    path = detection.write_detection_results(tmp_path / "perfect.json", detection.true_box_results(keyframes))
    m = detection.evaluate_detection(keyframes.nusc, path, "cmcr_val")
    assert tuple(m["present"]) == PRESENT_DETECTION
    assert m["mean_ap_present"] == pytest.approx(1.0) and m["nd_score_present"] == pytest.approx(1.0, abs=1e-6)
    assert m["mean_ap"] == pytest.approx(7 / 10)  # the devkit's mean counts trailer, motorcycle, bicycle as 0
    for shift, best in ((0.7, 0.76), (3.0, 0.26)):  # beyond 0.5 m, then beyond 2 m: 3 and 1 thresholds of 4 left
        path = detection.write_detection_results(tmp_path / f"shift{shift}.json", detection.true_box_results(keyframes, shift))
        worse = detection.evaluate_detection(keyframes.nusc, path, "cmcr_val")
        assert worse["mean_ap_present"] == pytest.approx(best - 0.01, abs=0.011), shift
    assert worse["tp_errors"]["trans_err"] > 0.9  # a 3 m shift is a miss at 2 m: no true positive to measure


def test_heat_map_targets_decode_back_to_the_boxes():
    grid = detection.BEVGrid(20.0, 0.5)
    boxes = np.array([[3.3, -7.1, 0.9, 4.6, 1.9, 1.7, 0.3], [-12.0, 5.2, 0.4, 0.6, 0.6, 0.8, -2.5],
                      [15.9, 15.2, 1.6, 10.5, 2.8, 3.3, 3.0]], np.float32)
    classes = np.array([0, 8, 2])
    heat, codes, cells = detection.detection_targets(boxes, classes, grid)
    assert heat.shape == (10, 80, 80) and np.all(heat.max((1, 2))[classes] == 1.0)
    box_map = np.zeros((8, 80, 80), np.float32)
    box_map[:, cells[:, 0], cells[:, 1]] = codes.T
    logits = torch.logit(torch.from_numpy(heat).clamp(1e-6, 1 - 1e-6))
    out, scores, out_classes = detection.decode_boxes(logits, torch.from_numpy(box_map), grid, score_threshold=0.9)
    order = np.argsort(out_classes)
    np.testing.assert_allclose(out[order], boxes[np.argsort(classes)], atol=1e-4)


def test_bev_pool_is_a_max_over_each_cells_voxels():
    grid = detection.BEVGrid(2.0, 0.5)
    g = torch.Generator().manual_seed(0)
    coords = torch.cat([torch.randint(0, 2, (300, 1), generator=g), torch.randint(-25, 25, (300, 3), generator=g)], 1)
    feats = torch.randn(300, 4, generator=g)
    out = detection.bev_pool(feats, coords, 0.1, grid, 2)
    ref = torch.zeros(2, 4, grid.size, grid.size)
    seen = torch.zeros(2, grid.size, grid.size, dtype=torch.bool)
    for (b, x, y, _), f in zip(coords.tolist(), feats):
        i, j = int(np.floor(((x + 0.5) * 0.1 + 2.0) / 0.5)), int(np.floor(((y + 0.5) * 0.1 + 2.0) / 0.5))
        if 0 <= i < grid.size and 0 <= j < grid.size:
            ref[b, :, i, j] = f if not seen[b, i, j] else torch.maximum(ref[b, :, i, j], f)
            seen[b, i, j] = True
    torch.testing.assert_close(out, ref)


def test_clustering_true_offsets_recovers_the_instances(dataset):
    from sklearn.metrics import adjusted_rand_score

    keyframes = dataset[1]
    points, labels = keyframes.load_scan(0)
    obj = load_objects(keyframes, 0)
    xyz = points[:, :3]
    offsets = panoptic.instance_centres(xyz, obj.instance) - xyz
    ids = panoptic.cluster_instances(xyz, offsets, labels, radius=0.5)
    thing = obj.instance > 0
    assert adjusted_rand_score(obj.instance[thing], ids[thing]) == pytest.approx(1.0)
    no_offsets = panoptic.cluster_instances(xyz, np.zeros_like(xyz), labels, radius=0.5)
    assert adjusted_rand_score(obj.instance[thing], no_offsets[thing]) < 0.99  # far objects fall apart without them


def test_classes_and_default_attributes_are_the_devkits():
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES

    assert list(DETECTION_CLASSES) == DETECTION_NAMES
    assert set(detection.DEFAULT_ATTRIBUTE) == set(DETECTION_NAMES)
    assert all(a in ATTRIBUTE_NAMES for a in detection.DEFAULT_ATTRIBUTE.values() if a)


def test_an_old_dataset_without_panoptic_labels_is_named(dataset, tmp_path):
    from cmcr_lite.data.nuscenes_loader import DatasetError, NuScenesKeyframes

    old = tmp_path / "old"
    shutil.copytree(dataset[0], old)
    (old / "v1.0-synthetic" / "panoptic.json").unlink()
    shutil.rmtree(old / "panoptic")
    with pytest.raises(DatasetError, match="no panoptic.json"):
        load_objects(NuScenesKeyframes(old, "v1.0-synthetic", split="val"), 0)


def test_instances_experiment_at_toy_size(tmp_path, synthetic_root):
    """Every pretraining x fraction x seed through the command line, the devkit's scores in each job's
    result, the table, and a rerun that redoes nothing."""
    from experiments.cli import main as experiments_main

    tiny = {"num_matches": 64, "backbone": {"layers": [1] * 8, "planes": [8] * 8, "init_dim": 8},
            "pipeline": {"crop_size": [56, 104], "crop_min_pairs": 50, "occupancy_queries": 64}}
    args = (["instances", "--smoke", "--seeds", "0", "--finetune-steps", "2", "--workers", "2",
             "--dataroot", str(synthetic_root), "--output-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path),
             "--set"] + [f"{k}={json.dumps(v)}" for k, v in tiny.items()])
    report = experiments_main(args)
    runs = report["runs"]
    assert sorted((r["pretraining"], r["fraction"], r["seed"]) for r in runs) == sorted(
        (p, f, 0) for p in ("random init", "PPKT", "CMCR") for f in (1 / 3, 1.0))
    assert {r["train_scans"] for r in runs if r["fraction"] < 1} == {3}
    assert {r["epochs"] for r in runs if r["fraction"] == 1} == {1}
    for r in runs:
        assert r["eval_set"] == "cmcr_val" and 0 <= r["panoptic"]["all"]["PQ_present"] <= 1
        assert r["config"]["downstream"]["backbone"]["planes"] == [8] * 8
    md = (tmp_path / "instances_smoke.md").read_text()
    assert all(f"| {p} |" in md for p in ("random init", "PPKT", "CMCR")) and "PQ 1/3 (3 scans)" in md
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "instances_smoke_runs").glob("*.json")}
    assert len(stamps) == 6
    again = experiments_main(args)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.dumps(again["summary"]) == json.dumps(report["summary"])  # NaN stds (one seed) compare as text


def test_more_than_999_clusters_keep_the_largest():
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform(-1, 1, (200, 3)) * 0.01 + [0, 0, 5], rng.uniform(-500, 500, (1500, 3))])
    semantic = np.full(len(xyz), 4)  # car
    ids = panoptic.cluster_instances(xyz, np.zeros_like(xyz), semantic, radius=0.5)
    assert ids.max() == 999 and (ids == 1).sum() == 200  # the 200-point cluster keeps id 1
    assert (ids == 0).sum() == len(xyz) - 200 - 998 and len(np.unique(ids[ids > 0])) == 999


def test_paired_differences_are_scipys_paired_t_interval():
    from scipy import stats

    from experiments.instances import paired_differences

    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.3, 0.6, 4), rng.uniform(0.3, 0.6, 4)

    def run(p, seed, v):
        return {"pretraining": p, "fraction": 1.0, "seed": seed, "panoptic": {"all": {"PQ_present": v}}, "detection": {}}

    runs = [run("CMCR", s, v) for s, v in enumerate(a)] + [run("PPKT", s, v) for s, v in reversed(list(enumerate(b)))]
    d = paired_differences(runs, "CMCR", "PPKT", 1.0, "PQ")
    ref = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d["n"] == 4 and np.isclose(d["mean"], (a - b).mean())
    assert np.isclose(d["low"], ref.low) and np.isclose(d["high"], ref.high)

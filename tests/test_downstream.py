"""Tests for cmcr_lite.downstream: scene fractions, optimiser and schedule, linear probe vs
fine-tuning, per-point evaluation through the inverse map, pretrained-trunk loading, and an
end-to-end lite linear probe on the embedded dataset.

References are independent of the code under test: hand-computed confusion matrices, a per-point
voxel look-up by grid coordinate (not through ``voxel_of_point``), and the closed-form cosine."""
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
from cmcr_lite.downstream import (DownstreamConfig, predict_scan, PretrainedWeightsError, SegmentationModel, SegmentationScans,
                                  batch_to_sparse, collate_scans, evaluate, keyframe_indices_for_fraction,
                                  load_pretrained_trunk, make_optimizer, make_scheduler, point_predictions,
                                  scan_confusion, select_scenes_by_fraction, train_segmentation)
from cmcr_lite.metrics import confusion_matrix, mean_iou
from cmcr_lite.models.minkunet import MinkUNet, MinkUNetConfig
from cmcr_lite.paths import EMBEDDED_VERSION

LITE = MinkUNetConfig.lite(bn_momentum=0.02)


class ArrayScans:
    """In-memory labelled scans with the ``NuScenesKeyframes.load_scan`` interface."""

    def __init__(self, scans):
        self.scans = scans

    def __len__(self):
        return len(self.scans)

    def load_scan(self, i):
        return self.scans[i]


def toy_scans(n_scans=2, n_points=800, seed=0):
    """Points in a 6 x 6 x 2 m box; label = quadrant (1..4), a few points ignored (0)."""
    rng = np.random.default_rng(seed)
    scans = []
    for _ in range(n_scans):
        xyz = rng.uniform([-3, -3, -1], [3, 3, 1], (n_points, 3)).astype(np.float32)
        inten = rng.uniform(0, 255, (n_points, 1)).astype(np.float32)
        labels = (1 + (xyz[:, 0] > 0) + 2 * (xyz[:, 1] > 0)).astype(np.int64)
        labels[rng.random(n_points) < 0.05] = 0
        scans.append((np.concatenate([xyz, inten], 1), labels))
    return ArrayScans(scans)


@pytest.fixture(scope="module")
def train_kf(synthetic_root):
    return NuScenesKeyframes(synthetic_root, EMBEDDED_VERSION, split="train")


@pytest.fixture(scope="module")
def val_kf(synthetic_root, train_kf):
    return NuScenesKeyframes(synthetic_root, EMBEDDED_VERSION, split="val", nusc=train_kf.nusc)


# ------------------------------------------------------------------------------------------ fractions
def test_scene_fraction_is_slidrs_every_kth_scene_in_table_order():
    # a hand-made split in table order (not sorted): k = 4 keeps the 4th and the 8th, never the 1st
    table = ["scene-0553", "scene-0061", "scene-1100", "scene-0103", "scene-0916", "scene-0655", "scene-0757",
             "scene-1077", "scene-0796", "scene-1094"]
    assert select_scenes_by_fraction(table, 0.25) == ["scene-0103", "scene-1077"]
    assert select_scenes_by_fraction(table, 0.5) == table[1::2]
    assert select_scenes_by_fraction(table, 1.0) == table
    assert select_scenes_by_fraction(table, 0.3) == ["scene-1100", "scene-0655", "scene-0796"]  # 1/0.3 -> k = 3
    with pytest.raises(ValueError, match=r"keeps no scene.*1/10 = 0\.1"):
        select_scenes_by_fraction(table, 0.01)
    names = [f"scene-{i:04d}" for i in range(1, 701)]
    assert select_scenes_by_fraction(names, 0.01) == [f"scene-{i:04d}" for i in range(100, 701, 100)]  # 7 scenes
    for fraction, count in [(0.05, 35), (0.10, 70), (0.25, 175), (1.0, 700)]:
        assert len(select_scenes_by_fraction(names, fraction)) == count
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            select_scenes_by_fraction(names, bad)
    with pytest.raises(ValueError, match="duplicate"):
        select_scenes_by_fraction(["a", "b", "a"], 0.5)


def test_fraction_selects_whole_scenes_of_keyframes(train_kf):
    nusc = train_kf.nusc
    scene_of = [nusc.get("scene", nusc.get("sample", t)["scene_token"])["name"] for t in train_kf.sample_tokens]
    table = [s["name"] for s in nusc.scene if s["name"] in set(scene_of)]
    assert len(table) == 3
    picked = keyframe_indices_for_fraction(train_kf, 1 / 3)      # k = 3: the 3rd train scene of the table
    assert picked == [i for i, s in enumerate(scene_of) if s == table[2]]  # every scan of that scene
    assert keyframe_indices_for_fraction(train_kf, 1.0) == list(range(len(train_kf)))
    with pytest.raises(ValueError, match="keeps no scene"):
        keyframe_indices_for_fraction(train_kf, 0.01)


# ------------------------------------------------------------------------------------------ config
def test_config_presets_and_validation():
    ft = DownstreamConfig.finetune()
    assert (ft.mode, ft.label_fraction, ft.epochs, ft.lr, ft.lr_head, ft.batch_size) == ("finetune", 0.01, 100, 0.02,
                                                                                         2.0, 16)
    assert (ft.momentum, ft.dampening, ft.weight_decay, ft.voxel_size, ft.cylindrical, ft.num_classes) == \
        (0.9, 0.1, 1e-4, 0.1, False, 17)
    assert DownstreamConfig.finetune(0.1).epochs == 50
    lp = DownstreamConfig.linear_probe()
    assert (lp.mode, lp.label_fraction, lp.epochs, lp.lr, lp.lr_head, lp.head_lr) == ("linear_probe", 1.0, 50, 0.05,
                                                                                      None, 0.05)
    lite = DownstreamConfig.lite()
    assert lite.backbone.planes == MinkUNetConfig.lite().planes and lite.batch_size == 2 and lite.cache_features
    assert DownstreamConfig.from_dict(lite.to_dict()) == lite
    # the mIoU rule: the devkit's at the paper's scale, the classes present on the small sets; a record
    # written before the field existed was scored over the classes present
    assert (ft.miou_rule, lp.miou_rule, lite.miou_rule, DownstreamConfig.lite("finetune").miou_rule) == \
        ("nuscenes", "nuscenes", "present", "present")
    old = {k: v for k, v in ft.to_dict().items() if k != "miou_rule"}
    assert DownstreamConfig.from_dict(old).miou_rule == "present"
    with pytest.raises(ValueError, match="miou_rule"):
        DownstreamConfig(miou_rule="kitti")
    with pytest.raises(ValueError, match="label_fraction"):
        DownstreamConfig.finetune(0.0)
    with pytest.raises(ValueError, match="label_fraction"):
        DownstreamConfig(label_fraction=1.5)
    with pytest.raises(ValueError, match="cache_features"):
        DownstreamConfig.finetune(cache_features=True)
    with pytest.raises(ValueError, match="lr_head"):
        DownstreamConfig(lr_head=-1.0)


# ------------------------------------------------------------------------------------------ optimiser
def test_optimizer_groups_and_cosine_schedule():
    cfg = DownstreamConfig.finetune(backbone=LITE, epochs=10)
    model = SegmentationModel(cfg.backbone)
    opt = make_optimizer(model, cfg)
    assert len(opt.param_groups) == 2
    trunk, head = opt.param_groups
    assert (trunk["lr"], head["lr"]) == (0.02, 2.0)
    for g in opt.param_groups:
        assert (g["momentum"], g["dampening"], g["weight_decay"]) == (0.9, 0.1, 1e-4)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(head["params"]) == ids(model.head.parameters())
    assert ids(trunk["params"]) == ids(model.trunk.parameters())
    assert ids(trunk["params"]) | ids(head["params"]) == ids(model.parameters())

    sched = make_scheduler(opt, cfg)
    seen = []
    for epoch in range(cfg.epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for epoch, (lr_t, lr_h) in enumerate(seen):
        factor = (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
        assert lr_t == pytest.approx(0.02 * factor, abs=1e-12) and lr_h == pytest.approx(2.0 * factor, abs=1e-12)
    assert all(g["lr"] < 1e-12 for g in opt.param_groups)  # ~0 after the last epoch

    lp = DownstreamConfig.linear_probe(backbone=LITE)
    opt_lp = make_optimizer(SegmentationModel(lp.backbone), lp)
    assert [g["lr"] for g in opt_lp.param_groups] == [0.05]  # the head only, lr_head None -> lr


# ------------------------------------------------------------------------------------------ training modes
def test_linear_probe_trains_only_the_head_and_keeps_bn_statistics():
    torch.manual_seed(1)
    source = MinkUNet(LITE)
    with torch.no_grad():  # non-trivial BN statistics, so a train-mode pass would visibly change them
        for name, buf in source.named_buffers():
            if "running" in name:
                buf.add_(torch.rand_like(buf))
    before = {k: v.clone() for k, v in source.state_dict().items()}
    cfg = DownstreamConfig.lite("linear_probe", cache_features=False, normalize_features=False, epochs=2,
                                seed=3)
    model, history = train_segmentation(cfg, toy_scans(), pretrained=source.state_dict(), progress=False)
    after = model.trunk.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"trunk tensor {k} changed during linear probing"
    assert all(not p.requires_grad for p in model.trunk.parameters())
    model.train()
    assert model.training and not model.trunk.training  # BN of the frozen trunk stays in eval mode
    torch.manual_seed(3)
    fresh = SegmentationModel(cfg.backbone)
    assert not torch.equal(model.head.weight, fresh.head.weight)  # the head did train
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))


def test_feature_normalization_is_fixed_and_matches_training_statistics():
    cfg = DownstreamConfig.lite("linear_probe", cache_features=False, epochs=1)
    scans = toy_scans()
    model, _ = train_segmentation(cfg, scans, progress=False)
    feats = torch.cat([model.features(batch_to_sparse(collate_scans([it])))
                       for it in SegmentationScans(scans)]).detach()
    assert torch.allclose(model.feature_mean, feats.mean(0), atol=1e-6)
    floor = 1e-3 * float(feats.std(0, unbiased=False).max())
    assert torch.allclose(model.feature_scale, feats.std(0, unbiased=False).clamp_min(floor), rtol=1e-4, atol=1e-9)
    assert "feature_mean" not in dict(model.named_parameters())  # a buffer: never trained


def test_finetune_trains_trunk_and_head():
    cfg = DownstreamConfig.lite("finetune", epochs=1, batch_size=2, seed=0)
    torch.manual_seed(cfg.seed)
    init = SegmentationModel(cfg.backbone).state_dict()
    model, _ = train_segmentation(cfg, toy_scans(), progress=False)
    state = model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], state[k])}
    assert "head.weight" in changed and "trunk.stem.0.kernel" in changed
    assert any("running_mean" in k for k in changed)  # BN statistics are updated when fine-tuning


def test_training_is_reproducible():
    """Same seed -> same run. Bit-identical with one CPU thread; with two, parallel float reductions
    (MinkowskiEngine / PyTorch) may differ in the last bits (measured <= 1e-5 after a step)."""
    cfg = DownstreamConfig.lite("finetune", epochs=1, batch_size=1, seed=5)
    a, ha = train_segmentation(cfg, toy_scans(), progress=False)
    b, hb = train_segmentation(cfg, toy_scans(), progress=False)
    assert len(ha["step_loss"]) == 2 and ha["step_loss"] == pytest.approx(hb["step_loss"], rel=1e-5)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-4), k
    c, hc = train_segmentation(replace(cfg, seed=6), toy_scans(), progress=False)
    assert hc["step_loss"] != pytest.approx(ha["step_loss"], rel=1e-3)  # the seed matters


def test_augmentation_depends_on_seed_epoch_index_only():
    ds = SegmentationScans(toy_scans(1), augment=True, seed=7)
    first = ds[0]["coords"]
    assert np.array_equal(first, ds[0]["coords"])
    ds.set_epoch(1)
    assert not np.array_equal(first, ds[0]["coords"])
    ds.set_epoch(0)
    assert np.array_equal(first, ds[0]["coords"])
    plain = SegmentationScans(toy_scans(1), augment=False)
    points, labels = toy_scans(1).load_scan(0)
    item = plain[0]
    assert np.array_equal(item["point_labels"], labels)
    # each voxel carries the intensity / 255 and the label of one of its own points
    for v in range(0, len(item["coords"]), 97):
        members = np.flatnonzero(item["voxel_of_point"] == v)
        assert np.isclose(points[members, 3] / 255, item["feats"][v, 0]).any()
        assert item["labels"][v] in labels[members]


# ------------------------------------------------------------------------------------------ evaluation
def test_point_predictions_and_confusion_by_hand():
    logits = torch.full((3, 17), -5.0)
    logits[0, 1] = 2.0                       # voxel 0 -> class 1
    logits[1, 0], logits[1, 3] = 9.0, 1.0    # voxel 1: ignore class wins, must fall back to class 3
    logits[2, 3] = 4.0                       # voxel 2 -> class 3
    voxel_of_point = torch.tensor([0, 0, 1, 2, 2, 2])
    labels = torch.tensor([1, 2, 1, 0, 3, 3])
    assert point_predictions(logits, voxel_of_point).tolist() == [1, 1, 3, 3, 3, 3]
    expected = np.zeros((17, 17), np.int64)
    expected[1, 1] = 1   # point 0
    expected[2, 1] = 1   # point 1
    expected[1, 3] = 1   # point 2 (its voxel's ignore logit is masked)
    expected[3, 3] = 2   # points 4, 5; point 3 is labelled ignore and not counted
    assert np.array_equal(scan_confusion(logits, voxel_of_point, labels), expected)


def test_collate_offsets_and_inverse_maps():
    scans = toy_scans(2, seed=4)
    ds = SegmentationScans(scans, voxel_size=0.1)
    batch = collate_scans([ds[0], ds[1]])
    assert batch["coords"].dtype == torch.int32 and batch["coords"].shape[1] == 4
    assert batch["feats"].shape == (len(batch["coords"]), 1) and float(batch["feats"].max()) <= 1.0
    for b in range(2):
        lo, hi = batch["offsets"][b].item(), batch["offsets"][b + 1].item()
        assert (batch["coords"][lo:hi, 0] == b).all()
        points, _ = scans.load_scan(b)
        grid = np.floor(points[:, :3].astype(np.float64) / 0.1).astype(np.int32)
        rows = batch["coords"][lo:hi, 1:].numpy()[batch["voxel_of_point"][b].numpy()]
        assert np.array_equal(rows, grid)  # every point maps to the voxel holding it


def test_evaluate_matches_an_independent_per_point_lookup():
    scans = toy_scans(2, seed=9)
    torch.manual_seed(0)
    model = SegmentationModel(LITE)
    conf = evaluate(model, scans, progress=False)
    ds = SegmentationScans(scans)
    expected = np.zeros((17, 17), np.int64)
    model.eval()
    for i in range(len(scans)):
        item = ds[i]
        with torch.no_grad():
            logits = model(batch_to_sparse(collate_scans([item])))
        logits[:, 0] = -math.inf
        voxel_pred = {tuple(c): int(p) for c, p in zip(item["coords"].tolist(), logits.argmax(1).tolist())}
        points, labels = scans.load_scan(i)
        grid = np.floor(points[:, :3].astype(np.float64) / 0.1).astype(int)
        pred = np.array([voxel_pred[tuple(g)] for g in grid.tolist()])
        expected += confusion_matrix(pred, labels, 17, ignore_index=0)
    assert np.array_equal(conf, expected)
    assert conf[:, 0].sum() == 0 and conf[0].sum() == 0
    # one scan's picture (predict_scan) holds the same per-point predictions as the evaluation
    points, labels, predicted = predict_scan(model, scans, 1)
    assert np.array_equal(points, scans.load_scan(1)[0]) and len(predicted) == len(labels)
    assert np.array_equal(confusion_matrix(predicted, labels, 17, ignore_index=0),
                          evaluate(model, scans, indices=[1], progress=False))


# ------------------------------------------------------------------------------------------ pretrained
def test_pretrained_trunk_loads_from_checkpoint_file(tmp_path):
    torch.manual_seed(2)
    source = MinkUNet(LITE)
    extra_head = {"head3d.kernel": torch.randn(1, 32, 64), "head3d.bias": torch.randn(1, 64)}
    path = tmp_path / "pretrain.pt"
    torch.save({"model3d": source.state_dict(), "model": extra_head,
                "config": {"pipeline": {"voxel_size": 0.1, "cylindrical": False}}}, path)
    torch.manual_seed(3)
    model = SegmentationModel(LITE)
    report = load_pretrained_trunk(model, path, DownstreamConfig.lite())
    assert str(path) in report["source"]
    for k, v in source.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[k], v), k
    # a plain state dict with pretraining heads and a prefix loads too; the heads are ignored
    model2 = SegmentationModel(LITE)
    plain = {f"backbone.{k}": v for k, v in source.state_dict().items()} | extra_head
    report2 = load_pretrained_trunk(model2, plain)
    assert set(report2["ignored"]) == set(extra_head)
    assert torch.equal(model2.trunk.stem[0].kernel, source.stem[0].kernel)


def test_mismatched_pretrained_trunk_raises_naming_file_and_key(tmp_path):
    other = MinkUNet(MinkUNetConfig.lite(planes=(16, 32, 48, 64, 64, 48, 32, 40)))  # last stage 40-d
    path = tmp_path / "wrong.pt"
    torch.save({"model3d": other.state_dict()}, path)
    model = SegmentationModel(LITE)
    with pytest.raises(PretrainedWeightsError) as err:
        load_pretrained_trunk(model, path)
    msg = str(err.value)
    assert str(path) in msg and "dec.3.0.conv1.kernel" in msg and "shape" in msg
    state = MinkUNet(LITE).state_dict()
    del state["stem.0.kernel"]
    with pytest.raises(PretrainedWeightsError, match=r"missing keys: stem\.0\.kernel"):
        load_pretrained_trunk(model, state)
    with pytest.raises(PretrainedWeightsError, match="voxel_size"):
        load_pretrained_trunk(model, {"model3d": MinkUNet(LITE).state_dict(), "config": {"voxel_size": 0.05}},
                              DownstreamConfig.lite())


# ------------------------------------------------------------------------------------------ end to end
def test_lite_linear_probe_on_embedded_set_beats_chance(train_kf, val_kf):
    t0 = time.perf_counter()
    cfg = DownstreamConfig.lite("linear_probe")
    model, history = train_segmentation(cfg, train_kf, progress=False)
    conf = evaluate(model, val_kf, cfg, progress=False)
    seconds = time.perf_counter() - t0
    miou = mean_iou(conf)
    # chance reference: the most frequent training class predicted everywhere
    counts = np.bincount(np.concatenate([train_kf.load_scan(i)[1] for i in range(len(train_kf))]), minlength=17)
    majority = int(np.argmax(counts[1:]) + 1)
    labels = np.concatenate([val_kf.load_scan(i)[1] for i in range(len(val_kf))])
    chance = mean_iou(confusion_matrix(np.full_like(labels, majority), labels, 17))
    print(f"lite LP (random-init trunk): val mIoU {100 * miou:.1f} vs majority {100 * chance:.1f}, {seconds:.1f} s")
    assert history["loss"][-1] < history["loss"][0]
    assert miou > max(0.08, 2.5 * chance)


def test_fraction_counts_scenes_in_table_order_not_sorted():
    """keyframe_indices_for_fraction counts the scenes of the keyframes in ``nusc.scene`` order,
    skipping table scenes that are not in the split (as SLidR's loader does)."""

    class FakeNusc:
        # table order c, x (another split), a, d, b: the split's scenes in table order are c, a, d, b
        scene = [{"name": n, "token": f"t-{n}"} for n in ("scene-c", "scene-x", "scene-a", "scene-d", "scene-b")]

        def get(self, table, token):
            if table == "sample":
                return {"scene_token": f"t-{token.split('/')[0]}"}
            return next(s for s in self.scene if s["token"] == token)

    class FakeKeyframes:
        nusc = FakeNusc()
        # the keyframes list scenes in another order still (sorted), two scans each
        sample_tokens = [f"scene-{c}/{i}" for c in "abcd" for i in range(2)]

        def __len__(self):
            return len(self.sample_tokens)

    kf = FakeKeyframes()
    # k = 2: the 2nd and 4th split scenes of the table, a and b (sorted names would give b and d;
    # counting scene-x too would give d)
    assert keyframe_indices_for_fraction(kf, 0.5) == [0, 1, 2, 3]
    assert keyframe_indices_for_fraction(kf, 0.25) == [2, 3]             # k = 4: the 4th, b
    assert keyframe_indices_for_fraction(kf, 1.0) == list(range(8))

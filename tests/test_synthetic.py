"""The synthetic nuScenes generator (cmcr_lite.data.synthetic): format, determinism, atomicity, and
that its cameras and LiDAR show the same world with the twin classes of cmcr_lite.classes."""
import json
from pathlib import Path

import numpy as np
import pytest

from cmcr_lite.classes import (APPEARANCE_ONLY_TWINS, CLASS_NAMES_16, GEOMETRY_ONLY_TWINS, SYNTHETIC_CLASSES,
                               class_index)
from cmcr_lite.data import synthetic
from cmcr_lite.data.nuscenes_loader import DatasetError, open_nuscenes
from cmcr_lite.data.projection import pose_matrix
from cmcr_lite.data.synthetic_world import TERRAIN_TOP
from cmcr_lite.paths import EMBEDDED_VERSION as VERSION  # the version of the session fixture


# ---------------------------------------------------------------------------------------------
# The unmodified devkit reads it
# ---------------------------------------------------------------------------------------------

def test_devkit_loads_with_lidarseg(synthetic_root, capsys):
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=VERSION, dataroot=str(synthetic_root), verbose=False)
    assert len(nusc.scene) >= 3 and len(nusc.sample) == sum(s["nbr_samples"] for s in nusc.scene)
    lidar_sds = [nusc.get("sample_data", s["data"]["LIDAR_TOP"]) for s in nusc.sample]
    assert len(nusc.lidarseg) == len(lidar_sds)
    assert all(len(s["data"]) == 7 for s in nusc.sample), "each keyframe has LIDAR_TOP and 6 cameras"

    mapper = LidarsegClassMapper(nusc)
    coarse = mapper.fine_idx_2_coarse_idx_mapping
    assert sorted(coarse) == list(range(32))
    assert set(coarse.values()) == set(range(17))  # 16 classes + ignore
    # the devkit's coarse names are ours, index for index
    assert {v: k for k, v in mapper.coarse_name_2_coarse_idx_mapping.items()} == dict(enumerate(CLASS_NAMES_16))

    present = set()
    for sd in lidar_sds:
        rec = nusc.get("lidarseg", sd["token"])
        fine = np.fromfile(synthetic_root / rec["filename"], dtype=np.uint8)
        n_points = (synthetic_root / sd["filename"]).stat().st_size // 20
        assert len(fine) == n_points
        present |= {coarse[int(f)] for f in np.unique(fine)}
    names = {CLASS_NAMES_16[i] for i in present}
    assert names - {"ignore"} <= set(SYNTHETIC_CLASSES)
    assert len(names - {"ignore"}) >= 10, f"only {sorted(names)} appear in the fixture"

    nusc.list_scenes()
    out = capsys.readouterr().out
    assert all(s["name"] in out for s in nusc.scene)


def test_sample_data_chain_and_timestamps(synthetic_root):
    """prev/next link each channel's keyframes; cameras fire at their own time with their own ego pose."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=VERSION, dataroot=str(synthetic_root), verbose=False)
    for scene in nusc.scene:
        first = nusc.get("sample", scene["first_sample_token"])
        for channel, token in first["data"].items():
            chain = []
            while token:
                sd = nusc.get("sample_data", token)
                chain.append(sd)
                token = sd["next"]
            assert len(chain) == scene["nbr_samples"]
            assert all(a["timestamp"] < b["timestamp"] for a, b in zip(chain, chain[1:]))
        lidar = nusc.get("sample_data", first["data"]["LIDAR_TOP"])
        assert first["timestamp"] == lidar["timestamp"]
        for channel in synthetic.CAMERAS:
            cam = nusc.get("sample_data", first["data"][channel])
            assert cam["timestamp"] != lidar["timestamp"] and cam["ego_pose_token"] != lidar["ego_pose_token"]
            assert (cam["width"], cam["height"]) == (synthetic.IMAGE_WIDTH, synthetic.IMAGE_HEIGHT)


def test_splits_are_disjoint_and_cover_scenes(synthetic_root):
    splits = json.loads((synthetic_root / synthetic.SPLITS_FILE).read_text())
    assert set(splits) == {"teacher", "train", "val"}
    names = [s["name"] for s in json.loads((synthetic_root / VERSION / "scene.json").read_text())]
    for a in splits:
        assert splits[a], f"split {a} is empty"
        for b in splits:
            if a < b:
                assert not set(splits[a]) & set(splits[b]), f"splits {a} and {b} share scenes"
    assert sorted(sum(splits.values(), [])) == sorted(names)


@pytest.mark.parametrize("n", [3, 4, 5, 10, 37])
def test_assign_splits_disjoint(n):
    names = [f"s{i}" for i in range(n)]
    splits = synthetic.assign_splits(names)
    assert sorted(sum(splits.values(), [])) == sorted(names)
    assert all(splits.values())
    assert not set(splits["teacher"]) & set(splits["train"]) and not set(splits["val"]) & set(splits["train"])


# ---------------------------------------------------------------------------------------------
# Determinism and atomic writes
# ---------------------------------------------------------------------------------------------

def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(n_scenes=1, samples_per_scene=1, progress=False)
    a = _files(synthetic.generate(tmp_path / "a", seed=7, **kw))
    b = _files(synthetic.generate(tmp_path / "b", seed=7, **kw))
    c = _files(synthetic.generate(tmp_path / "c", seed=8, **kw))
    kinds = {".pcd.bin": 0, "_lidarseg.bin": 0, ".json": 0, ".jpg": 0}
    for name in a:
        for k in kinds:
            kinds[k] += name.endswith(k)
    assert kinds[".pcd.bin"] == 1 and kinds["_lidarseg.bin"] == 1 and kinds[".jpg"] == 6 and kinds[".json"] >= 14
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"same seed, different bytes in {different}"
    # another seed: other tokens (file names), other points, other tables
    pcd = lambda files: next(v for k, v in files.items() if k.endswith(".pcd.bin"))  # noqa: E731
    assert pcd(a) != pcd(c)
    v = synthetic.DEFAULT_VERSION
    assert a[f"{v}/sample_data.json"] != c[f"{v}/sample_data.json"]
    assert a[f"{v}/calibrated_sensor.json"] != c[f"{v}/calibrated_sensor.json"]


class _Interrupt(RuntimeError):
    pass


def _interrupt_after_first_camera(monkeypatch):
    real = synthetic.render_camera
    calls = []

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise _Interrupt("simulated interruption (e.g. Ctrl-C, disk full)")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_camera", render_then_fail)
    return calls


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = _interrupt_after_first_camera(monkeypatch)
    out = tmp_path / "nuscenes"
    with pytest.raises(_Interrupt):
        synthetic.generate(out, n_scenes=1, samples_per_scene=1, seed=0, progress=False)
    assert len(calls) == 2, "the generator should have been interrupted mid-way"
    assert not out.exists(), "an interrupted run left a dataset folder"
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.iterdir())}"
    with pytest.raises(DatasetError, match="dataset root not found"):
        open_nuscenes(out, VERSION)


def test_interrupted_overwrite_keeps_old_contents(tmp_path, monkeypatch):
    out = tmp_path / "nuscenes"
    out.mkdir()
    (out / "keep.txt").write_text("previous dataset")
    _interrupt_after_first_camera(monkeypatch)
    with pytest.raises(_Interrupt):
        synthetic.generate(out, n_scenes=1, samples_per_scene=1, seed=0, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["nuscenes"], "temporary folder left behind"


def test_existing_nonempty_dir_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "nuscenes"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(FileExistsError, match=str(out)):
        synthetic.generate(out, n_scenes=1, samples_per_scene=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["something"]
    assert [p.name for p in tmp_path.iterdir()] == ["nuscenes"]
    with pytest.raises(SystemExit) as exc:  # the CLI says so too, without a traceback
        synthetic.main(["--out", str(out), "--scenes", "1", "--samples-per-scene", "1"])
    assert str(out) in str(exc.value.code)


def test_rejects_empty_request(tmp_path):
    with pytest.raises(ValueError, match="scenes"):
        synthetic.generate(tmp_path / "x", n_scenes=0, progress=False)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Cameras and LiDAR show the same world; twins differ where cmcr_lite.classes says
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def per_class(keyframes):
    """Per 16-class index: RGB (n,3) of the pixels paired with its points, and ego-frame z (metres)
    of all its points, over every keyframe of the fixture."""
    rgb = {i: [] for i in range(len(CLASS_NAMES_16))}
    z = {i: [] for i in range(len(CLASS_NAMES_16))}
    for index in range(len(keyframes)):
        kf = keyframes[index]
        cs = keyframes.nusc.get("calibrated_sensor", keyframes.lidar_record(kf.sample_token)["calibrated_sensor_token"])
        T = pose_matrix(cs["rotation"], cs["translation"])
        z_ego = kf.points[:, :3].astype(np.float64) @ T[2, :3] + T[2, 3]
        cam, row, col = kf.pair_pixels.T
        colours = kf.images[cam, row, col].astype(np.float64)
        paired = kf.labels[kf.pair_points]
        for i in rgb:
            rgb[i].append(colours[paired == i])
            z[i].append(z_ego[kf.labels == i])
    return {i: np.concatenate(v) for i, v in rgb.items()}, {i: np.concatenate(v) for i, v in z.items()}


def _mean_colour(per_class, name):
    colours = per_class[0][class_index(name)]
    assert len(colours) >= 30, f"only {len(colours)} pixels of {name} in the fixture"
    return colours.mean(0)


def test_appearance_twins_differ_in_colour(per_class):
    for a, b in APPEARANCE_ONLY_TWINS:
        d = np.linalg.norm(_mean_colour(per_class, a) - _mean_colour(per_class, b))
        assert d > 40, f"{a} and {b} should look different in the images; mean colours {d:.1f} apart"


def test_geometry_twins_look_alike(per_class):
    """Mean RGB nearly equal for car/truck and barrier/manmade. For terrain/vegetation the shading of
    the tree spheres darkens the same grass, so compare the direction of the mean colour (invariant to
    shading), which also must be clearly closer than for any appearance twins."""
    def direction(name):
        m = _mean_colour(per_class, name)
        return m / np.linalg.norm(m)

    for a, b in GEOMETRY_ONLY_TWINS:
        if (a, b) != ("terrain", "vegetation"):
            d = np.linalg.norm(_mean_colour(per_class, a) - _mean_colour(per_class, b))
            assert d < 20, f"{a} and {b} should look alike; mean colours {d:.1f} apart"
    geometry = max(np.linalg.norm(direction(a) - direction(b)) for a, b in GEOMETRY_ONLY_TWINS)
    appearance = min(np.linalg.norm(direction(a) - direction(b)) for a, b in APPEARANCE_ONLY_TWINS)
    assert geometry < 0.5 * appearance, (geometry, appearance)


def test_geometry_twins_differ_in_height(per_class):
    """90th percentile of ego-frame height (m): truck > car, vegetation > terrain, manmade > barrier."""
    z = per_class[1]
    for a, b in GEOMETRY_ONLY_TWINS:
        za, zb = z[class_index(a)], z[class_index(b)]
        assert len(za) >= 100 and len(zb) >= 100
        pa, pb = np.percentile(za, 90), np.percentile(zb, 90)
        assert pb > pa + 0.7, f"{b} should stand taller than {a}: p90 {pb:.2f} m vs {pa:.2f} m"


def test_ground_classes_lie_on_the_ground(per_class):
    z = per_class[1]
    for name, top in (("driveable_surface", 0.0), ("sidewalk", 0.0), ("terrain", TERRAIN_TOP)):
        zc = z[class_index(name)]
        assert abs(np.median(zc) - top) < 0.05, f"{name}: median height {np.median(zc):.3f} m, expected {top}"


def test_no_object_inside_the_ego_vehicle(keyframes):
    """No labelled LiDAR return lies inside the ego vehicle's body (ego frame: x from -1 to 4 m,
    |y| < 1 m, z from 0.1 to 2 m); noise returns (label 0) are excluded."""
    for index in range(len(keyframes)):
        kf = keyframes[index]
        cs = keyframes.nusc.get("calibrated_sensor", keyframes.lidar_record(kf.sample_token)["calibrated_sensor_token"])
        T = pose_matrix(cs["rotation"], cs["translation"])
        xyz = kf.points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        inside = ((xyz[:, 0] > -1) & (xyz[:, 0] < 4) & (np.abs(xyz[:, 1]) < 1) & (xyz[:, 2] > 0.1) & (xyz[:, 2] < 2)
                  & (kf.labels != 0))
        assert not inside.any(), (f"keyframe {index}: {int(inside.sum())} points of classes "
                                  f"{sorted({CLASS_NAMES_16[i] for i in kf.labels[inside]})} inside the ego vehicle")

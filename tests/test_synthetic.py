"""The synthetic nuScenes generator (cmcr_lite.data.synthetic): format, determinism, atomicity, and
that its cameras and LiDAR show the same world with the twin classes of cmcr_lite.classes."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from cmcr_lite.classes import (APPEARANCE_ONLY_TWINS, CLASS_NAMES_16, GEOMETRY_ONLY_TWINS, SYNTHETIC_CLASSES,
                               class_index)
from cmcr_lite.data import synthetic, synthetic_world
from cmcr_lite.data.nuscenes_loader import DatasetError, open_nuscenes
from cmcr_lite.data.projection import pose_matrix
from cmcr_lite.data.synthetic_world import SHRUB_HEIGHT, TERRAIN_TOP
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


def test_parallel_workers_write_the_same_bytes(tmp_path):
    """Scenes draw from generators seeded by (seed, scene), so two worker processes give the files
    one process gives, byte for byte, and the scenes do not repeat each other."""
    kw = dict(n_scenes=3, samples_per_scene=1, seed=5, progress=False)
    one = _files(synthetic.generate(tmp_path / "one", **kw))
    two = _files(synthetic.generate(tmp_path / "two", workers=2, **kw))
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []
    scans = [v for k, v in one.items() if k.endswith(".pcd.bin")]
    assert len(scans) == 3 and len(set(scans)) == 3


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
    assert exc.value.code == 2 and str(out) in str(exc.value)


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
    """Mean RGB of the pixels paired with each geometry twin nearly equal, far closer than any
    appearance twins'."""
    for a, b in GEOMETRY_ONLY_TWINS:
        d = np.linalg.norm(_mean_colour(per_class, a) - _mean_colour(per_class, b))
        assert d < 20, f"{a} and {b} should look alike; mean colours {d:.1f} apart"


def test_vegetation_stands_on_the_grass_with_shrub_relief(per_class):
    """Vegetation points rise above the terrain plane by the shrubs' relief (0..SHRUB_HEIGHT, mean
    about half of it); terrain points lie on it."""
    z = per_class[1]
    veg = z[class_index("vegetation")] - TERRAIN_TOP
    assert 0.3 * SHRUB_HEIGHT < np.median(veg) < 0.7 * SHRUB_HEIGHT, np.median(veg)
    assert np.percentile(veg, 95) < SHRUB_HEIGHT + 0.06


# ---------------------------------------------------------------------------------------------
# The twins, sensor by sensor: swap one twin for the other in the same world and compare renders
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_world():
    """A world and a camera on the ego lane looking left, at the parked and oncoming vehicles."""
    world = synthetic_world.build_world(np.random.default_rng(3), -45.0, 45.0)
    origin = np.array([0.0, -world.road_half / 2, 1.8])
    # camera axes (x right, y down, z forward) in the road frame: forward = +y (left of the road)
    R_world_cam = np.stack([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], 1)
    K = np.array([[120.0, 0.0, 160.0], [0.0, 120.0, 60.0], [0.0, 0.0, 1.0]])
    return world, origin, R_world_cam, K


def _swapped(world, relabel: dict, rematerial: dict = None, beds=None):
    """A copy of ``world`` with fine labels (and materials) of primitives swapped."""
    out = copy.deepcopy(world)
    for p in out.primitives:
        if p.fine_label in relabel:
            p.material = (rematerial or {}).get(p.material, p.material)
            p.fine_label = relabel[p.fine_label]
    if beds is not None:
        out.beds = beds
    return out


def _sensors(world, view):
    _, origin, R_world_cam, K = view
    image = synthetic_world.render_camera(world, origin, R_world_cam, K, 320, 120)
    points, labels = synthetic_world.lidar_scan(world, origin, np.eye(3), np.random.default_rng(0), n_azimuth=360)
    return image, points, labels


def test_geometry_twins_differ_only_for_the_lidar(small_world):
    """Trucks relabelled as cars and vegetation beds turned into terrain: every camera pixel stays
    the same, while the LiDAR returns of trucks and beds move by their relief (and nothing else)."""
    world = small_world[0]
    F = synthetic_world.FINE
    truck_ids = [i for i, p in enumerate(world.primitives) if p.fine_label == F["vehicle.truck"]]
    assert truck_ids and world.beds
    plain = _swapped(world, {F["vehicle.truck"]: F["vehicle.car"]}, beds=[])
    image, points, labels = _sensors(world, small_world)
    image_plain, points_plain, labels_plain = _sensors(plain, small_world)
    np.testing.assert_array_equal(image, image_plain)
    assert len(points) == len(points_plain)
    moved = np.linalg.norm(points[:, :3] - points_plain[:, :3], axis=1)
    relief_class = np.isin(labels, [F["vehicle.truck"], F["static.vegetation"]])
    assert relief_class.sum() > 100
    # (label 0: spurious returns, which may have hit a truck or a bed before being pulled short)
    assert moved[~relief_class & (labels != 0)].max() < 1e-5
    assert moved[relief_class].max() <= max(synthetic_world.RIB_DEPTH, synthetic_world.SHRUB_HEIGHT) + 1e-5
    truck = labels == F["vehicle.truck"]
    # ribs: about half of the truck's returns sit RIB_DEPTH out, the other half on the panel
    ribs = np.isclose(moved[truck], synthetic_world.RIB_DEPTH, atol=1e-4)
    assert 0.3 < ribs.mean() < 0.7 and (ribs | (moved[truck] < 1e-5)).all()
    np.testing.assert_array_equal(labels_plain[truck], F["vehicle.car"])


def test_appearance_twins_differ_in_colour_and_only_weakly_in_intensity(small_world):
    """Buses repainted as construction vehicles: the LiDAR geometry is the same point for point, the
    intensity rises by a shift with overlapping distributions, and the images change."""
    world = small_world[0]
    F, M = synthetic_world.FINE, synthetic_world
    swapped = _swapped(world, {F["vehicle.bus.rigid"]: F["vehicle.construction"]}, {M.BUS_RED: M.CV_YELLOW})
    image, points, labels = _sensors(world, small_world)
    image_sw, points_sw, _ = _sensors(swapped, small_world)
    np.testing.assert_array_equal(points[:, :3], points_sw[:, :3])
    bus = labels == F["vehicle.bus.rigid"]
    assert bus.sum() > 100
    shift = points_sw[bus, 3].mean() - points[bus, 3].mean()
    spread = points[bus, 3].std()
    assert 1.3 * spread < shift < 2.7 * spread, (shift, spread)
    assert (image != image_sw).any(axis=2).mean() > 0.01


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

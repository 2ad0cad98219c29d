"""Generate a small synthetic dataset in the exact nuScenes on-disk format.

    python -m cmcr_lite.data.synthetic --out data/nuscenes-synthetic --scenes 4 --seed 0
    python -m cmcr_lite.data.synthetic --out /tmp/nuscenes-mini --version v1.0-mini --samples-per-scene 2
    python -m cmcr_lite.data.synthetic --out data/nuscenes-bench --preset bench --workers 2

The unmodified ``nuscenes-devkit`` loads the result (``NuScenes('v1.0-synthetic', root)``), with
lidarseg labels in the 32 fine classes, so ``LidarsegClassMapper`` gives the usual 16 classes.
What is in a scene and which classes are geometry-only / appearance-only twins: ``data/README.md``
and ``cmcr_lite.data.synthetic_world``.

``--version v1.0-mini`` writes a stand-in for the real nuScenes-mini download: the devkit's 10 mini
scene names (``create_splits_scenes()["mini_train"] + ["mini_val"]``, read from the installed devkit
when generating; ``--scenes`` must then be omitted or 10) and no ``cmcr_splits.json``, so the loader
splits it with the devkit, exactly as it does the real download.

The dataset is written into a temporary folder next to ``--out`` and renamed into place at the
end, so an interrupted run never leaves a half dataset that a later run would load.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pyquaternion import Quaternion
from tqdm.auto import tqdm

from cmcr_lite.data import annotations
from cmcr_lite.data.synthetic_world import LIDAR_RANGE, build_world, lidar_scan, render_camera, visible_fraction
from cmcr_lite.runtime import CommandLineParser, InputError, reports_input_errors

MINI_VERSION = "v1.0-mini"
DEFAULT_VERSION = "v1.0-synthetic"
SPLITS_FILE = "cmcr_splits.json"
# The 32 nuScenes-lidarseg classes, in index order (the devkit maps them to 16 by name).
LIDARSEG_CATEGORIES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack",
    "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer",
    "vehicle.truck", "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
)
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
IMAGE_WIDTH, IMAGE_HEIGHT = 640, 360  # nuScenes' 1600x900 scaled by 0.4
# Camera rigs after nuScenes' own calibration: (yaw of the optical axis in the ego frame in degrees,
# position in the ego frame in metres, focal length in pixels at 1600x900). The back camera is wider.
CAMERA_RIG = {
    "CAM_FRONT": (0.0, (1.70, 0.02, 1.51), 1266.4),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.50), 1260.8),
    "CAM_BACK_RIGHT": (-110.0, (1.03, -0.48, 1.58), 1259.5),
    "CAM_BACK": (180.0, (0.03, 0.00, 1.57), 809.2),
    "CAM_BACK_LEFT": (110.0, (1.05, 0.48, 1.56), 1256.7),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 1272.6),
}
# Cameras fire at slightly different times than the LiDAR (seconds): the loader must use the ego
# pose at each camera's own timestamp, as nuScenes requires.
CAMERA_DELAY = {"CAM_FRONT": 0.012, "CAM_FRONT_RIGHT": 0.020, "CAM_BACK_RIGHT": 0.037, "CAM_BACK": 0.045,
                "CAM_BACK_LEFT": -0.033, "CAM_FRONT_LEFT": -0.008}
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
EGO_SPEED = 8.0          # m/s along the road
KEYFRAME_PERIOD = 0.5    # s, nuScenes keyframes are at 2 Hz
SCENE_MARGIN = 45.0      # m of world before the first and after the last keyframe
# Camera axes (x right, y down, z forward) expressed in the ego frame (x forward, y left, z up).
CAM_AXES_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quaternion_wxyz(R: np.ndarray) -> list:
    """Rotation matrix (3,3) -> [w, x, y, z], the order nuScenes and pyquaternion use."""
    return [float(v) for v in Quaternion(matrix=R, atol=1e-6).elements]


class _Tokens:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self) -> str:
        return self.rng.bytes(16).hex()


def assign_splits(scene_names: list) -> dict:
    """Deterministic scene splits for the synthetic set: 'teacher' (2D teacher only, never seen by the
    3D network), 'train' (pretraining and labelled fine-tuning) and 'val' (evaluation)."""
    n = len(scene_names)
    if n < 3:
        return {"teacher": [], "train": list(scene_names), "val": list(scene_names)}
    n_teacher = max(1, round(0.2 * n))
    n_val = max(1, round(0.2 * n))
    return {"teacher": scene_names[:n_teacher], "val": scene_names[n_teacher:n_teacher + n_val],
            "train": scene_names[n_teacher + n_val:]}


def _write_json(folder: Path, name: str, records: list):
    with open(folder / f"{name}.json", "w") as f:
        json.dump(records, f, indent=0)


# Named sizes. "notebook": the embedded set the notebooks read (cmcr_lite.paths). "bench": the
# experiment's set (python -m experiments bench): 30 scenes split 6 teacher / 6 val / 18
# train (assign_splits), so val holds 18 scans of 6 independent streets and train 54 scans.
PRESETS = {
    "notebook": {"n_scenes": 5, "samples_per_scene": 3, "seed": 0},
    "bench": {"n_scenes": 30, "samples_per_scene": 3, "seed": 1},
}
TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg", "panoptic")
# The devkit's custom splits (nuscenes.utils.splits): <version>/splits.json names the scenes of each
# split, so its evaluators can score a synthetic split ("cmcr_val", ...) by name.
CUSTOM_SPLIT_PREFIX = "cmcr_"


def write_dataset(root: Path, n_scenes: int, seed: int, samples_per_scene: int, version: str, progress: bool = True,
                  workers: int = 1):
    """Write all tables and files of the dataset under ``root`` (which must be empty).

    Every scene draws from its own generators, seeded by (seed, scene index), so scenes can be made
    in ``workers`` processes and the bytes written do not depend on how many there are."""
    tok = _Tokens(np.random.default_rng([seed, 7919]))
    tables = {k: [] for k in TABLES}
    for i, name in enumerate(LIDARSEG_CATEGORIES):
        tables["category"].append({"token": tok(), "name": name, "description": f"nuScenes-lidarseg class {i}",
                                   "index": i})
    sensor_token = {}
    for channel in ("LIDAR_TOP",) + CAMERAS:
        sensor_token[channel] = tok()
        tables["sensor"].append({"token": sensor_token[channel], "channel": channel,
                                 "modality": "lidar" if channel.startswith("LIDAR") else "camera"})
    (root / version).mkdir(parents=True)
    (root / "maps").mkdir()
    (root / "lidarseg" / version).mkdir(parents=True)
    for channel in ("LIDAR_TOP",) + CAMERAS:
        (root / "samples" / channel).mkdir(parents=True)

    map_token = tok()
    # drawn after every earlier token, so the tokens of the tables above are those of older sets
    box_tokens = {"category": [c["token"] for c in tables["category"]], "attribute": {}}
    for name in annotations.ATTRIBUTES:
        box_tokens["attribute"][name] = tok()
        tables["attribute"].append({"token": box_tokens["attribute"][name], "name": name, "description": name})
    for token, level, upper in annotations.VISIBILITY_LEVELS:
        lower = {"1": 0, "2": 40, "3": 60, "4": 80}[token]
        tables["visibility"].append({"token": token, "level": level, "description":
                                     f"visibility of whole object is between {lower} and {min(100, round(100 * upper))}%"})
    (root / "panoptic" / version).mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "maps" / f"{map_token}.png")
    tables["map"].append({"token": map_token, "category": "semantic_prior", "filename": f"maps/{map_token}.png",
                          "log_tokens": []})

    names = mini_scene_names() if version == MINI_VERSION else [f"scene-s{s:04d}" for s in range(n_scenes)]
    jobs = [(root, s, names[s], seed, samples_per_scene, version, sensor_token, box_tokens) for s in range(n_scenes)]
    bar = tqdm(total=n_scenes, desc="synthetic nuScenes", unit="scene", disable=not progress)
    if workers > 1 and n_scenes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, n_scenes)) as pool:
            scenes = []
            for part in pool.imap(_write_scene_job, jobs):  # in scene order
                scenes.append(part)
                bar.update(1)
    else:
        scenes = []
        for job in jobs:
            scenes.append(_write_scene_job(job))
            bar.update(1)
    bar.close()
    for part in scenes:
        tables["map"][0]["log_tokens"].append(part["log"][0]["token"])
        for name, records in part.items():
            tables[name].extend(records)
    for name, records in tables.items():
        _write_json(root / version, name, records)
    if version != MINI_VERSION:  # a mini stand-in is split by the devkit, as the real download
        splits = assign_splits(names[:n_scenes])
        with open(root / SPLITS_FILE, "w") as f:
            json.dump(splits, f, indent=1)
        with open(root / version / "splits.json", "w") as f:
            json.dump({CUSTOM_SPLIT_PREFIX + k: v for k, v in splits.items()}, f, indent=1)


def _write_scene_job(job: tuple) -> dict:
    return write_scene(*job)


def write_scene(root: Path, s: int, scene_name: str, seed: int, samples_per_scene: int, version: str,
                sensor_token: dict, box_tokens: dict) -> dict:
    """Build scene ``s``'s world, write its LiDAR scans, labels and images under ``root``, and return
    its table records ``{table name: [records]}`` (log, scene, sample, sample_data, ego_pose, ...)."""
    rng = np.random.default_rng([seed, s])
    tok = _Tokens(np.random.default_rng([seed, s, 7919]))
    ann_tok = _Tokens(np.random.default_rng([seed, s, 104729]))  # boxes: a generator of their own
    tables = {k: [] for k in ("calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data", "lidarseg",
                              "instance", "sample_annotation", "panoptic")}
    instances = {}  # primitive index -> its instance record; insertion order = the devkit's instance ids
    log_token, scene_token = tok(), tok()
    tables["log"].append({"token": log_token, "logfile": f"synthetic-{seed}-{s:04d}", "vehicle": "synth",
                          "date_captured": "2026-01-01", "location": "synthetic-street"})
    # Per-scene calibration, slightly perturbed as real rigs are between logs.
    calib = {}
    R_ego_lidar = rotz(np.deg2rad(-90.0 + rng.normal(0, 0.3)))
    calib["LIDAR_TOP"] = (R_ego_lidar, np.array(LIDAR_TRANSLATION) + rng.normal(0, 0.01, 3), None)
    for cam, (yaw_deg, pos, focal) in CAMERA_RIG.items():
        R = rotz(np.deg2rad(yaw_deg + rng.normal(0, 0.3))) @ CAM_AXES_IN_EGO
        f = focal * 0.4 * (1 + rng.normal(0, 0.002))
        K = np.array([[f, 0, 326.5 + rng.normal(0, 2)], [0, f, 196.6 + rng.normal(0, 2)], [0, 0, 1]])
        calib[cam] = (R, np.array(pos) + rng.normal(0, 0.01, 3), K)
    calib_token = {}
    for channel, (R, t, K) in calib.items():
        calib_token[channel] = tok()
        tables["calibrated_sensor"].append({
            "token": calib_token[channel], "sensor_token": sensor_token[channel],
            "translation": [float(v) for v in t], "rotation": quaternion_wxyz(R),
            "camera_intrinsic": [] if K is None else [[float(v) for v in row] for row in K]})

    # The road frame sits somewhere in the global frame; the ego drives along the road.
    R_global_road = rotz(rng.uniform(-np.pi, np.pi))
    t_global_road = np.array([rng.uniform(300, 2000), rng.uniform(300, 2000), 0.0])
    road_length = EGO_SPEED * KEYFRAME_PERIOD * (samples_per_scene - 1)
    world = build_world(rng, -SCENE_MARGIN, road_length + SCENE_MARGIN)
    ego_y = -world.road_half / 2

    def ego_pose_at(time_s: float):
        """Ego pose in the road frame at a time (s): rotation (3,3), translation (3,)."""
        return rotz(0.015 * np.sin(1.3 * time_s)), np.array([EGO_SPEED * time_s, ego_y, 0.0])

    t0_us = 1_533_151_600_000_000 + s * 3_600_000_000
    sample_tokens = [tok() for _ in range(samples_per_scene)]
    prev_sd = {ch: "" for ch in calib}
    for k, sample_token in enumerate(sample_tokens):
        t_lidar = k * KEYFRAME_PERIOD
        ts_lidar = t0_us + int(round(t_lidar * 1e6))
        tables["sample"].append({"token": sample_token, "timestamp": ts_lidar, "scene_token": scene_token,
                                 "prev": sample_tokens[k - 1] if k else "",
                                 "next": sample_tokens[k + 1] if k + 1 < samples_per_scene else ""})
        for channel, (R_es, t_es, K) in calib.items():
            t_s = t_lidar + (0.0 if K is None else CAMERA_DELAY[channel])
            ts = t0_us + int(round(t_s * 1e6))
            R_re, t_re = ego_pose_at(t_s)
            ego_token, sd_token = tok(), tok()
            tables["ego_pose"].append({"token": ego_token, "timestamp": ts,
                                       "rotation": quaternion_wxyz(R_global_road @ R_re),
                                       "translation": [float(v) for v in R_global_road @ t_re + t_global_road]})
            origin, R_road_sensor = R_re @ t_es + t_re, R_re @ R_es
            stem = f"{scene_name}__{channel}__{ts}"
            if K is None:
                points, labels, prim = lidar_scan(world, origin, R_road_sensor, rng, with_primitives=True)
                filename = f"samples/{channel}/{stem}.pcd.bin"
                points.tofile(root / filename)
                label_file = f"lidarseg/{version}/{sd_token}_lidarseg.bin"
                labels.tofile(root / label_file)
                tables["lidarseg"].append({"token": sd_token, "sample_data_token": sd_token,
                                           "filename": label_file})
                points_road = points[:, :3].astype(np.float64) @ R_road_sensor.T + origin
                _annotate(tables, instances, world, points_road, prim, origin, R_road_sensor, sample_token,
                          (R_global_road, t_global_road), box_tokens, ann_tok)
                ids = {i: k + 1 for k, i in enumerate(instances)}
                panoptic_file = f"panoptic/{version}/{sd_token}_panoptic.npz"
                np.savez_compressed(root / panoptic_file, data=annotations.panoptic_labels(labels, prim, ids))
                tables["panoptic"].append({"token": sd_token, "sample_data_token": sd_token,
                                           "filename": panoptic_file})
                width = height = 0
                fileformat = "pcd"
            else:
                image = render_camera(world, origin, R_road_sensor, K, IMAGE_WIDTH, IMAGE_HEIGHT)
                filename = f"samples/{channel}/{stem}.jpg"
                Image.fromarray(image).save(root / filename, quality=90)
                width, height, fileformat = IMAGE_WIDTH, IMAGE_HEIGHT, "jpg"
            tables["sample_data"].append({
                "token": sd_token, "sample_token": sample_token, "ego_pose_token": ego_token,
                "calibrated_sensor_token": calib_token[channel], "timestamp": ts, "fileformat": fileformat,
                "is_key_frame": True, "height": height, "width": width, "filename": filename,
                "prev": prev_sd[channel], "next": ""})
            if prev_sd[channel]:
                # link the previous record of this channel forward (records are dicts in the table)
                next(r for r in reversed(tables["sample_data"]) if r["token"] == prev_sd[channel])["next"] = sd_token
            prev_sd[channel] = sd_token
    for record in instances.values():
        tables["instance"].append(record)
    tables["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": samples_per_scene,
                            "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                            "name": scene_name,
                            "description": f"synthetic street, seed {seed}, road half-width {world.road_half:.1f} m"})
    return tables


def _annotate(tables: dict, instances: dict, world, points_road: np.ndarray, prim: np.ndarray, origin: np.ndarray,
              R_road_lidar: np.ndarray, sample_token: str, road_in_global: tuple, box_tokens: dict, tok: _Tokens):
    """Append one keyframe's ``sample_annotation`` records (a box per annotated thing, global frame) and
    open or extend each thing's ``instance`` record (``instances``: primitive index -> record)."""
    R_global_road, t_global_road = road_in_global
    road_yaw = float(np.arctan2(R_global_road[1, 0], R_global_road[0, 0]))
    for i in annotations.annotated_things(world, points_road, prim, origin, LIDAR_RANGE):
        p = world.primitives[i]
        center, size, yaw = annotations.annotation_box(p)
        if i not in instances:
            instances[i] = {"token": tok(), "category_token": box_tokens["category"][p.fine_label],
                            "nbr_annotations": 0, "first_annotation_token": "", "last_annotation_token": ""}
        inst, token = instances[i], tok()
        previous = inst["last_annotation_token"]
        if previous:
            next(r for r in reversed(tables["sample_annotation"]) if r["token"] == previous)["next"] = token
        else:
            inst["first_annotation_token"] = token
        inst["last_annotation_token"] = token
        inst["nbr_annotations"] += 1
        visible = visible_fraction(world, i, origin, R_road_lidar)
        tables["sample_annotation"].append({
            "token": token, "sample_token": sample_token, "instance_token": inst["token"],
            "visibility_token": annotations.visibility_token(visible),
            "attribute_tokens": [box_tokens["attribute"][p.attribute]] if p.attribute else [],
            "translation": [float(v) for v in R_global_road @ center + t_global_road],
            "size": [float(size[1]), float(size[0]), float(size[2])],  # nuScenes: width, length, height
            "rotation": quaternion_wxyz(rotz(road_yaw + yaw)),
            "prev": previous, "next": "",
            "num_lidar_pts": int(annotations.points_in_box(points_road, center, size, yaw).sum()),
            "num_radar_pts": 0})


def mini_scene_names() -> list:
    """The devkit's ``v1.0-mini`` scene names (``mini_train`` + ``mini_val``), in name order as the real
    scene table lists them."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    return sorted(splits["mini_train"] + splits["mini_val"])


def generate(out: str | os.PathLike, n_scenes: int | None = None, seed: int = 0, samples_per_scene: int = 4,
             version: str = DEFAULT_VERSION, overwrite: bool = False, progress: bool = True, workers: int = 1) -> Path:
    """Generate the dataset at ``out`` atomically (temporary folder, then one rename).

    ``n_scenes`` None: 4 scenes, or for ``version="v1.0-mini"`` the devkit's 10 mini scenes. A mini set
    is a stand-in for the real nuScenes-mini download: its scenes carry the devkit's mini names and it
    has no ``cmcr_splits.json``, so the loader splits it with ``create_splits_scenes()`` (mini_train /
    mini_val), the code path of real nuScenes. ``workers`` processes make the scenes in parallel
    (the same bytes for any number)."""
    out = Path(out)
    if version == MINI_VERSION:
        n_mini = len(mini_scene_names())
        if n_scenes not in (None, n_mini):
            raise ValueError(f"version {MINI_VERSION} has the devkit's {n_mini} mini scenes; got --scenes {n_scenes}")
        n_scenes = n_mini
    n_scenes = 4 if n_scenes is None else n_scenes
    if n_scenes < 1 or samples_per_scene < 1:
        raise ValueError(f"--scenes and --samples-per-scene must be >= 1, got {n_scenes} and {samples_per_scene}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_dataset(tmp, n_scenes, seed, samples_per_scene, version, progress, workers)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_dataset(root: str | os.PathLike, n_scenes: int | None = None, seed: int = 0, samples_per_scene: int = 4,
                   version: str = DEFAULT_VERSION, workers: int = 1) -> Path:
    """Return ``root``, generating the synthetic dataset there first if it is missing (``n_scenes`` as
    :func:`generate`: None = 4, or the 10 mini scenes for ``v1.0-mini``)."""
    root = Path(root)
    if not (root / version / "panoptic.json").is_file():  # missing, or written before boxes were
        generate(root, n_scenes=n_scenes, seed=seed, samples_per_scene=samples_per_scene, version=version,
                 overwrite=True, workers=workers)
    return root


@reports_input_errors
def main(argv=None):
    p = CommandLineParser(prog="python -m cmcr_lite.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="dataset root to create (the nuScenes 'dataroot')")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named size: " + "; ".join(f"{k}: {v['n_scenes']} scenes x {v['samples_per_scene']} "
                                                     f"keyframes, seed {v['seed']}" for k, v in PRESETS.items())
                        + " (--scenes, --samples-per-scene and --seed then must not be given)")
    p.add_argument("--scenes", type=int, help=f"number of scenes (default 4; {MINI_VERSION}: the devkit's 10)")
    p.add_argument("--samples-per-scene", type=int, help="keyframes per scene (default 4)")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes making scenes in parallel (same bytes for any)")
    p.add_argument("--version", default=DEFAULT_VERSION,
                   help=f"version folder name (default {DEFAULT_VERSION}; {MINI_VERSION}: the devkit's mini scene "
                        f"names and splits, a stand-in for the real nuScenes-mini)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    a = p.parse_args(argv)
    if a.preset is not None:
        given = [f for f, v in (("--scenes", a.scenes), ("--samples-per-scene", a.samples_per_scene),
                                ("--seed", a.seed)) if v is not None]
        if given:
            p.error(f"--preset {a.preset} fixes the size and seed; do not also give {', '.join(given)}")
        size = PRESETS[a.preset]
        a.scenes, a.samples_per_scene, a.seed = size["n_scenes"], size["samples_per_scene"], size["seed"]
    a.samples_per_scene = 4 if a.samples_per_scene is None else a.samples_per_scene
    a.seed = 0 if a.seed is None else a.seed
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    if a.seed < 0:  # the scenes draw from numpy generators seeded by (seed, scene)
        p.error(f"--seed must be >= 0, got {a.seed}")
    if not a.version or Path(a.version).name != a.version or a.version in (".", ".."):
        p.error(f"--version must be a folder name such as {DEFAULT_VERSION} or {MINI_VERSION}, got {a.version!r}")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        p.error(f"--out {a.out} is a file, not a folder")
    try:
        out = generate(a.out, a.scenes, a.seed, a.samples_per_scene, a.version, a.overwrite, workers=a.workers)
    except (FileExistsError, ValueError) as e:
        raise InputError(e) from None
    except OSError as e:  # a folder that cannot be written, a full disk
        raise InputError(f"cannot write the dataset at {a.out}: {e}") from None
    n = len(json.loads((out / a.version / "scene.json").read_text()))
    print(f"wrote {out} ({n} scenes x {a.samples_per_scene} keyframes, version {a.version})")


if __name__ == "__main__":
    main()

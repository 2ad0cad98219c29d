"""SemanticKITTI on disk: scans, labels, the official 19-class learning map, splits and label fractions.

    points, labels = load_scan("sequences/08/velodyne/000000.bin", "sequences/08/labels/000000.label")
    frames = split_frames(root, "train")                 # [(velodyne path, label path)], sorted
    few = select_frames_by_fraction(frames, 0.01)        # SLidR's 1 %: every 100th frame

The official layout (``dataset/sequences/NN/``): ``velodyne/XXXXXX.bin`` holds float32 x 4 per point
(x, y, z in metres, reflectance in [0, 1]); ``labels/XXXXXX.label`` holds one uint32 per point, the
semantic label in the lower 16 bits and the instance id in the upper 16. The 34 raw semantic labels
map onto 19 classes + ignore (0) by ``learning_map`` of the devkit's ``config/semantic-kitti.yaml``
(PRBonn/semantic-kitti-api), which also folds every *moving* class onto its static one. Train:
sequences 00-07, 09, 10; val: 08 (the official split; 11-21 are the unlabelled test set).

``python -m cmcr_lite.data.semantickitti --out DIR`` writes a small synthetic set in this format
(the embedded street world, re-labelled) for tests and CPU runs.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from cmcr_lite.runtime import CommandLineParser, InputError, reports_input_errors

# raw SemanticKITTI label -> learning index (0 = ignore), as config/semantic-kitti.yaml's learning_map
LEARNING_MAP = {
    0: 0, 1: 0,                                   # unlabeled, outlier
    10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5,  # car, bicycle, bus, motorcycle, on-rails, truck, other-vehicle
    30: 6, 31: 7, 32: 8,                          # person, bicyclist, motorcyclist
    40: 9, 44: 10, 48: 11, 49: 12,                # road, parking, sidewalk, other-ground
    50: 13, 51: 14, 52: 0,                        # building, fence, other-structure (ignored)
    60: 9,                                        # lane-marking -> road
    70: 15, 71: 16, 72: 17, 80: 18, 81: 19,       # vegetation, trunk, terrain, pole, traffic-sign
    99: 0,                                        # other-object (ignored)
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,  # moving-* -> their static class
}
# learning index -> raw label, as semantic-kitti.yaml's learning_map_inv: how a prediction is written
# (sequences/NN/predictions/XXXXXX.label, uint32), which the official evaluator maps back by learning_map
LEARNING_MAP_INV = {0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48, 12: 49,
                    13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81}
CLASS_NAMES_19 = ("ignore", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
                  "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation",
                  "trunk", "terrain", "pole", "traffic-sign")
NUM_CLASSES_19 = len(CLASS_NAMES_19)  # 20 logits: 19 classes + ignore
IGNORE_INDEX = 0
SPLITS = {"train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10), "val": (8,)}

_LUT = np.full(max(LEARNING_MAP) + 1, -1, np.int64)
for _raw, _cls in LEARNING_MAP.items():
    _LUT[_raw] = _cls


class SemanticKittiError(ValueError):
    """A SemanticKITTI file that cannot be read as the format says; the message names the file."""


def map_labels(raw: np.ndarray, path="labels") -> np.ndarray:
    """Raw uint32 label words (N,) -> learning indices (N,) int64 in 0..19: the lower 16 bits are the
    semantic label (the upper 16 the instance, dropped), mapped by ``LEARNING_MAP``."""
    semantic = (np.asarray(raw, np.uint32) & 0xFFFF).astype(np.int64)
    unknown = np.unique(semantic[(semantic >= len(_LUT)) | (_LUT[np.minimum(semantic, len(_LUT) - 1)] < 0)])
    if len(unknown):
        raise SemanticKittiError(f"{path}: semantic labels {unknown[:10].tolist()} are not in semantic-kitti.yaml's "
                                 "learning_map")
    return _LUT[semantic]


def load_scan(velodyne_path, label_path=None):
    """One scan: points (N, 4) float32 (x, y, z metres, reflectance in [0, 1]) and labels (N,) int64 in
    0..19 (``label_path`` given) or None. Raises SemanticKittiError for a missing, empty or truncated
    ``.bin`` (not a whole number of 16-byte points) and for a ``.label`` whose count differs from the
    points'."""
    velodyne_path = Path(velodyne_path)
    if not velodyne_path.is_file():
        raise SemanticKittiError(f"{velodyne_path}: no such scan file")
    size = velodyne_path.stat().st_size
    if size == 0 or size % 16:
        raise SemanticKittiError(f"{velodyne_path}: {size} bytes is not a whole number of points (16 bytes each: "
                                 "float32 x, y, z, reflectance); the file is empty or truncated")
    points = np.fromfile(velodyne_path, dtype=np.float32).reshape(-1, 4)
    if label_path is None:
        return points, None
    label_path = Path(label_path)
    if not label_path.is_file():
        raise SemanticKittiError(f"{label_path}: no such label file (for {velodyne_path.name})")
    lsize = label_path.stat().st_size
    if lsize % 4 or lsize // 4 != len(points):
        raise SemanticKittiError(f"{label_path}: {lsize} bytes hold {lsize / 4:g} labels, but {velodyne_path.name} "
                                 f"has {len(points)} points (one uint32 each)")
    return points, map_labels(np.fromfile(label_path, dtype=np.uint32), label_path)


def split_frames(root, split: str) -> list:
    """[(velodyne path, label path)] of a split's sequences under ``root`` (the folder holding
    ``sequences/``), sorted by path as SLidR sorts them (sequence, then frame)."""
    if split not in SPLITS:
        raise ValueError(f"split_frames: split must be one of {sorted(SPLITS)}, got {split!r}")
    root = Path(root)
    if not (root / "sequences").is_dir():
        raise SemanticKittiError(f"{root}: no sequences/ folder (expected dataset/sequences/NN/velodyne/*.bin)")
    frames = []
    for seq in SPLITS[split]:
        folder = root / "sequences" / f"{seq:02d}"
        for scan in sorted((folder / "velodyne").glob("*.bin")):
            frames.append((scan, folder / "labels" / f"{scan.stem}.label"))
    if not frames:
        raise SemanticKittiError(f"{root}: no scans in sequences {list(SPLITS[split])} ({split})")
    return sorted(frames)


def select_frames_by_fraction(frames: list, fraction: float) -> list:
    """SLidR's label fraction on SemanticKITTI: every k-th frame of the sorted list, k =
    round(1 / fraction) (``dataset_skip_step``: 100 for 1 %), starting with the first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"select_frames_by_fraction: fraction must be in (0, 1], got {fraction}")
    return sorted(frames)[::max(1, round(1 / fraction))]


class SemanticKittiScans:
    """A SemanticKITTI split as the downstream code reads scans: ``len``, ``load_scan(i) -> (points
    (N, 4) float32, labels (N,) int64)`` and ``indices_for_fraction(fraction)`` (the frames SLidR's
    rule keeps). Column 3 of the points is SLidR's voxel feature, reflectance + 1 (in [1, 2]), so a
    ``DownstreamConfig`` reads it with ``intensity_scale=1``."""

    version = "semantickitti"  # what a results record names as the dataset version

    def __init__(self, root, split: str = "train"):
        self.root, self.split = Path(root), split
        self.dataroot = self.root
        self.frames = split_frames(root, split)

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"SemanticKittiScans({self.root}, split={self.split!r}: {len(self)} scans)"

    def load_scan(self, i: int):
        points, labels = load_scan(*self.frames[i])
        points = points.copy()
        points[:, 3] += 1.0  # SLidR's downstream feature for SemanticKITTI
        return points, labels

    def indices_for_fraction(self, fraction: float) -> list:
        keep = {f for f, _ in select_frames_by_fraction(self.frames, fraction)}
        return [i for i, (f, _) in enumerate(self.frames) if f in keep]


# ------------------------------------------------------------------------------------------ synthetic
# nuScenes fine labels of the synthetic world -> raw SemanticKITTI labels
_FROM_NUSCENES = {0: 1, 2: 30, 9: 51, 12: 99, 16: 13, 17: 10, 18: 20, 23: 18, 24: 40, 26: 48, 27: 72, 28: 50, 30: 70}


def write_synthetic(out, sequences=(0, 1, 8), frames_per_sequence: int = 2, seed: int = 0,
                    overwrite: bool = False) -> Path:
    """A small SemanticKITTI-format set from the embedded street world: ``sequences/NN/velodyne`` and
    ``labels`` for each sequence (one street each), reflectance = intensity / 255. Cars in the
    oncoming lane are written as ``moving-car`` (252), and every label word carries an instance id in
    its upper 16 bits, so both parts of the format are exercised. Written atomically."""
    from cmcr_lite.data.synthetic import rotz
    from cmcr_lite.data.synthetic_world import build_world, lidar_scan

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    lut = np.zeros(32, np.uint32)
    for fine, raw in _FROM_NUSCENES.items():
        lut[fine] = raw
    try:
        for seq in sequences:
            rng = np.random.default_rng([seed, seq])
            world = build_world(rng, -45.0, 45.0 + 4.0 * frames_per_sequence)
            folder = tmp / "sequences" / f"{seq:02d}"
            (folder / "velodyne").mkdir(parents=True)
            (folder / "labels").mkdir()
            for k in range(frames_per_sequence):
                origin = np.array([4.0 * k, -world.road_half / 2, 1.73])  # KITTI's HDL-64 sits at 1.73 m
                points, fine = lidar_scan(world, origin, rotz(0.0), rng)
                raw = lut[fine]
                moving = (raw == 10) & (points[:, 1] > world.road_half / 2 - 0.5)  # the oncoming lane
                raw[moving] = 252
                instance = rng.integers(1, 50, len(points)).astype(np.uint32)
                words = raw | (instance << np.uint32(16))
                xyzr = np.concatenate([points[:, :3], points[:, 3:4] / 255.0], 1).astype(np.float32)
                xyzr.tofile(folder / "velodyne" / f"{k:06d}.bin")
                words.astype(np.uint32).tofile(folder / "labels" / f"{k:06d}.label")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@reports_input_errors
def main(argv=None):
    p = CommandLineParser(prog="python -m cmcr_lite.data.semantickitti",
                          description="Write a small synthetic SemanticKITTI-format set (sequences/NN/...).")
    p.add_argument("--out", required=True, help="folder that will hold sequences/")
    p.add_argument("--sequences", type=int, nargs="+", default=[0, 1, 8], help="sequence numbers (08 = val)")
    p.add_argument("--frames", type=int, default=2, help="scans per sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    bad = [s for s in a.sequences if not 0 <= s <= 21]
    if bad:
        p.error(f"--sequences must be SemanticKITTI's sequence numbers 0..21, got {bad}")
    if len(set(a.sequences)) != len(a.sequences):
        p.error(f"--sequences must not repeat a sequence, got {a.sequences}")
    if a.frames < 1:
        p.error(f"--frames must be >= 1, got {a.frames}")
    if a.seed < 0:  # each sequence draws from a numpy generator seeded by (seed, sequence)
        p.error(f"--seed must be >= 0, got {a.seed}")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        p.error(f"--out {a.out} is a file, not a folder")
    try:
        out = write_synthetic(a.out, a.sequences, a.frames, a.seed, a.overwrite)
    except FileExistsError:
        raise InputError(f"--out {a.out} already exists and is not empty; pass --overwrite to replace it") from None
    except OSError as e:  # a folder that cannot be written, a full disk
        raise InputError(f"cannot write the dataset at {a.out}: {e}") from None
    print(f"wrote {out} ({len(a.sequences)} sequences x {a.frames} scans)")


if __name__ == "__main__":
    main()

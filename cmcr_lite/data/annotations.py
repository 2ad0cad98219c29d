"""Boxes and instance labels of the synthetic world, in nuScenes' terms.

Every *thing* of a scene (a primitive whose fine class is below 24, nuScenes-panoptic's first stuff
index: pedestrians, barriers, cones, cars, trucks, buses, construction vehicles) is one nuScenes
``instance``; each keyframe annotates it with a ``sample_annotation`` (a 3D box) when the LiDAR sees at
least one point of it or its centre lies within the LiDAR's range. The world is static, so a box is
the same in every keyframe (and its velocity, from the neighbouring annotations, is zero).

The box of a primitive is its solid grown by the relief the LiDAR sees (a truck's ribs stand
``RIB_DEPTH`` proud of its sides, ends and roof) and by ``BOX_MARGIN`` on every side, so the points of
the object, range noise included, lie inside it, as they lie inside a hand-drawn nuScenes box; the
devkit's own panoptic-label generator (which keeps a thing's points inside its box) then agrees with
the instance labels written here, point for point, except where two boxes overlap.

All coordinates here are in the road frame (``cmcr_lite.data.synthetic_world``): metres, x along the
road, y left, z up.
"""
from __future__ import annotations

import numpy as np

from cmcr_lite.data.synthetic_world import FINE, RIB_DEPTH, Primitive, World

STUFF_START = 24           # nuScenes-panoptic: fine classes below this index are things
BOX_MARGIN = 0.10          # m added on every side of a box (range noise is 0.015 m, 1 sigma)
# nuScenes' visibility levels: the fraction of the object that is visible, binned (token = level number)
VISIBILITY_LEVELS = (("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.01))
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")


def is_thing(p: Primitive) -> bool:
    return 0 < p.fine_label < STUFF_START


def annotation_box(p: Primitive) -> tuple:
    """The box of thing ``p`` in the road frame: centre (3,) m, size (3,) m as (length along the box's
    x, width, height), yaw (rad about z)."""
    if p.kind == "box":
        length, width, height = (float(v) for v in p.size)
        center = np.array(p.center, float)
    else:  # cylinder (pedestrian, cone): its square footprint
        length = width = 2.0 * float(p.size[0])
        height = float(p.size[2])
        center = np.array(p.center, float)
    if p.fine_label == FINE["vehicle.truck"]:  # ribs stand proud of the sides, the ends and the roof
        length, width, height = length + 2 * RIB_DEPTH, width + 2 * RIB_DEPTH, height + RIB_DEPTH
        center = center + np.array([0.0, 0.0, RIB_DEPTH / 2])
    m = 2 * BOX_MARGIN
    return center, np.array([length + m, width + m, height + m]), float(p.yaw)


def points_in_box(points: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: float) -> np.ndarray:
    """Which ``points`` (N, 3) lie inside the box (``center`` (3,), ``size`` (l, w, h), ``yaw``), all in
    one frame: (N,) bool. Edges count as inside, as in the devkit's ``points_in_box``."""
    c, s = np.cos(yaw), np.sin(yaw)
    rel = points - center
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    return (np.abs(local) <= size / 2).all(1)


def visibility_token(fraction: float) -> str:
    """nuScenes' visibility token ("1".."4") of a visible fraction in 0..1."""
    return next(token for token, _, upper in VISIBILITY_LEVELS if fraction < upper)


def annotated_things(world: World, points_road: np.ndarray, prim: np.ndarray, origin: np.ndarray,
                     max_range: float) -> list:
    """The primitive indices of the things one keyframe annotates, in primitive order: those the scan
    hit (``prim`` (N,), the primitive index of each point) and those whose centre lies within
    ``max_range`` metres (horizontally) of the LiDAR ``origin`` (3,)."""
    hit = set(np.unique(prim[prim >= 0]).tolist())
    out = []
    for i, p in enumerate(world.primitives):
        if is_thing(p) and (i in hit or np.hypot(*(p.center[:2] - origin[:2])) <= max_range):
            out.append(i)
    return out


def panoptic_labels(fine_labels: np.ndarray, prim: np.ndarray, instance_id: dict) -> np.ndarray:
    """nuScenes-panoptic labels (N,) uint16 of one scan: fine class x 1000 + instance id (1, 2, ...
    within the scene; 0 for stuff and noise). ``prim`` (N,): the primitive each point hit;
    ``instance_id``: {primitive index: instance id} of the scene's annotated things."""
    ids = np.zeros(len(prim), np.int64)
    for i, k in instance_id.items():
        ids[prim == i] = k
    thing = (fine_labels > 0) & (fine_labels < STUFF_START)
    ids[~thing] = 0
    return (fine_labels.astype(np.int64) * 1000 + ids).astype(np.uint16)

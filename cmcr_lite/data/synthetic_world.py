"""A tiny procedural street world and a ray caster that renders it for a LiDAR and for cameras.

The same geometry is seen by both sensors, so a LiDAR point and the pixel it projects to always
show the same surface: the class of a point shows as the colour/texture where it projects.
Classes come in *twins* (see ``cmcr_lite.classes``), built so that what separates a pair is
available to one sensor only, or mostly:

* geometry-only twins share material and coarse shape, so the cameras render them identically;
  they differ in a *relief* that only the LiDAR resolves (centimetre-to-decimetre structure the
  cameras' pixels and flat shading do not show):
  car | truck (the same blue boxes; the truck's panels are ribbed, 45 cm deep, 1.2 m period),
  terrain | vegetation (the same flat-looking grass strip; planted beds are shrubby, up to 30 cm);
* appearance-only twins share shape and differ strongly in colour/texture; in the LiDAR they
  differ only through an intensity shift (paint reflectance; the distributions overlap, and
  notebook 00 §7 measures how far apart they are, as d'), while the cameras see them plainly:
  driveable_surface | sidewalk (asphalt vs beige paving),
  bus | construction_vehicle (the same long box: red with a white band vs yellow with black stripes);
* pedestrian (purple cylinder), traffic_cone (orange cylinder), barrier (white/red low wall) and
  manmade (tall concrete buildings) differ from everything in both.

All coordinates here are in the *road frame*: metres, x along the road, y to the left, z up,
ground at z = 0. ``cmcr_lite.data.synthetic`` places the road frame in a global frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# nuScenes-lidarseg fine (32-class) indices used by the world.
FINE = {
    "noise": 0, "human.pedestrian.adult": 2, "movable_object.barrier": 9, "movable_object.trafficcone": 12,
    "vehicle.bus.rigid": 16, "vehicle.car": 17, "vehicle.construction": 18, "vehicle.truck": 23,
    "flat.driveable_surface": 24, "flat.sidewalk": 26, "flat.terrain": 27, "static.manmade": 28,
    "static.vegetation": 30,
}

# Materials decide colour, texture and LiDAR intensity. Twins share what the docstring says they share.
ASPHALT, PAVING, GRASS, CONCRETE, BLUE_PAINT, BUS_RED, CV_YELLOW, PURPLE, CONE_ORANGE, BARRIER_WHITE = range(10)
BASE_RGB = np.array([
    (62, 62, 66),      # asphalt: dark grey, fine grain
    (188, 174, 150),   # paving: beige tiles with darker joints
    (74, 128, 50),     # grass: green, coarse noise (terrain AND vegetation)
    (150, 150, 146),   # concrete: light grey with horizontal joints (buildings)
    (42, 72, 172),     # blue paint (car AND truck)
    (176, 36, 36),     # bus red, white band
    (226, 186, 32),    # construction yellow, black diagonal stripes
    (122, 52, 142),    # pedestrian purple
    (246, 116, 22),    # cone orange, white band
    (232, 232, 228),   # barrier white, red stripes
], dtype=np.float32)
# Mean and spread of LiDAR intensity (nuScenes raw units, 0..255). Appearance twins differ by a
# shift of the order of the spreads (asphalt 8 vs paving 14, bus 95 vs construction 125; notebook
# 00 §7 measures the separation after the incidence scaling below, which widens a bright paint's
# spread): the distributions overlap, so one point can be ambiguous, and nothing but the intensity in the LiDAR tells the twins apart. Geometry twins
# share their material, so their intensity too. Classes that are not twins are kept apart in the
# LiDAR as well (grass 32 vs paving 14; long vehicles 95-125 vs blue paint 50): otherwise the LiDAR
# alone confuses a car with a bus, or grass with paving, and the geometry twins' ceiling measures
# that confusion instead of the relief (measured: supervised car IoU 0.04, 80 % of car points
# called bus, with bus at 48 and grass at 18).
INTENSITY = np.array([
    (8, 3), (14, 3), (32, 5), (35, 8), (50, 10), (95, 9), (125, 9), (25, 6), (150, 20), (200, 15),
], dtype=np.float32)
# m: the truck's ribbed panels (LiDAR only), 4-5 voxels deep. At 0.30 m the supervised LiDAR-only
# ceiling told car from truck at 0.894 (mean of 5 seeds; the bench asks >= 0.90); at 0.45 m it
# told them apart at 0.934 under the same 60-epoch recipe (0.942 under today's shorter one,
# experiments/results/bench.md). The cameras never see the
# ribs, so the twins stay identical there.
RIB_DEPTH, RIB_PERIOD = 0.45, 1.2
SHRUB_HEIGHT, SHRUB_CELL = 0.30, 0.45    # m: relief of planted vegetation beds (LiDAR only)
SKY_TOP, SKY_HORIZON = np.array((96, 142, 212), np.float32), np.array((196, 214, 232), np.float32)
TERRAIN_TOP = 0.25  # m: grass is a raised slab beyond the kerb (the ground is drawn by _hit_ground)
SUN = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])


@dataclass
class Primitive:
    """One solid: ``kind`` 'box' (centre, size (3,) metres, yaw rad about z), 'sphere' (radius =
    size[0]) or 'cylinder' (vertical, radius = size[0], height = size[2], centre at mid-height)."""
    kind: str
    center: np.ndarray
    size: np.ndarray
    yaw: float
    fine_label: int
    material: int
    attribute: str = ""  # the nuScenes attribute of a thing (vehicle.parked, pedestrian.standing, ...)

    @property
    def bounding_radius(self) -> float:
        if self.kind == "box":
            return float(np.linalg.norm(self.size) / 2)
        if self.kind == "sphere":
            return float(self.size[0])
        return float(np.hypot(self.size[0], self.size[2] / 2))


@dataclass
class World:
    """A straight street: road |y| <= road_half, sidewalks up to ``sidewalk_edge``, then a raised
    grass strip (terrain, with planted vegetation beds ``beds``: (x0, x1, side) metres, side +1 left /
    -1 right) with barriers and buildings; vehicles, pedestrians and cones."""
    road_half: float
    sidewalk_edge: float
    primitives: list = field(default_factory=list)
    beds: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Building a world
# --------------------------------------------------------------------------------------------------

def _free(occupied: list, x0: float, x1: float, lane: str) -> bool:
    return all(lane != l or x1 < a or x0 > b for (a, b, l) in occupied)


def build_world(rng: np.random.Generator, x_min: float, x_max: float) -> World:
    """Place every object of one scene between ``x_min`` and ``x_max`` (metres along the road).

    The ego lane (y in [-road_half, 0]) is kept clear so the ego vehicle drives through it.
    """
    road_half = float(rng.uniform(3.5, 5.5))
    sidewalk_edge = road_half + float(rng.uniform(2.5, 4.0))
    w = World(road_half=road_half, sidewalk_edge=sidewalk_edge)
    P = w.primitives
    terrain_top = TERRAIN_TOP
    for side in (-1, 1):
        # buildings (manmade): a row of tall concrete boxes
        x = x_min + rng.uniform(0, 6)
        while x < x_max:
            length, depth, height = rng.uniform(6, 16), rng.uniform(6, 12), rng.uniform(4, 13)
            y0 = sidewalk_edge + rng.uniform(7, 14)
            P.append(Primitive("box", np.array([x + length / 2, side * (y0 + depth / 2), terrain_top + height / 2]),
                               np.array([length, depth, height]), 0.0, FINE["static.manmade"], CONCRETE))
            x += length + rng.uniform(2, 7)
        # barriers: low white walls with red stripes
        x = x_min + rng.uniform(0, 5)
        while x < x_max:
            length = rng.uniform(2, 4)
            if rng.random() < 0.5:
                y = side * (sidewalk_edge + 0.5)
                P.append(Primitive("box", np.array([x + length / 2, y, terrain_top + 0.5]),
                                   np.array([length, 0.4, 1.0]), 0.0, FINE["movable_object.barrier"], BARRIER_WHITE))
            x += length + rng.uniform(1, 6)
        # planted vegetation beds: stretches of the same grass strip, shrubby only for the LiDAR
        x = x_min + rng.uniform(-4, 4)
        while x < x_max:
            length = rng.uniform(4, 12)
            if rng.random() < 0.5:
                w.beds.append((x, x + length, side))
            x += length
        # pedestrians on the sidewalk
        for _ in range(int(rng.integers(4, 9))):
            x, y = rng.uniform(x_min, x_max), side * rng.uniform(road_half + 0.6, sidewalk_edge - 0.5)
            h = rng.uniform(1.55, 1.9)
            P.append(Primitive("cylinder", np.array([x, y, h / 2]), np.array([0.28, 0.28, h]), 0.0,
                               FINE["human.pedestrian.adult"], PURPLE, "pedestrian.standing"))

    # vehicles: parked on the far kerb and driving in the oncoming lane (both y > 0); the ego lane
    # (y < 0) stays clear so the ego never drives through an object
    # (fine label, material); cars and trucks are drawn alike, only the ribs differ. Every kind comes
    # equally often in every scene, so a one-scene split still holds all four.
    kinds = [(FINE["vehicle.car"], BLUE_PAINT), (FINE["vehicle.truck"], BLUE_PAINT),
             (FINE["vehicle.bus.rigid"], BUS_RED), (FINE["vehicle.construction"], CV_YELLOW)]
    n_vehicles = 8  # two of each; more would hide the kerb lane behind the oncoming one
    order = rng.permutation(np.arange(n_vehicles) % len(kinds))
    occupied = []
    lanes = ("oncoming", "kerb_left")
    for k in order:
        lane = str(rng.choice(lanes))
        label, mat = kinds[int(k)]
        if mat == BLUE_PAINT:  # from a compact van to a small lorry, the same for car and truck
            s = rng.uniform()
            length, width, height = 4.5 + 3.0 * s, 1.9 + 0.6 * s, 1.6 + 1.6 * s
        else:  # bus and construction vehicle: the same long box
            length, width, height = 10.5, 2.8, 3.3
        y = road_half / 2 if lane == "oncoming" else road_half - width / 2 - 0.2
        for _try in range(10):
            x = rng.uniform(x_min + 15, x_max - 15 - length)  # within good LiDAR range of the ego path
            if _free(occupied, x - 1, x + length + 1, lane):
                occupied.append((x, x + length, lane))
                yaw = float(rng.normal(0, 0.04) + (np.pi if lane == "oncoming" and rng.random() < 0.8 else 0))
                # the world is static: a kerb-lane vehicle is parked, an oncoming-lane one stopped
                attribute = "vehicle.stopped" if lane == "oncoming" else "vehicle.parked"
                P.append(Primitive("box", np.array([x + length / 2, y, height / 2]), np.array([length, width, height]),
                                   yaw, label, mat, attribute))
                break
    # traffic cones: groups of five along the ego lane's kerb, within 20 m of the ego's path (a cone
    # is small: further away a scan holds only a handful of its points)
    for _ in range(int(rng.integers(4, 7))):
        x0 = rng.uniform(x_min + 20, x_max - 26)
        if not _free(occupied, x0 - 1, x0 + 6, "kerb_right"):
            continue
        occupied.append((x0, x0 + 6, "kerb_right"))
        for k in range(5):
            P.append(Primitive("cylinder", np.array([x0 + 1.3 * k, -(road_half - 0.4), 0.4]),
                               np.array([0.2, 0.2, 0.8]), 0.0, FINE["movable_object.trafficcone"], CONE_ORANGE))
    return w


# --------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------

def _rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _hit_box(p: Primitive, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Slab test in the box frame: ray distance t (N,) to the box, inf on a miss.

    One axis at a time on (N,) columns: row-wise min/max over (N, 3) arrays made this test most of
    the generator's time. ``fmin``/``fmax`` ignore the NaN of a ray parallel to a slab that starts
    on its plane (0 * inf)."""
    if p.yaw == 0.0:  # buildings and barriers: the box frame is the road frame shifted
        ol, dl = o - p.center, d
    else:
        R = _rotz(p.yaw)
        ol = (o - p.center) @ R  # world -> box frame is R^T x, i.e. x @ R for row vectors
        dl = d @ R
    half = p.size / 2
    t_near = t_far = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / dl[:, k]
            t1, t2 = (-half[k] - ol[k]) * inv, (half[k] - ol[k]) * inv
            near, far = np.fmin(t1, t2), np.fmax(t1, t2)
            t_near = near if t_near is None else np.fmax(t_near, near)
            t_far = far if t_far is None else np.fmin(t_far, far)
    return np.where((t_near <= t_far) & (t_near > 1e-4), t_near, np.inf)


def _hit_sphere(p: Primitive, o, d) -> np.ndarray:
    oc = o - p.center
    r = p.size[0]
    b = d @ oc
    disc = b * b - (oc @ oc - r * r)  # d is unit length
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc >= 0) & (t > 1e-4), t, np.inf)


def _hit_cylinder(p: Primitive, o, d) -> np.ndarray:
    r, h = p.size[0], p.size[2]
    oc = o - p.center
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = d[:, 0] * oc[0] + d[:, 1] * oc[1]
    disc = b * b - a * (oc[0] ** 2 + oc[1] ** 2 - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
        t_top = (h / 2 - oc[2]) / d[:, 2]
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > 1e-4) & (np.abs(oc[2] + t_side * d[:, 2]) <= h / 2)
    xy = oc[None, :2] + t_top[:, None] * d[:, :2]
    top_ok = (d[:, 2] < 0) & (t_top > 1e-4) & ((xy ** 2).sum(1) <= r * r)
    return np.minimum(np.where(side_ok, t_side, np.inf), np.where(top_ok, t_top, np.inf))


_HIT = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}
GROUND = -1   # primitive index of the ground (road, sidewalk, raised terrain and its kerb)
NO_HIT = -2


def _hit_ground(world: World, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The ground is z = 0 for |y| <= sidewalk_edge and a raised grass slab z = TERRAIN_TOP beyond,
    with a vertical kerb face between them. Returns t (N,), inf on a miss."""
    e, h = world.sidewalk_edge, TERRAIN_TOP
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low = -o[2] / d[:, 2]
        t_high = (h - o[2]) / d[:, 2]
        t_kerb = np.minimum(np.where(d[:, 1] > 0, (e - o[1]) / d[:, 1], np.inf),
                            np.where(d[:, 1] < 0, (-e - o[1]) / d[:, 1], np.inf))
    low_ok = (t_low > 1e-4) & (np.abs(o[1] + t_low * d[:, 1]) <= e)
    high_ok = (t_high > 1e-4) & (np.abs(o[1] + t_high * d[:, 1]) > e)
    z_kerb = o[2] + t_kerb * d[:, 2]
    kerb_ok = np.isfinite(t_kerb) & (t_kerb > 1e-4) & (z_kerb >= 0) & (z_kerb <= h)
    t = np.where(low_ok, t_low, np.inf)
    t = np.minimum(t, np.where(high_ok, t_high, np.inf))
    return np.minimum(t, np.where(kerb_ok, t_kerb, np.inf))


def cast_rays(world: World, origin: np.ndarray, dirs: np.ndarray, candidates=None, max_range: float = 120.0):
    """Nearest hit of rays from one ``origin`` (3,) along unit ``dirs`` (N,3), road frame, metres.

    ``candidates`` is an optional list of (primitive index, ray subset index array) to restrict the
    tests (camera culling). Returns ``t`` (N,) float64 metres (inf = nothing within max_range) and
    ``prim`` (N,) int (index into world.primitives, GROUND, or NO_HIT).
    """
    t = _hit_ground(world, origin, dirs)
    prim = np.full(len(dirs), GROUND)
    if candidates is None:
        candidates = [(i, None) for i in range(len(world.primitives))]
    for i, idx in candidates:
        p = world.primitives[i]
        if idx is None:
            ti = _HIT[p.kind](p, origin, dirs)
            closer = ti < t
            t[closer], prim[closer] = ti[closer], i
        else:
            ti = _HIT[p.kind](p, origin, dirs[idx])
            closer = ti < t[idx]
            sel = idx[closer]
            t[sel], prim[sel] = ti[closer], i
    miss = ~(t <= max_range)
    t[miss], prim[miss] = np.inf, NO_HIT
    return t, prim


def surface_normals(world: World, prim: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Outward unit normals (N,3) at hit ``points`` (N,3) of primitives ``prim`` (N,)."""
    n = np.zeros_like(points)
    n[:, 2] = 1.0  # ground tops
    g = prim == GROUND
    kerb = g & (points[:, 2] > 1e-3) & (points[:, 2] < TERRAIN_TOP - 1e-3)
    n[kerb] = 0
    n[kerb, 1] = -np.sign(points[kerb, 1])
    for i in np.unique(prim[prim >= 0]):
        p, sel = world.primitives[i], prim == i
        rel = points[sel] - p.center
        if p.kind == "box":
            R = _rotz(p.yaw)
            local = rel @ R
            ratio = np.abs(local) / (p.size / 2)
            axis = ratio.argmax(1)
            nl = np.zeros_like(local)
            nl[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
            n[sel] = nl @ R.T
        elif p.kind == "sphere":
            n[sel] = rel / p.size[0]
        else:
            side = np.zeros_like(rel)
            side[:, :2] = rel[:, :2] / p.size[0]
            top = rel[:, 2] > p.size[2] / 2 - 1e-3
            side[top] = (0.0, 0.0, 1.0)
            n[sel] = side
    return n


def ground_label(world: World, xy: np.ndarray) -> np.ndarray:
    """Fine label of the ground at road-frame ``xy`` (N,2): driveable surface, sidewalk, terrain, or
    vegetation where the grass strip lies in one of ``world.beds``."""
    ay = np.abs(xy[:, 1])
    labels = np.where(ay <= world.road_half, FINE["flat.driveable_surface"],
                      np.where(ay <= world.sidewalk_edge, FINE["flat.sidewalk"], FINE["flat.terrain"]))
    grass = labels == FINE["flat.terrain"]
    for x0, x1, side in world.beds:
        in_bed = grass & (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (np.sign(xy[:, 1]) == side)
        labels[in_bed] = FINE["static.vegetation"]
    return labels


def surface_properties(world: World, prim: np.ndarray, points: np.ndarray):
    """Fine label (N,) int and material (N,) int of hits ``prim`` at road-frame ``points`` (N,3)."""
    labels = np.zeros(len(prim), np.int64)
    materials = np.zeros(len(prim), np.int64)
    table_l = np.array([p.fine_label for p in world.primitives] + [0], np.int64)
    table_m = np.array([p.material for p in world.primitives] + [0], np.int64)
    obj = prim >= 0
    labels[obj], materials[obj] = table_l[prim[obj]], table_m[prim[obj]]
    g = prim == GROUND
    labels[g] = ground_label(world, points[g, :2])
    materials[g] = np.select([labels[g] == FINE["flat.driveable_surface"], labels[g] == FINE["flat.sidewalk"]],
                             [ASPHALT, PAVING], GRASS)
    return labels, materials


def _value_noise(xy: np.ndarray, cell: float) -> np.ndarray:
    """Smooth pseudo-random field in [0,1) at points ``xy`` (N,2) metres: hashed values on a grid of
    ``cell`` metres, bilinearly interpolated (so shrubs are bumps, not steps)."""
    g = xy / cell
    i = np.floor(g)
    f = g - i
    corner = lambda dx, dy: _hash01(np.stack([i[:, 0] + dx, i[:, 1] + dy, np.full(len(i), 7.0)], 1))
    top = corner(0, 0) * (1 - f[:, 0]) + corner(1, 0) * f[:, 0]
    bottom = corner(0, 1) * (1 - f[:, 0]) + corner(1, 1) * f[:, 0]
    return top * (1 - f[:, 1]) + bottom * f[:, 1]


def lidar_relief(world: World, prim: np.ndarray, labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Outward relief (N,) metres of hits at road-frame ``points`` (N,3): the structure that tells
    geometry-only twins apart, seen by the LiDAR and not rendered by the cameras.

    * truck panels are ribbed: +RIB_DEPTH on alternate RIB_PERIOD/2 bands along the box's long axis
      (along its width on the front and back faces);
    * vegetation beds are shrubby: SHRUB_HEIGHT times a smooth noise field;
    * everything else: 0.
    """
    relief = np.zeros(len(points))
    veg = labels == FINE["static.vegetation"]
    relief[veg] = SHRUB_HEIGHT * _value_noise(points[veg, :2], SHRUB_CELL)
    for i in np.unique(prim[(prim >= 0) & (labels == FINE["vehicle.truck"])]):
        p, sel = world.primitives[i], prim == i
        local = (points[sel] - p.center) @ _rotz(p.yaw)
        end_face = np.abs(local[:, 0]) > p.size[0] / 2 - 1e-3
        along = np.where(end_face, local[:, 1], local[:, 0])
        relief[sel] = RIB_DEPTH * (np.mod(along, RIB_PERIOD) < RIB_PERIOD / 2)
    return relief


# --------------------------------------------------------------------------------------------------
# Sensors
# --------------------------------------------------------------------------------------------------

def _hash01(cells: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0,1) per integer cell (N,3)."""
    v = np.sin(cells[:, 0] * 12.9898 + cells[:, 1] * 78.233 + cells[:, 2] * 37.719) * 43758.5453
    return v - np.floor(v)


def texture_rgb(materials: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Colour (N,3) float in 0..255 of surfaces of ``materials`` at road-frame ``points`` (N,3)."""
    rgb = BASE_RGB[materials].copy()
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    grain = _hash01(np.floor(points / 0.08)) - 0.5
    coarse = _hash01(np.floor(points / 0.25) + 17) - 0.5
    m = materials
    rgb += (m == ASPHALT)[:, None] * grain[:, None] * 18
    joints = (np.mod(x, 0.6) < 0.05) | (np.mod(y, 0.6) < 0.05)
    rgb[(m == PAVING) & joints] *= 0.72
    rgb += (m == PAVING)[:, None] * grain[:, None] * 10
    rgb += (m == GRASS)[:, None] * coarse[:, None] * np.array([30, 50, 20])
    rgb[(m == CONCRETE) & (np.mod(z, 0.5) < 0.05)] *= 0.75
    rgb[(m == BUS_RED) & (np.abs(z - 1.85) < 0.22)] = (226, 226, 222)
    rgb[(m == CV_YELLOW) & (np.mod(x + y + z, 0.9) < 0.3)] = (32, 30, 28)
    rgb[(m == CONE_ORANGE) & (np.abs(z - 0.42) < 0.07)] = (240, 240, 240)
    rgb[(m == BARRIER_WHITE) & (np.mod(x, 1.0) < 0.5) & (z > TERRAIN_TOP + 0.5)] = (200, 40, 36)
    shade = 0.62 + 0.38 * np.clip(normals @ SUN, 0, 1)
    return rgb * shade[:, None]


LIDAR_BEAMS, LIDAR_AZIMUTHS, LIDAR_RANGE = 32, 540, 55.0  # HDL-32E-like; metres


def lidar_directions(n_beams: int = LIDAR_BEAMS, n_azimuth: int = LIDAR_AZIMUTHS):
    """Unit ray directions (n_beams * n_azimuth, 3) in the LiDAR frame (beams from -30.67 to +10.67
    degrees) and each ray's ring index (n_beams * n_azimuth,)."""
    elev = np.deg2rad(np.linspace(-30.67, 10.67, n_beams))
    az = np.linspace(-np.pi, np.pi, n_azimuth, endpoint=False)
    el, a = np.meshgrid(elev, az, indexing="ij")
    d_lidar = np.stack([np.cos(el) * np.cos(a), np.cos(el) * np.sin(a), np.sin(el)], -1).reshape(-1, 3)
    return d_lidar, np.repeat(np.arange(n_beams), n_azimuth)


def lidar_scan(world: World, origin: np.ndarray, R_world_lidar: np.ndarray, rng: np.random.Generator,
               n_beams: int = LIDAR_BEAMS, n_azimuth: int = LIDAR_AZIMUTHS, max_range: float = LIDAR_RANGE,
               with_primitives: bool = False):
    """Simulate one spinning-LiDAR sweep (HDL-32E-like beams from -30.67 to +10.67 degrees).

    Returns points (N,5) float32 in the LiDAR frame (x, y, z metres, intensity 0..255, ring index)
    and fine labels (N,) uint8 (nuScenes 32-class indices); with ``with_primitives`` also the index
    (N,) int64 into ``world.primitives`` of the object each point hit (GROUND for the ground, NO_HIT
    for a spurious return), which the instance labels are made from. The random draws are the same
    either way, so the scan's bytes do not depend on it.
    """
    d_lidar, ring = lidar_directions(n_beams, n_azimuth)
    d_world = d_lidar @ R_world_lidar.T
    t, prim = cast_rays(world, origin, d_world, max_range=max_range)
    keep = np.isfinite(t) & (t > 1.0)
    t, prim, d_lidar, ring, d_world = t[keep], prim[keep], d_lidar[keep], ring[keep], d_world[keep]
    hits = origin + d_world * t[:, None]
    labels, materials = surface_properties(world, prim, hits)
    normal = surface_normals(world, prim, hits)
    r = t + rng.normal(0, 0.015, len(t))  # range noise, metres
    # relief moves the return along the outward normal (world -> LiDAR frame: v @ R for row vectors)
    relief = lidar_relief(world, prim, labels, hits)
    xyz = d_lidar * r[:, None] + (normal * relief[:, None]) @ R_world_lidar
    mean, std = INTENSITY[materials, 0], INTENSITY[materials, 1]
    intensity = np.clip(rng.normal(mean, std) * (0.5 + 0.5 * np.abs((d_world * normal).sum(1))), 0, 255)
    # a few spurious returns labelled 'noise' (class 0 -> ignored), as in real scans
    spurious = rng.random(len(t)) < 0.002
    xyz[spurious] *= rng.uniform(0.2, 0.9, (spurious.sum(), 1))
    labels[spurious] = FINE["noise"]
    pts = np.concatenate([xyz, intensity[:, None], ring[:, None]], 1).astype(np.float32)
    if with_primitives:
        return pts, labels.astype(np.uint8), np.where(spurious, NO_HIT, prim)
    return pts, labels.astype(np.uint8)


def visible_fraction(world: World, index: int, origin: np.ndarray, R_world_lidar: np.ndarray,
                     max_range: float = LIDAR_RANGE) -> float:
    """The fraction (0..1) of the LiDAR rays that would hit primitive ``index`` if it stood alone which
    do hit it in the scene (the rest are occluded by something nearer); 0 if no ray reaches it."""
    d_lidar, _ = lidar_directions()
    d_world = d_lidar @ R_world_lidar.T
    p = world.primitives[index]
    alone = _HIT[p.kind](p, origin, d_world)
    alone = (alone <= max_range) & (alone > 1.0)
    if not alone.any():
        return 0.0
    _, prim = cast_rays(world, origin, d_world[alone], max_range=max_range)
    return float((prim == index).mean())


def render_camera(world: World, origin: np.ndarray, R_world_cam: np.ndarray, K: np.ndarray, width: int, height: int):
    """Render an RGB image (H,W,3) uint8 through a pinhole camera (x right, y down, z forward).

    Pixel (u, v) is the ray through the pixel *centre* at integer coordinates, the convention of
    ``view_points`` + rounding, so a projected LiDAR point lands on the pixel that shows its surface.
    Only primitives whose bounding sphere reaches a pixel rectangle are tested there (culling).
    """
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    uv1 = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1).astype(np.float64)
    d_cam = uv1 @ np.linalg.inv(K).T
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    d_world = d_cam @ R_world_cam.T
    candidates = []
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    all_rays = np.arange(width * height)
    for i, p in enumerate(world.primitives):
        # Cull with the primitive's bounding box: its 8 corners projected give a pixel rectangle.
        ext = p.size / 2 if p.kind != "sphere" else np.full(3, p.size[0])
        corners = p.center + (signs * ext) @ _rotz(p.yaw).T
        c_cam = (corners - origin) @ R_world_cam
        if (c_cam[:, 2] <= 0.05).all() or np.linalg.norm(p.center - origin) > 150:
            continue  # behind the camera or beyond the haze
        if (c_cam[:, 2] <= 0.05).any():
            candidates.append((i, all_rays))  # straddles the image plane: test every pixel
            continue
        uv = c_cam @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        u0, v0 = np.floor(uv.min(0)).astype(int) - 1
        u1, v1 = np.ceil(uv.max(0)).astype(int) + 1
        u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, width - 1), min(v1, height - 1)
        if u0 > u1 or v0 > v1:
            continue
        rows = np.arange(v0, v1 + 1)[:, None] * width + np.arange(u0, u1 + 1)[None, :]
        candidates.append((i, rows.ravel()))
    t, prim = cast_rays(world, origin, d_world, candidates=candidates, max_range=150.0)
    hit = np.isfinite(t)
    pts = origin + d_world[hit] * t[hit, None]
    _, materials = surface_properties(world, prim[hit], pts)
    rgb = np.empty((len(t), 3), np.float32)
    rgb[hit] = texture_rgb(materials, pts, surface_normals(world, prim[hit], pts))
    # distance haze, then sky
    haze = np.clip(t[hit] / 150.0, 0, 1)[:, None] ** 1.5
    rgb[hit] = rgb[hit] * (1 - haze) + SKY_HORIZON * haze
    up = np.clip(d_world[~hit, 2], 0, 1)[:, None] ** 0.6
    rgb[~hit] = SKY_HORIZON * (1 - up) + SKY_TOP * up
    return np.clip(rgb, 0, 255).astype(np.uint8).reshape(height, width, 3)

"""The twins' evidence in notebook 00 §7 (``cmcr_lite.analysis.twins``; the figure in ``cmcr_lite.viz``):
intensity separability, the panel profile and rib bands that show a truck's ribs, and a twins figure
that clips nothing into its last bin."""
from math import erf, sqrt

import numpy as np
import pytest

from cmcr_lite.analysis.twins import largest_object, panel_profile, rib_bands, separability


def test_separability_of_equal_variance_gaussians_is_phi_of_half_d_prime():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, 200_000), rng.normal(2.0, 1.0, 200_000)
    s = separability(a, b)
    phi_1 = 0.5 * (1 + erf(1 / sqrt(2)))  # Φ(d′/2) at d′ = 2
    assert s["d_prime"] == pytest.approx(2.0, abs=0.02)
    assert s["gaussian_accuracy"] == pytest.approx(phi_1, abs=0.005)
    # the best threshold on the samples finds the same accuracy: the control agrees with the formula
    assert s["best_accuracy"] == pytest.approx(phi_1, abs=0.005)


def test_separability_is_symmetric_and_chance_for_one_distribution():
    rng = np.random.default_rng(1)
    a, b = rng.normal(5, 2, 50_000), rng.normal(5, 2, 50_000)
    assert separability(a, b) == pytest.approx(separability(b, a))
    assert separability(a, b)["best_accuracy"] < 0.51
    assert separability([0.0, 1.0], [10.0, 11.0])["best_accuracy"] == 1.0


def _box_side(length, height, yaw, centre, rib_depth, period=1.2, noise=0.015, seed=0):
    """Points on the long side of a box that faces a sensor at the origin, with ribs of ``rib_depth``
    (outward, on alternate half periods along the side) and range noise; plus a few points of the
    box's end face. Returns (n, 3) sensor-frame points."""
    rng = np.random.default_rng(seed)
    u, z = rng.uniform(-length / 2, length / 2, 4000), rng.uniform(-1.5, -1.5 + height, 4000)
    out = rib_depth * (np.mod(u + length / 2, period) < period / 2) + rng.normal(0, noise, len(u))
    side = np.c_[u, -1.0 + out]                       # the side at v = -1 of a box 2 m wide, facing v < 0
    w = rng.uniform(-1.0, 1.0, 300)                   # an end face, at u = length / 2
    end = np.c_[np.full_like(w, length / 2), w]
    xy = np.r_[side, end]
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    xy = xy @ rot.T + centre
    return np.c_[xy, np.r_[z, rng.uniform(-1.5, 0.0, len(w))]]


@pytest.mark.parametrize("yaw", [0.0, 0.4, 2.0])
def test_panel_profile_measures_the_ribs_of_a_ribbed_side(yaw):
    # centre chosen so that the side at v = -1 (before rotation) faces the sensor at the origin
    centre = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]) @ np.array([0.0, 5.0])
    ribbed = panel_profile(_box_side(6.0, 2.0, yaw, centre, rib_depth=0.45))
    flat = panel_profile(_box_side(6.0, 2.0, yaw, centre, rib_depth=0.0, seed=1))
    deep = ribbed["depth"] > 0.2
    assert 0.4 < deep.mean() < 0.6                                   # half the side is a groove
    assert np.median(ribbed["depth"][deep]) - np.median(ribbed["depth"][~deep]) == pytest.approx(0.45, abs=0.03)
    assert np.percentile(flat["depth"], 99) < 0.1                    # a flat side stays within the noise
    assert ribbed["along"].max() == pytest.approx(6.0 - 2 * 0.3, abs=0.1)  # the end face and margins left out
    assert 4.0 < ribbed["range"] < 5.0                               # its points: the side at 4 m, the end face
    bands, none = rib_bands(ribbed), rib_bands(flat)
    assert bands["step"] == pytest.approx(0.45, abs=0.03) and bands["period"] == pytest.approx(1.2, abs=0.1)
    assert bands["deep"] == pytest.approx(deep.mean()) and bands["points"] == len(deep)
    assert none["deep"] == 0.0 and none["step"] == 0.0 and np.isnan(none["period"])  # a flat side has no groove


def test_largest_object_keeps_the_biggest_group():
    rng = np.random.default_rng(2)
    big, small, other = rng.normal(0, 0.3, (500, 3)), rng.normal(10, 0.3, (100, 3)), rng.normal(-10, 0.3, (800, 3))
    points = np.r_[big, small, other]
    labels = np.r_[np.full(600, 4), np.full(800, 7)]
    obj = largest_object(points, labels, 4)
    assert len(obj) == 500 and np.allclose(np.sort(obj[:, 0]), np.sort(big[:, 0]))
    assert largest_object(points, labels, 9).shape == (0, 3)


def test_twins_figure_clips_nothing_into_its_last_bin():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.classes import class_index
    from cmcr_lite.viz import twins_figure

    rng = np.random.default_rng(3)
    stats = {}
    for name in ("car", "truck", "terrain", "vegetation", "driveable_surface", "sidewalk", "bus", "construction_vehicle"):
        n = 2000
        stats[class_index(name)] = {"rgb": rng.uniform(0, 255, (n, 3)),
                                    "roughness": np.abs(rng.normal(0.01, 0.01, n)),
                                    "intensity": rng.normal(80, 10, n)}
    truck = stats[class_index("truck")]
    truck["roughness"][:300] = 0.3                     # beyond the old 0.15 m clip, within the drawn range
    truck["roughness"][300:310] = 0.9                  # beyond rough_max: not drawn, and said so
    stats[class_index("construction_vehicle")]["intensity"][:100] = 156.0   # beyond the old 120 clip
    fig = twins_figure(stats, rough_max=0.5)
    axes = np.array(fig.axes).reshape(4, 3)
    rough_ax, intensity_ax = axes[0, 1], axes[3, 2]
    assert rough_ax.get_xlim()[1] >= 0.3 and intensity_ax.get_xlim()[1] >= 156
    labels = [t.get_text() for t in rough_ax.get_legend().get_texts()]
    assert any("truck" in t and "10 of 2000 beyond 0.5" in t for t in labels), labels
    assert any(f"{100 * np.mean(truck['roughness'] >= 0.05):.1f} % ≥ 5 cm" in t for t in labels), labels
    # every drawn histogram integrates to the share of points drawn: no pile-up in a clipped last bin
    for ax in (rough_ax, intensity_ax):
        heights = np.array([p.get_height() for p in ax.patches])
        widths = np.array([p.get_width() for p in ax.patches])
        assert (heights * widths).sum() == pytest.approx(2.0, rel=1e-6)   # two densities of area 1
    plt.close(fig)

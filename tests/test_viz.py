"""Numbers behind the notebooks' figures (cmcr_lite.viz), against closed-form values."""
import numpy as np

from cmcr_lite.viz import local_roughness


def test_roughness_of_a_plane_is_zero_in_any_orientation():
    rng = np.random.default_rng(0)
    uv = rng.uniform(-5, 5, (2000, 2))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random rotation (or reflection): the plane is tilted
    points = np.c_[uv, np.zeros(len(uv))] @ q.T + np.array([3.0, -2.0, 1.0])
    assert local_roughness(points).max() < 1e-6


def test_roughness_of_a_noisy_plane_is_the_noise_spread():
    """Gaussian offsets of std sigma along the normal: the smallest principal spread of a 12-point
    neighbourhood is about sigma, biased low because the best plane absorbs some of the noise (the
    least-squares residual of a plane through k points keeps k - 3 of k degrees of freedom)."""
    rng = np.random.default_rng(1)
    sigma = 0.05
    uv = rng.uniform(-10, 10, (20000, 2))
    points = np.c_[uv, rng.normal(0, sigma, len(uv))]
    rough = np.median(local_roughness(points, k=12))
    assert 0.7 * sigma < rough < sigma, rough


def test_save_figure_writes_the_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmcr_lite.viz import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "line.png")
    assert (tmp_path / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

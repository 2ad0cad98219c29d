"""benchmarks/gpu_step.py runs end to end at CPU smoke size (the GPU numbers come from a GPU box)."""
import importlib.util
import math

from cmcr_lite.paths import REPO_ROOT


def test_gpu_step_benchmark_runs_small_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_step", REPO_ROOT / "benchmarks" / "gpu_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu_step.md"
    steps = bench.main(["--small", "--steps", "1", "--batch-size", "2", "--workers", "0", "--points", "3000",
                        "--device", "cpu", "--output", str(out)])
    assert [r["method"] for r in steps] == ["ppkt", "slidr", "cmcr"]
    assert all(r["steps"] == 1 and r["step_s"] > 0 and math.isfinite(r["data_s"]) for r in steps)
    text = out.read_text()
    assert "| cmcr |" in text and "per pixel, chunked" in text and "trunk resolution" in text


def test_synthetic_scans_pair_points_inside_the_images(tmp_path):
    from cmcr_lite.data.dense_scans import NuScenesDensityScans

    kf = NuScenesDensityScans(1, tmp_path, points=34_000)[0]
    assert 30_000 <= len(kf.points) <= 34_000 and kf.images.shape == (6, 900, 1600, 3)
    cam, row, col = kf.pair_pixels.T
    assert cam.min() == 0 and cam.max() == 5 and (row >= 0).all() and (row < 900).all() and (col < 1600).all()
    assert 0.2 < len(kf.pair_points) / len(kf.points) < 1.0  # six 70-degree cameras see most of the ring


def test_pretrain_step_profile_runs_and_its_parts_add_up(tmp_path):
    """benchmarks/pretrain_step.py (the CPU profile of a lite step) at one step per row."""
    spec = importlib.util.spec_from_file_location("pretrain_step", REPO_ROOT / "benchmarks" / "pretrain_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "pretrain_step.md"
    rows = bench.main(["--steps", "1", "--methods", "ppkt", "occupancy only", "--out", str(out)])
    for r in rows.values():
        # data, the whole forward, backward and the optimizer are consecutive stretches of one step; the
        # forward's split (teacher / 3D / the rest) is timed apart, so under load it need not add up
        assert all(r[k] >= 0 for k in bench.PARTS) and r["step"] > 0
        assert r["data"] + r["backward"] + r["optimizer"] <= r["step"]
    assert "| occupancy only |" in out.read_text()

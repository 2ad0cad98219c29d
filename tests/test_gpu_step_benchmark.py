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
    spec = importlib.util.spec_from_file_location("gpu_step", REPO_ROOT / "benchmarks" / "gpu_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    kf = bench.SyntheticScans(1, tmp_path, points=34_000)[0]
    assert 30_000 <= len(kf.points) <= 34_000 and kf.images.shape == (6, 900, 1600, 3)
    cam, row, col = kf.pair_pixels.T
    assert cam.min() == 0 and cam.max() == 5 and (row >= 0).all() and (row < 900).all() and (col < 1600).all()
    assert 0.2 < len(kf.pair_points) / len(kf.points) < 1.0  # six 70-degree cameras see most of the ring

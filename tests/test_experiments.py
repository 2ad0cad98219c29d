"""Summaries of linear-probe confusion matrices: group IoU and twin separation by hand."""
import math

import numpy as np
import pytest

from cmcr_lite.classes import class_index
from experiments.lite_runs import aggregate, markdown_table
from cmcr_lite.metrics import summarize_confusion, twin_separation


def _conf():
    c = np.zeros((17, 17), np.int64)
    car, truck, road, walk = (class_index(n) for n in ("car", "truck", "driveable_surface", "sidewalk"))
    c[car, car], c[car, truck], c[truck, truck], c[truck, car] = 90, 10, 30, 70
    c[road, road], c[road, walk], c[walk, walk] = 80, 20, 100
    return c


def test_twin_separation_by_hand():
    c = _conf()
    assert twin_separation(c, "car", "truck") == 0.5 * (90 / 100 + 30 / 100)
    assert twin_separation(c, "driveable_surface", "sidewalk") == 0.5 * (80 / 100 + 100 / 100)
    assert math.isnan(twin_separation(c, "bus", "construction_vehicle"))  # absent twins


def test_summary_groups_by_hand():
    s = summarize_confusion(_conf())
    car_iou, truck_iou = 90 / (90 + 10 + 70), 30 / (30 + 70 + 10)
    road_iou, walk_iou = 80 / 100, 100 / 120
    assert np.isclose(s["per_class"]["car"], car_iou) and np.isclose(s["per_class"]["sidewalk"], walk_iou)
    assert np.isclose(s["geometry-only"], (car_iou + truck_iou) / 2)
    assert np.isclose(s["appearance-only"], (road_iou + walk_iou) / 2)
    assert np.isclose(s["miou"], (car_iou + truck_iou + road_iou + walk_iou) / 4)
    assert np.isclose(s["geometry twins told apart"], 0.6) and np.isclose(s["appearance twins told apart"], 0.9)
    agg = aggregate({"a": [s, s]})
    assert agg["a"]["miou"] == (s["miou"], 0.0)
    assert "| a | " in markdown_table(agg, [0, 1])


def test_table_marks_metrics_a_run_lacks():
    """Summaries written before the feature probes existed aggregate to NaN and print as 'nan', not
    as a crash; summaries with them print their values."""
    s = summarize_confusion(_conf())
    with_probe = {**s, "geometry twins in features": 0.5, "appearance twins in features": 0.75}
    agg = aggregate({"old": [s], "new": [with_probe, with_probe]})
    assert math.isnan(agg["old"]["geometry twins in features"][0])
    assert agg["new"]["appearance twins in features"] == (0.75, 0.0)
    row = [line for line in markdown_table(agg, [0, 1]).splitlines() if line.startswith("| new |")][0]
    assert row.rstrip(" |").endswith("50.0 ± 0.0 | 75.0 ± 0.0")


def test_ablation_variants_follow_the_cmcr_steps():
    from cmcr_lite.cmcr import ABLATION_STEPS
    from experiments.lite_runs import ablation, ablation_variants

    variants = ablation_variants()
    assert list(variants) == ["PPKT"] + [f"CMCR {name}" for name in ABLATION_STEPS]
    assert variants["CMCR full"]["cmcr"] == ABLATION_STEPS["full"]
    with pytest.raises(ValueError, match="'CMCR everything'"):
        ablation(only=["PPKT", "CMCR everything"])


def test_rescore_recomputes_miou_over_the_classes_present():
    """A run scored under the old rule (a predicted-but-absent class counted as 0) is rescored from
    its confusion matrix; its probe columns stay."""
    import numpy as np

    from experiments.lite_runs import rescore

    conf = np.diag([0] + [10] * 4 + [0] * 12)
    conf[1, 5] = 1                      # one class-1 point predicted as class 5, absent from the truth
    old = {"miou": 0.0, "geometry twins in features": 0.7, "confusion": conf.tolist()}
    report = rescore({"runs": {"PPKT": [old, old]}, "seeds": [0, 1]})
    iou1 = 10 / 11
    assert report["runs"]["PPKT"][0]["miou"] == pytest.approx((iou1 + 3) / 4)
    assert report["summary"]["PPKT"]["miou"][0] == pytest.approx((iou1 + 3) / 4)
    assert report["summary"]["PPKT"]["geometry twins in features"][0] == 0.7


def test_aggregate_uses_the_sample_std():
    """Every table of the experiments uses the sample standard deviation (n - 1), as the bench does."""
    runs = {"a": [{"miou": v} for v in (0.2, 0.3, 0.7)]}
    mean, std = aggregate(runs)["a"]["miou"]
    assert mean == pytest.approx(0.4) and std == pytest.approx(np.std([0.2, 0.3, 0.7], ddof=1))
    assert math.isnan(aggregate({"a": [{"miou": 0.2}]})["a"]["miou"][1])  # one seed: no spread to report

"""The README quotes the bench's table; it must say what the committed results say."""
import re

from cmcr_lite.paths import REPO_ROOT


def first_table(markdown: str) -> str:
    lines, table = markdown.splitlines(), []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def _assert_readme_quotes(marker: str, results_md: str):
    """The README block between <!-- marker:begin --> and <!-- marker:end --> is the first table of
    benchmarks/results/<results_md>, or empty while that file does not exist."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker}:begin -->\n(.*?)<!-- {marker}:end -->", readme, re.S)
    assert block, f"README.md lost its <!-- {marker}:begin --> ... <!-- {marker}:end --> block"
    md = REPO_ROOT / "benchmarks" / "results" / results_md
    quoted = block.group(1).strip()
    if not md.is_file():
        assert quoted == "", f"README quotes a table, but benchmarks/results/{results_md} does not exist"
        return
    assert quoted == first_table(md.read_text())


def test_readme_bench_table_is_the_committed_one():
    _assert_readme_quotes("bench", "bench.md")


def test_readme_label_efficiency_table_is_the_committed_one():
    _assert_readme_quotes("label_efficiency", "label_efficiency.md")


def test_readme_bench_numbers_are_the_committed_ones():
    """The README's short reading of the bench quotes these numbers; a rerun that changes them must
    change the text too."""
    import json

    path = REPO_ROOT / "benchmarks" / "results" / "bench.json"
    readme = (REPO_ROOT / "README.md").read_text()
    if not path.is_file():
        return
    summary = json.loads(path.read_text())["summary"]
    d = summary["differences"]

    def pts(x):
        return f"{100 * x:+.1f}".replace("-", "−")

    g = d["CMCR - PPKT"]["geometry twins told apart"]
    o = d["occupancy only - PPKT"]["geometry twins told apart"]
    om = d["occupancy only - PPKT"]["geometry twins in features (MLP)"]
    checks, rows = summary["checks"], summary["rows"]
    mlp = f"MLP probe ({pts(om['mean'])}" + (", an interval that includes 0)" if om["low"] <= 0 <= om["high"] else ")")
    quoted = [f"{pts(g['mean'])} points, {pts(g['low'])} to {pts(g['high'])}",
              f"{pts(o['mean'])}, {pts(o['low'])} to {pts(o['high'])}", mlp,
              f"car from truck at {checks['ceiling tells car vs truck apart']['value']:.3f}",
              f"vegetation at {checks['ceiling tells terrain vs vegetation apart']['value']:.3f}",
              f"geometry twins at {checks['image-only geometry twins near chance']['value']:.3f}",
              f"A/A − PPKT {pts(d['PPKT (A/A) - PPKT']['miou']['mean'])} mIoU points",
              f"std {100 * rows['PPKT']['miou']['std']:.1f} for PPKT and {100 * rows['CMCR']['miou']['std']:.1f} for CMCR"]
    for text in quoted:
        assert text in readme, f"README.md should quote {text!r} from bench.json"


def test_readme_third_seed_set_numbers_are_the_committed_ones():
    """The README's noise-floor diagnostic (PPKT on seeds 200-207) quotes the committed runs."""
    import json

    import numpy as np

    runs = REPO_ROOT / "benchmarks" / "results"
    third = sorted((runs / "noise_floor_third_set_runs").glob("*.json"))
    if not third:
        return
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())  # line breaks are spaces
    third_runs = [json.loads(p.read_text()) for p in third]
    ppkt_runs, aa_runs = ([json.loads(p.read_text()) for p in sorted((runs / "bench_runs").glob(pattern))]
                          for pattern in ("ppkt_seed*.json", "ppkt__a_a_seed*.json"))
    miou = lambda results: 100 * np.array([r["miou"] for r in results])  # noqa: E731
    t, ppkt, aa = miou(third_runs), miou(ppkt_runs), miou(aa_runs)
    assert len(t) == len(ppkt) == len(aa) == 8
    everything = np.concatenate([ppkt, aa, t])
    for text in (f"{t.mean():.1f} ± {t.std(ddof=1):.1f}", f"+{t.mean() - ppkt.mean():.1f} above the PPKT row",
                 f"{aa.mean() - t.mean():.1f} below the A/A row", f"PPKT runs have std {everything.std(ddof=1):.2f}",
                 f"seeds 3 and 7 at {ppkt[3]:.1f} and {ppkt[7]:.1f}"):
        assert text in readme, f"README.md should quote {text!r} from the committed runs"
    # the class that makes the largest part of the A/A gap: its IoU per seed, and its share of the gap
    iou = lambda results, c: 100 * np.array([r["per_class"][c] for r in results])  # noqa: E731
    classes = list(ppkt_runs[0]["per_class"])
    n_classes = len(classes)
    shares = {c: (iou(aa_runs, c).mean() - iou(ppkt_runs, c).mean()) / n_classes for c in classes}
    assert max(shares, key=shares.get) == "traffic_cone"  # "the largest part"
    c_ppkt, c_aa, share = iou(ppkt_runs, "traffic_cone"), iou(aa_runs, "traffic_cone"), shares["traffic_cone"]
    assert share > (aa.mean() - ppkt.mean()) / 3  # and over a third of the gap
    for text in (f"{c_ppkt.mean():.1f} ± {c_ppkt.std(ddof=1):.1f} over the eight PPKT seeds",
                 f"({['no', 'one', 'two', 'three', 'four'][int((c_ppkt < 53).sum())]} of them under 53)",
                 f"{c_aa.mean():.1f} ± {c_aa.std(ddof=1):.1f} over the A/A seeds",
                 f"+{share:.2f} of the +{aa.mean() - ppkt.mean():.2f} mIoU points",
                 f"mean over {n_classes} classes"):
        assert text in readme, f"README.md should quote {text!r} from the committed runs"


def test_cross_machine_numbers_are_the_committed_ones():
    """benchmarks/results/cross_machine_runs/README.md and the README say how two ceiling jobs run on
    another kind of CPU compare with the committed ones; the committed files must say so too."""
    import json

    runs = REPO_ROOT / "benchmarks" / "results"
    other = sorted((runs / "cross_machine_runs").glob("*.json"))
    if not other:
        return
    notes = " ".join((runs / "cross_machine_runs" / "README.md").read_text().split())
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    first_diff, miou, pair, slower = [], [], [], []
    for path in other:
        here, there = json.loads((runs / "bench_runs" / path.name).read_text()), json.loads(path.read_text())
        assert here["sizes"] == there["sizes"] and here["seed"] == there["seed"]
        a, b = here["history"]["step_loss"], there["history"]["step_loss"]
        first_diff.append(next(i for i, (x, y) in enumerate(zip(a, b)) if x != y))
        assert max(abs(x - y) for x, y in zip(a[:first_diff[-1] + 1], b)) < 1e-5  # the last bits of a float
        miou.append(f"{100 * (there['miou'] - here['miou']):+.2f}".replace("-", "−"))
        pair.append(f"{100 * (there['per_pair']['car|truck'] - here['per_pair']['car|truck']):+.2f}".replace("-", "−"))
        slower.append(f"{there['seconds'] / here['seconds']:.2f}×")
    assert first_diff == [3, 3], first_diff  # "the first three training losses are equal"
    for text in (f"the mIoU differs by {miou[0]} and {miou[1]} points",
                 f"car vs truck told apart by {pair[0]} and {pair[1]} points",
                 f"Each job took {slower[0]} and {slower[1]}"):
        assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    assert f"{slower[0]} and {slower[1]}" in readme
    # the one-thread profiles on that machine, against the committed one
    def step(name, method):
        row = next(line for line in (runs / name).read_text().splitlines() if line.startswith(f"| {method} |"))
        return float(row.split("|")[-3])

    ppkt = [step(f, "ppkt") for f in ("pretrain_step_amd_avx2_first.md", "pretrain_step_amd_avx2.md")]
    cmcr = [step(f, "cmcr") for f in ("pretrain_step_amd_avx2_first.md", "pretrain_step_amd_avx2.md")]
    text = (f"took {ppkt[0]:.2f} and {ppkt[1]:.2f} s for a PPKT step and {cmcr[0]:.2f} and {cmcr[1]:.2f} s for a "
            f"CMCR step, against {step('pretrain_step.md', 'ppkt'):.2f} and {step('pretrain_step.md', 'cmcr'):.2f} s")
    assert text in notes, f"cross_machine_runs/README.md should say {text!r}"


def test_openblas_kernel_runs_are_what_the_notes_say():
    """cross_machine_runs/intel_xeon_207: the ceiling jobs on OpenBLAS's generic kernels drift from the
    committed ones; every job on the SkylakeX kernels equals its committed one in everything but time.
    The quoted time ratios are the files' own."""
    import json

    runs = REPO_ROOT / "benchmarks" / "results"
    where = runs / "cross_machine_runs" / "intel_xeon_207"
    notes = " ".join((runs / "cross_machine_runs" / "README.md").read_text().split())
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())

    def untimed(job: dict) -> dict:  # a job's result without its times and where it ran
        out = {k: v for k, v in job.items() if k not in ("seconds", "machine", "pretrain_seconds_per_step")}
        history = out["history"]
        out["history"] = ({k: v for k, v in history.items() if k != "seconds"} if isinstance(history, dict)
                          else [{k: v for k, v in e.items() if "second" not in k} for e in history])
        return out

    ratio = {}
    right_jobs = sorted((where / "skylakex_blas").glob("*.json"))
    assert [p.name for p in right_jobs] == ["cmcr_seed0.json", "cmcr_seed1.json", "supervised_ceiling_seed0.json",
                                            "supervised_ceiling_seed1.json"]
    for path in right_jobs:
        committed, right = json.loads((runs / "bench_runs" / path.name).read_text()), json.loads(path.read_text())
        assert right["machine"]["blas_kernels"] == "SkylakeX"
        assert untimed(right) == untimed(committed), path.name  # bit for bit
        ratio.setdefault(path.name.rsplit("_seed", 1)[0], []).append(f"{right['seconds'] / committed['seconds']:.2f}×")
    generic_ratio, versus = [], []
    for seed in (0, 1):
        name = f"supervised_ceiling_seed{seed}.json"
        committed = json.loads((runs / "bench_runs" / name).read_text())
        generic = json.loads((where / "prescott_blas" / name).read_text())
        right = json.loads((where / "skylakex_blas" / name).read_text())
        assert "blas_kernels" not in generic["machine"]  # run before the kernels were recorded
        assert generic["history"]["step_loss"] != committed["history"]["step_loss"]
        assert generic["confusion"] != committed["confusion"]
        generic_ratio.append(f"{generic['seconds'] / committed['seconds']:.2f}×")
        versus.append(f"{generic['seconds'] / right['seconds']:.2f}×")
    for text in (f"each took {' and '.join(generic_ratio)} the committed jobs' time",
                 f"The ceiling took {' and '.join(ratio['supervised_ceiling'])} the committed time",
                 f"took {' and '.join(versus)} as long as these",
                 f"CMCR took {' and '.join(ratio['cmcr'])} the committed time"):
        assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    assert f"first took {' and '.join(generic_ratio)}" in readme
    assert (f"took {' and '.join(ratio['supervised_ceiling'])} the committed time and CMCR on seeds 0 and 1 took "
            f"{' and '.join(ratio['cmcr'])}, all four bit-identical") in readme
    def step(name, method):  # a one-thread profile's step time, s
        row = next(line for line in (runs / name).read_text().splitlines() if line.startswith(f"| {method} |"))
        return float(row.split("|")[-3])

    generic = "pretrain_step_intel_xeon_prescott_blas.md"
    right = ["pretrain_step_intel_xeon_skylakex_blas_first.md", "pretrain_step_intel_xeon_skylakex_blas.md"]
    text = (f"a PPKT step took {step(generic, 'ppkt'):.2f} s and a CMCR step {step(generic, 'cmcr'):.2f} s")
    assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    ppkt, cmcr = [step(f, "ppkt") for f in right], [step(f, "cmcr") for f in right]
    text = (f"PPKT took {ppkt[0]:.2f} and {ppkt[1]:.2f} s and CMCR {cmcr[0]:.2f} and {cmcr[1]:.2f} s, "
            f"{cmcr[0] / ppkt[0]:.2f}× and {cmcr[1] / ppkt[1]:.2f}× PPKT's step")
    assert text in notes, f"cross_machine_runs/README.md should say {text!r}"
    kernels = (runs / "openblas_kernels_intel_xeon_207.md").read_text()
    assert "| SkylakeX | 543 | 0.60 |" in kernels and "the lite trunk's step took 0.60× the time" in notes

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
    miou = lambda paths: 100 * np.array([json.loads(p.read_text())["miou"] for p in paths])  # noqa: E731
    t = miou(third)
    ppkt = miou(sorted((runs / "bench_runs").glob("ppkt_seed*.json")))
    aa = miou(sorted((runs / "bench_runs").glob("ppkt__a_a_seed*.json")))
    assert len(t) == len(ppkt) == len(aa) == 8
    everything = np.concatenate([ppkt, aa, t])
    for text in (f"{t.mean():.1f} ± {t.std(ddof=1):.1f}", f"+{t.mean() - ppkt.mean():.1f} above the PPKT row",
                 f"{aa.mean() - t.mean():.1f} below the A/A row", f"PPKT runs have std {everything.std(ddof=1):.2f}",
                 f"seeds 3 and 7 at {ppkt[3]:.1f} and {ppkt[7]:.1f}"):
        assert text in readme, f"README.md should quote {text!r} from the committed runs"

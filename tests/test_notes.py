"""The generated notes (``experiments/notes.py``): every document's committed text is what the writers
make from the committed results files now, so a results file changed without ``python -m experiments
notes`` fails here; and the numbers the notes lean on are the files' own."""
import numpy as np
import pytest
from scipy import stats

from cmcr_lite.paths import REPO_ROOT
from experiments import RESULTS_DIR
from experiments.noise_floor_sets import FOLDER, seeds_for_power
from experiments.notes import DOCUMENTS, rendered, with_blocks
from experiments.wording import PremiseError, load, premise


@pytest.mark.parametrize("document", list(DOCUMENTS))
def test_committed_text_is_what_the_results_files_write(document):
    committed = (REPO_ROOT / document).read_text()
    assert committed == rendered(document), f"{document} is out of date: run `python -m experiments notes`"


def test_a_hand_edited_number_is_rewritten():
    """The check can fail: a number typed over inside a block differs from what the writer makes."""
    text = (REPO_ROOT / "docs" / "results.md").read_text()
    block = text.split("<!-- bench_time:begin -->", 1)[1].split("<!-- bench_time:end -->", 1)[0]
    edited = text.replace(block, block.replace("min of one-thread jobs", "0 min of one-thread jobs", 1))
    assert edited != text
    assert with_blocks(edited, DOCUMENTS["docs/results.md"]) == text


def test_a_document_without_its_markers_is_refused():
    with pytest.raises(ValueError, match=r"docs/results.md: needs exactly one <!-- machines:begin -->"):
        with_blocks("no blocks here", {"machines": lambda: "x"}, "docs/results.md")
    with pytest.raises(ValueError, match=r"blocks \['stray'\] have no writer"):
        with_blocks("<!-- stray:begin -->\n<!-- stray:end -->", {}, "README.md")


def test_a_broken_premise_names_the_sentence_to_rewrite():
    premise(True, "anything", "here.py")
    with pytest.raises(PremiseError, match=r"no longer support 'the A/A set is the outlier': rewrite it in x.py"):
        premise(False, "the A/A set is the outlier", "x.py")


def test_seeds_for_power_is_the_smallest_n_that_keeps_the_interval_under_the_gap():
    for sigma in (0.5, 0.86, 1.0, 1.22, 2.0):
        n = seeds_for_power(sigma)
        assert 1.96 * sigma * np.sqrt(2 / n) <= 1 < 1.96 * sigma * np.sqrt(2 / (n - 1))


def test_the_noise_floor_summary_is_its_jobs_own():
    """noise_floor_sets.json, which the notes quote, holds its job files' mIoU, and its ANOVA is scipy's."""
    summary, report = load(FOLDER / "noise_floor_sets.json"), load(RESULTS_DIR / "cross_machine_runs"
                                                                     / "amd_epyc_17_from_scratch" / "bench.json")
    jobs = {j["seed"]: j for j in (load(p) for p in FOLDER.glob("ppkt__a_a_seed*.json"))}
    sets = {"0–7": [r for r in report["runs"] if r["row"] == "PPKT"],
            "100–107": [r for r in report["runs"] if r["row"] == "PPKT (A/A)"]}
    sets.update({k: [jobs[s] for s in seeds] for k, seeds in summary["job_seeds"].items()})
    miou = {k: [100 * r["miou"] for r in sorted(runs, key=lambda r: r["seed"])] for k, runs in sets.items()}
    assert miou == summary["miou"]
    assert np.isclose(summary["spread"]["p"], stats.f_oneway(*miou.values()).pvalue)


def test_the_command_checks_every_document(capsys):
    """``python -m experiments notes --check``, as the README prints it, finds nothing out of date."""
    from experiments.cli import main

    assert main(["notes", "--check"]) == []
    assert "every generated block is up to date" in capsys.readouterr().out

"""The generated notes: every measured number in the README, ``docs/results.md`` and the notes under
``experiments/results/`` sits in a marked block, ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``,
written from the committed results files.

    python -m experiments notes            # rewrite every block of every document below
    python -m experiments notes --check    # list the documents whose blocks are out of date (exit 1)

``tests/test_notes.py`` fails when a results file changed without rewriting them. Text outside the
blocks is prose without measured numbers. A block whose words depend on its numbers checks that
they still hold (``experiments.wording.premise``) and stops with the sentence to rewrite.
"""
from __future__ import annotations

import argparse
import re
import sys

from cmcr_lite.paths import REPO_ROOT
from cmcr_lite.runtime import atomic_path
from experiments import RESULTS_DIR, ceiling_recipes, machines, noise_floor_sets, trunks
from experiments.ladder import load_ladder
from experiments.ladder import readme_block as ladder_table
from experiments.report import bench_verdict, load_report, summary_table
from experiments.wording import load


def bench_time_notes() -> str:
    """docs/results.md: how long the committed bench takes, measured and estimated."""
    bench, scratch = load_report(), load(machines.FROM_SCRATCH)
    wall = scratch["wall_from_scratch"]["minutes"]
    return (
        f"The committed run: {bench['job_minutes']:.0f} min of one-thread jobs, so about {bench['job_minutes'] / 2:.0f} min "
        "of wall time on 2 cores (an\nestimate from the jobs' own times; its ceiling's five jobs come from another "
        "machine, below). The whole\nbench, data and teacher included, took "
        f"{wall:.0f} min from scratch on 2 cores of an AMD EPYC of model 17, measured,\nwith the ceiling's earlier "
        f"60-epoch recipe, so about {ceiling_recipes.wall_with_current_ceiling(scratch):.0f} min there with today's "
        "(an estimate)."
    )


def step_cost_notes() -> str:
    """docs/results.md: the one-thread step profile of the committed jobs' machine."""
    ppkt, cmcr = (machines.step_seconds("pretrain_step.md", m) for m in ("ppkt", "cmcr"))
    return (f"A lite CMCR step takes {cmcr:.2f} s on one thread, {cmcr / ppkt:.2f}× PPKT's {ppkt:.2f} s "
            "(`python benchmarks/pretrain_step.py`,\n`benchmarks/results/pretrain_step.md`, which splits the step "
            "into its parts).")


def machines_notes() -> str:
    """docs/results.md: what a difference in the last bits does, and the second realization of the table."""
    moved = [abs(r["miou"] - machines.committed_for(r)["miou"]) for r in machines.amd_jobs() if r["row"] == "PPKT"]
    scratch = load(machines.FROM_SCRATCH)["summary"]
    aa = scratch["differences"]["PPKT (A/A) - PPKT"]["miou"]
    return (
        f"Across kinds, a difference in the last bits of a float moves a single PPKT run by up to {100 * max(moved):.1f} "
        "mIoU points,\nabout as much as another seed does, so the rows that a difference is taken between must come "
        "from one\nmachine. The from-scratch bench is a second realization of the whole table\n"
        "(`experiments/results/cross_machine_runs/amd_epyc_17_from_scratch/bench.md`), and it reads as the\n"
        f"committed one does: {machines.second_realization('words')}"
        + (", so the noise floor misses 1 point there too" if aa["mean"] > 0.01 else "")
        + f"; CMCR's per-seed std is {100 * scratch['rows']['CMCR']['miou']['std']:.1f} points there."
    )


def ceiling_notes() -> str:
    """docs/results.md: the ceiling's recipe in three sentences."""
    return (
        "The ceiling's earlier recipe (batch 4, lr 0.05, 60 epochs) was still rising at its end\n"
        f"(+{ceiling_recipes.length_gain():.1f} mIoU points from 40 to 60 epochs on seeds 0 and 1, "
        "`experiments/results/ceiling_length_amd_epyc_17/`),\nso it was a lower bound on what LiDAR supervision "
        f"reaches here. Batch 2 at lr 0.1 for 30 epochs beats it\non seeds 0 and 1 at {ceiling_recipes.compute_share():.1f} "
        "of its compute (`python -m experiments.ceiling_recipes`,\n`experiments/results/ceiling_recipes_amd_epyc_17/`), "
        "and the bench now uses it: its ceiling row is that\nrecipe on five seeds, made on an AMD EPYC with AVX2, where "
        "the seeds both machines ran agree within the\nseed spread (`experiments/results/ceiling_recipes_amd_epyc_23_49/`). "
        "The 60-epoch jobs are kept in\n`experiments/results/bench_runs_ceiling_60ep/`."
    )


def compute_share_notes() -> str:
    """bench_runs_ceiling_60ep/README.md: why these jobs left the bench."""
    return (f"Batch 2 at lr 0.1 for 30 epochs beats them at {ceiling_recipes.compute_share():.1f} of their compute\n"
            "(`../ceiling_recipes_amd_epyc_17/`).")


def first_table(path) -> str:
    """The first markdown table of ``path``, or "" while it does not exist."""
    if not path.is_file():
        return ""
    table = []
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def readme_ladder() -> str:
    mechanism = RESULTS_DIR / "mechanism.json"
    return ladder_table(load_ladder()["summary"], load(mechanism) if mechanism.is_file() else None)


def instances_reading() -> str:
    """docs/results.md: the instances experiment's paired differences (empty while it has not run)."""
    from experiments.instances import paired_differences_note

    path = RESULTS_DIR / "instances.json"
    return paired_differences_note(load(path)) if path.is_file() else ""


def instances_classes() -> str:
    """docs/results.md: the instances experiment per class (empty while it has not run)."""
    from experiments.instances import per_class_note

    path = RESULTS_DIR / "instances.json"
    return per_class_note(load(path)) if path.is_file() else ""


NOTES = "experiments/results"
DOCUMENTS = {  # document (relative to the repository) -> {block name: what writes it}
    "README.md": {"bench": lambda: summary_table(load_report()["summary"]), "ladder": readme_ladder,
                  "instances": lambda: first_table(RESULTS_DIR / "instances.md")},
    "docs/results.md": {
        "bench_time": bench_time_notes,
        "bench_reading": lambda: bench_verdict(load_report()["summary"]),
        "ceiling": ceiling_notes,
        "noise_floor": noise_floor_sets.results_page_notes,
        "step_cost": step_cost_notes,
        "machines": machines.machines_table,
        "machines_reading": machines_notes,
        "label_efficiency": lambda: first_table(RESULTS_DIR / "label_efficiency.md"),
        "instances": lambda: first_table(RESULTS_DIR / "instances.md"),
        "instances_reading": instances_reading,
        "instances_classes": instances_classes,
    },
    "experiments/README.md": {"trunks": trunks.sizes_note},
    f"{NOTES}/cross_machine_runs/README.md": {
        "amd_avx2": machines.amd_avx2_notes, "intel_xeon": machines.intel_xeon_notes,
        "amd_epyc_17": machines.amd_epyc_notes, "from_scratch": machines.from_scratch_notes},
    f"{NOTES}/ceiling_length_amd_epyc_17/README.md": {
        "ceiling_length": ceiling_recipes.ceiling_length_table, "reading": ceiling_recipes.ceiling_length_notes},
    f"{NOTES}/ceiling_recipes_amd_epyc_17/README.md": {
        "ceiling_recipes": ceiling_recipes.ceiling_recipes_table, "reading": ceiling_recipes.ceiling_recipes_notes},
    f"{NOTES}/ceiling_recipes_amd_epyc_23_49/README.md": {
        "avx2_ceiling": ceiling_recipes.avx2_ceiling_table, "reading": ceiling_recipes.avx2_ceiling_notes},
    f"{NOTES}/bench_runs_ceiling_60ep/README.md": {"compute_share": compute_share_notes},
    f"{NOTES}/noise_floor_sets_amd_epyc_17/README.md": {"reading": noise_floor_sets.folder_notes},
}


def with_blocks(text: str, blocks: dict, document: str = "the document") -> str:
    """``text`` with every block in ``blocks`` ({name: writer}) rewritten; a missing marker is an error."""
    for name, write in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if text.count(begin) != 1 or text.count(end) != 1:
            raise ValueError(f"{document}: needs exactly one {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + write().strip("\n") + "\n" + end + rest.split(end, 1)[1]
    unknown = set(re.findall(r"<!-- (\w+):begin -->", text)) - set(blocks)
    if unknown:
        raise ValueError(f"{document}: blocks {sorted(unknown)} have no writer in experiments/notes.py")
    return text


def rendered(document: str) -> str:
    """``document``'s text as the blocks' writers make it now."""
    return with_blocks((REPO_ROOT / document).read_text(), DOCUMENTS[document], document)


def stale() -> list:
    """The documents whose committed text differs from what the writers make now."""
    return [doc for doc in DOCUMENTS if (REPO_ROOT / doc).read_text() != rendered(doc)]


def main(argv=None) -> list:
    p = argparse.ArgumentParser(prog="python -m experiments notes",
                                description="Rewrite the generated blocks of the README and the results notes.")
    p.add_argument("--check", action="store_true", help="only list the documents that are out of date (exit 1 if any)")
    a = p.parse_args(argv)
    if a.check:
        out = stale()
        print("\n".join(out) if out else "every generated block is up to date")
        if out:
            sys.exit(1)
        return out
    texts = {doc: rendered(doc) for doc in DOCUMENTS}  # every writer runs before any file is touched
    changed = [doc for doc, text in texts.items() if (REPO_ROOT / doc).read_text() != text]
    for doc in changed:
        with atomic_path(REPO_ROOT / doc) as tmp:
            tmp.write_text(texts[doc])
    print("rewrote " + ", ".join(changed) if changed else "every generated block was up to date")
    return changed

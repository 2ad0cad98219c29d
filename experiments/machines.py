"""Bits and time across machines: the bench's jobs rerun on other kinds of CPU, against the committed ones.

The jobs live in ``results/cross_machine_runs/`` (and the step-time profiles they cite in
``benchmarks/results/``). This module reads them into the table of machines in ``docs/results.md``
and the sentences of ``results/cross_machine_runs/README.md``; ``python -m experiments notes``
writes both. "Committed" here means the bench's jobs as those runs saw them: ``results/bench_runs/``,
with the supervised ceiling's earlier 60-epoch jobs (``results/bench_runs_ceiling_60ep/``), since
the ceiling changed recipe after these comparisons.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from cmcr_lite.paths import REPO_ROOT
from experiments import RESULTS_DIR
from experiments.bench import same_plan
from experiments.jobs import job_seconds
from experiments.plan import BenchPlan, row_slug
from experiments.wording import interval, load, premise, signed, times

RUNS = RESULTS_DIR / "cross_machine_runs"
FROM_SCRATCH = RUNS / "amd_epyc_17_from_scratch" / "bench.json"  # the whole bench again, AMD EPYC model 17
SPEED_RESULTS = REPO_ROOT / "benchmarks" / "results"  # one-thread step profiles stay with the speed benchmarks
HERE = "experiments/machines.py"


def committed_job(name: str) -> Path:
    """The committed job ``name`` (``<row>_seed<k>.json``) that the cross-machine runs were compared with."""
    folder = "bench_runs_ceiling_60ep" if name.startswith("supervised_ceiling") else "bench_runs"
    return RESULTS_DIR / folder / name


def committed_paths() -> list:
    """Every committed job of the bench as the cross-machine runs saw it (:func:`committed_job`)."""
    return sorted(committed_job(p.name) for p in (RESULTS_DIR / "bench_runs").glob("*.json"))


def committed_for(job: dict) -> dict:
    """The committed job of ``job``'s row and seed."""
    return load(committed_job(f"{row_slug(job['row'])}_seed{job['seed']}.json"))


def untimed(job: dict) -> dict:
    """A bench job's result without its times and the machine it ran on: what bit-for-bit compares."""
    out = {k: v for k, v in job.items() if k not in ("seconds", "machine", "pretrain_seconds_per_step", "readout_seconds")}
    history = out.get("history")
    if history is not None:
        out["history"] = ({k: v for k, v in history.items() if k != "seconds"} if isinstance(history, dict)
                          else [{k: v for k, v in e.items() if "second" not in k} for e in history])
    return out


def step_seconds(profile: str, method: str) -> float:
    """A one-thread profile's median step in s: the ``step`` column of ``method`` in benchmarks/results/``profile``."""
    text = (SPEED_RESULTS / profile).read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
    return float(row.split("|")[-3])


def time_ratios(name: str, where: str, seeds=(0, 1)) -> list:
    """``name``'s job time under cross_machine_runs/``where`` over its committed job's, per seed."""
    return [load(RUNS / where / f"{name}_seed{s}.json")["seconds"] / load(committed_job(f"{name}_seed{s}.json"))["seconds"]
            for s in seeds]


def committed_minutes() -> float:
    """The committed jobs' one-thread minutes (with the 60-epoch ceiling)."""
    return sum(job_seconds(load(p)) for p in committed_paths()) / 60


def weighted_compute(jobs: list) -> float:
    """The whole bench's one-thread minutes at ``jobs``' speed: each row's committed minutes times the
    mean ratio of that row's ``jobs`` to their committed ones (per step for occupancy only, whose jobs
    on the AMD EPYC of model 17 resumed from epoch checkpoints, so their job time is partial)."""
    minutes, ratio = defaultdict(float), defaultdict(list)
    for path in committed_paths():
        job = load(path)
        minutes[job["row"]] += job["seconds"] / 60
    for here in jobs:
        key = "pretrain_seconds_per_step" if here["row"] == "occupancy only" else "seconds"
        ratio[here["row"]].append(here[key] / committed_for(here)[key])
    return sum(statistics.mean(ratio[row]) * m for row, m in minutes.items())


def first_difference(a: list, b: list) -> int:
    """The index of the first step where two loss histories differ."""
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def amd_jobs() -> list:
    """The 14 jobs of every row on seeds 0 and 1 (A/A: 100, 101) on the AMD EPYC of model 17."""
    return [load(p) for p in sorted((RUNS / "amd_epyc_17").glob("*.json"))]


def avx2_hours() -> float:
    """The whole committed bench on 2 cores of the AMD EPYC with AVX2, scaled by its two ceiling jobs' time ratio."""
    return statistics.mean(time_ratios("supervised_ceiling", ".")) * committed_minutes() / 2 / 60


def machines_table() -> str:
    """docs/results.md's table of machines: bits, time ratios and whole-bench times against the committed jobs."""
    committed = load(RESULTS_DIR / "bench.json")
    compared = [load(p) for p in committed_paths()]
    total = committed_minutes()
    amd, scratch = amd_jobs(), load(FROM_SCRATCH)
    wall = scratch["wall_from_scratch"]
    premise(wall["data_made"] and wall["workers"] == 2 and wall["machine"] == amd[0]["machine"],
            "from scratch on 2 cores of the same kind", HERE)
    premise(len(scratch["runs"]) == len(compared) == len(committed["runs"]) == 41, "all 41", HERE)
    # the plan of the committed bench before its ceiling changed recipe (only where its files went differs)
    earlier = replace(BenchPlan.from_dict(committed["plan"]), ceiling_epochs=60,
                      ceiling={"lr": 0.05, "lr_head": None, "batch_size": 4})
    premise(same_plan(scratch["plan"], earlier), "the from-scratch bench is the committed one's plan", HERE)
    by_job = {(r["row"], r["seed"]): r for r in scratch["runs"]}
    premise(all(untimed(by_job[(r["row"], r["seed"])]) == untimed(r) for r in amd), "the 14 jobs above equal", HERE)
    committed_jobs = {(r["row"], r["seed"]): r for r in compared}
    premise(all(untimed(r) != untimed(committed_jobs[k]) for k, r in by_job.items()), "apart", HERE)
    amd_minutes = weighted_compute(amd)
    skylakex = (time_ratios("supervised_ceiling", "intel_xeon_207/skylakex_blas")
                + time_ratios("cmcr", "intel_xeon_207/skylakex_blas"))
    return "\n".join([
        "| machine | OpenBLAS kernels | jobs | bits, against the committed jobs | time, against the committed jobs "
        "| the whole bench on 2 cores |",
        "|---|---|---|---|---|---|",
        f"| the committed jobs', the 60-epoch ceiling's among them (not recorded) | SkylakeX (inferred) | all 41 | "
        f"| 1× | about {total / 2:.0f} min (an estimate from the jobs' own times) |",
        f"| AMD EPYC, AVX2 | not recorded | ceiling, seeds 0 and 1 | equal for 3 steps, then apart in the last bits "
        f"| {times(time_ratios('supervised_ceiling', '.'))} | about {avx2_hours():.1f} hours (an estimate from the "
        "ceiling's ratio; the ceiling slowed down most elsewhere, so an upper one) |",
        f"| Intel Xeon model 207, AVX-512 | Prescott (OpenBLAS's generic) | ceiling, seeds 0 and 1 | apart within "
        f"the first steps | {times(time_ratios('supervised_ceiling', 'intel_xeon_207/prescott_blas'))} | |",
        f"| the same, with OpenBLAS's kernels named | SkylakeX | ceiling and CMCR, seeds 0 and 1 | equal | ceiling "
        f"{times(skylakex[:2])}, CMCR {times(skylakex[2:])} | about "
        f"{statistics.mean(skylakex) * total / 2 / 60:.1f} hours (an estimate) |",
        f"| AMD EPYC family 25 model 17, AVX-512 | Cooperlake (OpenBLAS's own) | every row, seeds 0 and 1 (14 jobs) "
        f"| equal for 3 steps, then apart | {amd_minutes / total:.2f}× the compute | about "
        f"{amd_minutes / 2 / 60:.1f} hours (an estimate) |",
        f"| the same, in another session | Cooperlake | all 41, from scratch in one call | apart; the 14 jobs above "
        f"equal | {weighted_compute(scratch['runs']) / total:.2f}× the compute | **{wall['minutes']:.0f} min, "
        "measured** |",
    ])


def second_realization(style: str = "words") -> str:
    """The from-scratch bench's reading in one clause per difference (CMCR − PPKT, occupancy, A/A)."""
    d = load(FROM_SCRATCH)["summary"]["differences"]
    return (f"CMCR − PPKT mIoU {interval(d['CMCR - PPKT']['miou'], style)} and geometry twins told apart "
            f"{interval(d['CMCR - PPKT']['geometry twins told apart'], style)}; occupancy − PPKT geometry twins "
            f"{interval(d['occupancy only - PPKT']['geometry twins told apart'], style)}; A/A − PPKT "
            f"{interval(d['PPKT (A/A) - PPKT']['miou'], style)}")


def amd_avx2_notes() -> str:
    """The first section of cross_machine_runs/README.md: two ceiling jobs on an AMD EPYC with AVX2."""
    first, miou, pair, slower = [], [], [], []
    for path in sorted(RUNS.glob("*.json")):
        here, there = load(committed_job(path.name)), load(path)
        premise(here["sizes"] == there["sizes"] and here["seed"] == there["seed"], "the same jobs", HERE)
        a, b = here["history"]["step_loss"], there["history"]["step_loss"]
        first.append(first_difference(a, b))
        premise(max(abs(x - y) for x, y in zip(a[:first[-1] + 1], b)) < 1e-5, "the last bits of a float", HERE)
        miou.append(signed(100 * (there["miou"] - here["miou"]), 2))
        pair.append(signed(100 * (there["per_pair"]["car|truck"] - here["per_pair"]["car|truck"]), 2))
        slower.append(there["seconds"] / here["seconds"])
    premise(first == [3, 3], "the first three training losses are equal", HERE)
    profiles = ("pretrain_step_amd_avx2_first.md", "pretrain_step_amd_avx2.md")
    ppkt, cmcr = ([step_seconds(f, m) for f in profiles] for m in ("ppkt", "cmcr"))
    ppkt0, cmcr0 = step_seconds("pretrain_step.md", "ppkt"), step_seconds("pretrain_step.md", "cmcr")
    return (
        "- **Not bit-identical across machines.** The data, the seeds and the first three training losses\n"
        "  are equal; from the fourth step on the losses differ in the last bits of a float (different\n"
        "  vector kernels round differently), and after the whole run the two have drifted apart: the\n"
        f"  mIoU differs by {miou[0]} and {miou[1]} points, car vs truck told apart by {pair[0]} and {pair[1]} points.\n"
        "  Within one kind of machine, a seed's run is bit-identical (the label-efficiency rerun and\n"
        "  `tests/test_bench.py` check that).\n"
        f"- **Slower.** Each job took {times(slower)} the committed jobs' time, two jobs running side by\n"
        "  side as the bench runs them. On one thread alone, `python benchmarks/pretrain_step.py` ran twice\n"
        "  on the same machine (`benchmarks/results/pretrain_step_amd_avx2_first.md`, `pretrain_step_amd_avx2.md`)\n"
        f"  took {ppkt[0]:.2f} and {ppkt[1]:.2f} s for a PPKT step and {cmcr[0]:.2f} and {cmcr[1]:.2f} s for a CMCR step,\n"
        f"  against {ppkt0:.2f} and {cmcr0:.2f} s in the committed profile (`benchmarks/results/pretrain_step.md`).\n"
        "  Two runs of the same profile on the same machine differ, so a 6-step median is a rough measure.\n"
        f"  On this machine the whole bench would take about {avx2_hours():.1f} hours on 2 cores (an estimate from the\n"
        "  ceiling's ratio, whose step is mostly MinkowskiEngine's convolutions: it slowed down most on the\n"
        "  other machines, so an upper estimate)."
    )


def intel_xeon_notes() -> str:
    """cross_machine_runs/README.md on the Intel Xeon of model 207: OpenBLAS's generic kernels, then SkylakeX."""
    where = RUNS / "intel_xeon_207"
    right_jobs = sorted((where / "skylakex_blas").glob("*.json"))
    premise([p.name for p in right_jobs] == ["cmcr_seed0.json", "cmcr_seed1.json", "supervised_ceiling_seed0.json",
                                             "supervised_ceiling_seed1.json"], "the four jobs", HERE)
    ratio = defaultdict(list)
    for path in right_jobs:
        committed, right = load(committed_job(path.name)), load(path)
        premise(right["machine"]["blas_kernels"] == "SkylakeX", "on the SkylakeX kernels", HERE)
        premise(untimed(right) == untimed(committed), "Bit-identical to the committed runs", HERE)
        ratio[path.name.rsplit("_seed", 1)[0]].append(right["seconds"] / committed["seconds"])
    generic_ratio, versus = [], []
    for seed in (0, 1):
        name = f"supervised_ceiling_seed{seed}.json"
        committed, generic, right = (load(committed_job(name)), load(where / "prescott_blas" / name),
                                     load(where / "skylakex_blas" / name))
        premise(generic["history"]["step_loss"] != committed["history"]["step_loss"], "left the committed ones", HERE)
        generic_ratio.append(generic["seconds"] / committed["seconds"])
        versus.append(generic["seconds"] / right["seconds"])
    generic = "pretrain_step_intel_xeon_prescott_blas.md"
    right = ("pretrain_step_intel_xeon_skylakex_blas_first.md", "pretrain_step_intel_xeon_skylakex_blas.md")
    ppkt, cmcr = [step_seconds(f, "ppkt") for f in right], [step_seconds(f, "cmcr") for f in right]
    kernels = (SPEED_RESULTS / "openblas_kernels_intel_xeon_207.md").read_text()
    skylakex = next(line for line in kernels.splitlines() if line.startswith("| SkylakeX |"))
    whole = statistics.mean(ratio["supervised_ceiling"] + ratio["cmcr"]) * committed_minutes() / 2 / 60
    return (
        f"On the generic kernels the two ceiling jobs took {times(generic_ratio)} the committed jobs' time, and\n"
        "their losses left the committed ones in the last bits of a float within the first steps\n"
        "(`intel_xeon_207/prescott_blas/`). With `OPENBLAS_CORETYPE=SkylakeX`, the kernels OpenBLAS gives the\n"
        f"AVX-512 CPUs it recognises, the lite trunk's step took {float(skylakex.split('|')[3]):.2f}× the time\n"
        "(`python benchmarks/openblas_kernels.py`, `benchmarks/results/openblas_kernels_intel_xeon_207.md`).\n"
        "cmcr-lite now names those kernels on such a fallback (`cmcr_lite.runtime.prepare_openblas`), and every\n"
        "job records its kernels under `\"machine\"` → `\"blas_kernels\"`. The same two jobs again with those\n"
        "kernels, and then CMCR on seeds 0 and 1 (`intel_xeon_207/skylakex_blas/`):\n"
        "\n"
        "- **Bit-identical to the committed runs.** Every step's or epoch's loss, the confusion matrix and\n"
        "  every metric equal the committed ones; only the times differ. So the committed bench was made on\n"
        "  AVX-512 machines whose OpenBLAS ran the SkylakeX kernels, and this CPU, given those kernels,\n"
        "  reproduces it.\n"
        f"- **The ceiling took {times(ratio['supervised_ceiling'])} the committed time**, and the ceiling jobs without\n"
        f"  the right kernels took {times(versus)} as long as these. CMCR took {times(ratio['cmcr'])} the committed\n"
        f"  time. On this machine the whole bench would take about {whole:.1f} hours on 2 cores (an estimate).\n"
        "- **One thread alone** (`python benchmarks/pretrain_step.py`, nothing else running): on the generic\n"
        f"  kernels a PPKT step took {step_seconds(generic, 'ppkt'):.2f} s and a CMCR step "
        f"{step_seconds(generic, 'cmcr'):.2f} s; on the SkylakeX\n"
        f"  kernels, named by hand and then by cmcr-lite, PPKT took {ppkt[0]:.2f} and {ppkt[1]:.2f} s and CMCR "
        f"{cmcr[0]:.2f} and {cmcr[1]:.2f} s,\n"
        f"  {cmcr[0] / ppkt[0]:.2f}× and {cmcr[1] / ppkt[1]:.2f}× PPKT's step "
        f"({step_seconds('pretrain_step.md', 'cmcr') / step_seconds('pretrain_step.md', 'ppkt'):.2f}× in the "
        "committed profile)."
    )


def amd_epyc_notes() -> str:
    """cross_machine_runs/README.md on the AMD EPYC of model 17: every row on seeds 0 and 1."""
    where = RUNS / "amd_epyc_17"
    jobs = amd_jobs()
    premise(len(jobs) == 14, "14 jobs", HERE)
    ratio, moved = defaultdict(list), defaultdict(list)
    for here in jobs:
        committed = committed_for(here)
        premise(here["machine"] == {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "cores": 2, "blas_kernels": "Cooperlake"},
                "AMD EPYC, AVX-512, Cooperlake", HERE)
        premise(untimed(here) != untimed(committed), "No job equals its committed one", HERE)
        key = "pretrain_seconds_per_step" if here["row"] == "occupancy only" else "seconds"
        ratio[here["row"]].append(here[key] / committed[key])
        moved[here["row"]].append(signed(100 * (here["miou"] - committed["miou"]), 2))
        if here["row"] == "supervised ceiling":
            premise(first_difference(here["history"]["step_loss"], committed["history"]["step_loss"]) == 3,
                    "the first three step losses are equal and the fourth differs", HERE)
    for kernels, equal_to_committed, equal_to_here in (("cooperlake", 3, 14), ("skylakex", 3, 5)):
        table = (where / f"first_steps_{kernels}.md").read_text()
        premise(f"The first {equal_to_committed} of 14 steps are equal; step {equal_to_committed}" in table
                and "| 3 | 3.69125366 | 3.69125319 | +4.77e-07 |" in table, f"first_steps_{kernels}.md", HERE)
    ppkt_std = load(RESULTS_DIR / "bench.json")["summary"]["rows"]["PPKT"]["miou"]["std"]
    biggest = max(abs(float(m.replace("−", "-"))) for m in moved["PPKT"])
    ppkt, cmcr = step_seconds("pretrain_step_amd_epyc_17.md", "ppkt"), step_seconds("pretrain_step_amd_epyc_17.md", "cmcr")
    whole = weighted_compute(jobs)
    return (
        "- **Not bit-identical.** No job equals its committed one. In the ceiling, the first three step\n"
        "  losses are equal and the fourth differs. Against the committed jobs, the mIoU moved by\n"
        f"  {' and '.join(moved['supervised ceiling'])} (ceiling), {' and '.join(moved['CMCR'])} (CMCR), "
        f"{' and '.join(moved['PPKT'])} (PPKT),\n"
        f"  {' and '.join(moved['PPKT (A/A)'])} (PPKT A/A) and {' and '.join(moved['occupancy only'])} points "
        "(occupancy only). A difference in the last\n"
        f"  bits of a float thus moves one PPKT run by up to {biggest:.1f} points, against PPKT's per-seed std of\n"
        f"  {100 * ppkt_std:.1f} points: about as much as another seed does. The training is chaotic; only\n"
        "  same-machine reruns are bit for bit.\n"
        "- **OpenBLAS's kernels are not the cause here.** `python -m experiments.ceiling_first_steps`\n"
        "  recomputes the first epoch (14 steps) of the committed ceiling job. Against the committed job, the\n"
        "  first 3 steps are equal and step 3 differs by the same +4.77e-07, both on the Cooperlake kernels\n"
        "  (`amd_epyc_17/first_steps_cooperlake.md`) and with `OPENBLAS_CORETYPE=SkylakeX`, the committed\n"
        "  jobs' kernels (`amd_epyc_17/first_steps_skylakex.md`). Against the job made on this machine, all\n"
        "  14 steps are equal on Cooperlake, and the first 5 on SkylakeX: the kernels change later bits, not\n"
        "  the first difference.\n"
        "- **The likely cause is MKL, inside torch.** Its matrix products (the `SGEMM` calls that\n"
        "  `MKL_VERBOSE=1` lists during a step) run on the code path MKL names \"Intel(R) Architecture\n"
        "  processors\" on this CPU, its path for CPUs that are not Intel's. `MKL_CBWR=COMPATIBLE` changes the\n"
        "  losses from step 4 on, so MKL's rounding is in the losses. Asking for its AVX2 or AVX-512 branch\n"
        "  (`MKL_CBWR=AVX2`, `AVX512`, `AVX512_E1`) is reported as `CNR:AUTO` here: it seems not to be\n"
        "  taken. The committed bits thus come from an Intel CPU with AVX-512; an AMD CPU gives a run of its\n"
        "  own, reproducible on that kind of machine.\n"
        f"- **Time.** Against the committed jobs, the ceiling took {times(ratio['supervised ceiling'])} the time, "
        f"CMCR {times(ratio['CMCR'])},\n"
        f"  PPKT {times(ratio['PPKT'])}, and PPKT A/A {times(ratio['PPKT (A/A)'])}. An occupancy-only step took "
        f"{times(ratio['occupancy only'])}\n"
        "  the committed one (its job times hold only the steps after the resume). Each row's ratio, weighted\n"
        f"  by that row's committed one-thread minutes, gives {whole:.0f} min of one-thread compute for the whole bench\n"
        f"  against the committed {committed_minutes():.0f} min: about {whole / 2 / 60:.1f} hours on 2 cores.\n"
        "- **One thread alone** (`python benchmarks/pretrain_step.py`, nothing else running,\n"
        f"  `benchmarks/results/pretrain_step_amd_epyc_17.md`): a PPKT step took {ppkt:.2f} s and a CMCR step "
        f"{cmcr:.2f} s, {cmcr / ppkt:.2f}× PPKT's\n"
        "  step."
    )


def session_ratios() -> list:
    """The from-scratch bench's jobs' time over the same jobs' in the earlier session on the same kind of
    machine (per step for occupancy only, whose earlier jobs resumed from checkpoints)."""
    earlier = {(r["row"], r["seed"]): r for r in amd_jobs()}
    out = []
    for r in load(FROM_SCRATCH)["runs"]:
        if (r["row"], r["seed"]) in earlier:
            key = "pretrain_seconds_per_step" if r["row"] == "occupancy only" else "seconds"
            out.append((r["row"], r[key] / earlier[(r["row"], r["seed"])][key]))
    return out


def session_speed_range() -> tuple:
    """(slowest, fastest) ratio of one machine kind's job times between two sessions."""
    ratios = [x for _, x in session_ratios()]
    return min(ratios), max(ratios)


def from_scratch_notes() -> str:
    """cross_machine_runs/README.md on the whole bench from scratch on the AMD EPYC of model 17."""
    scratch = load(FROM_SCRATCH)
    wall = scratch["wall_from_scratch"]
    earlier = {(r["row"], r["seed"]): r for r in amd_jobs()}
    premise(all(untimed(r) == untimed(earlier[(r["row"], r["seed"])]) for r in scratch["runs"]
                if (r["row"], r["seed"]) in earlier), "Bit for bit across sessions on one kind", HERE)
    lo, hi = session_speed_range()
    ceiling = [x for row, x in session_ratios() if row == "supervised ceiling"]
    cmcr_std = 100 * scratch["summary"]["rows"]["CMCR"]["miou"]["std"]
    return (
        f"- **Wall time: {wall['minutes']:.0f} min**, the bench set's generation and the teacher's training included\n"
        "  (`\"wall_from_scratch\"` in its bench.json). Its jobs summed to "
        f"{scratch['job_minutes']:.0f} min of one-thread compute;\n"
        f"  weighted per row as above, {weighted_compute(scratch['runs']) / committed_minutes():.2f}× the committed compute. "
        f"The same jobs took {lo:.2f}×\n"
        f"  to {hi:.2f}× their time in the earlier session on the same kind of machine (the ceiling "
        f"{times(ceiling)}), so a\n"
        "  machine kind's speed varies by a tenth or two between sessions.\n"
        "- **Bit for bit across sessions on one kind.** The earlier session's 14 jobs (seeds 0, 1, 100, 101)\n"
        "  came out equal in every loss, confusion-matrix count and metric, the two occupancy-only jobs\n"
        "  included, which had resumed from epoch checkpoints there: a resumed job equals an uninterrupted\n"
        "  one.\n"
        "- **A second realization of the table.** Every job differs from its committed one, and the readings\n"
        f"  are the committed ones': {second_realization('brackets')}.\n"
        f"  CMCR's per-seed std is {cmcr_std:.1f} points (the bench asks at most 1.5)."
    )

"""Every bad input to a command line ends it with exit status 2 and ONE line on stderr, ``error: ...``,
that names the bad field, value or file, and writes nothing: no output folder, config.json,
checkpoint or temporary file appears, and files already there are left as they were.

Each case runs the real entry point in a fresh process (``python -W ignore -m ...``) on one thread and
fails before any training or generation, so the whole file takes about a minute on one core. Cases
the other test files already cover are not repeated here: an unknown ``--set`` field, a missing
``--pretrained`` file, a pretrained trunk of the wrong shape, ``--evaluate`` without a checkpoint and a
refused resume (tests/test_downstream_cli.py, tests/test_pretrain.py), a non-empty ``--out`` of the
nuScenes generator (tests/test_synthetic.py) and a mini set of the wrong size (tests/test_mini_split.py).
`python -m experiments` gets the same treatment (a bad `--set` is refused before any job starts).
The last test: a temporary file that a killed save left behind is gone after the next save.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmcr_lite.downstream.config import DownstreamConfig
from cmcr_lite.pretrain import PretrainConfig
from cmcr_lite import runtime
from cmcr_lite.runtime import save_checkpoint_atomic

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
TINY = ["backbone.planes=[8,8,8,8,8,8,8,8]", "backbone.init_dim=8", "batch_size=3"]
_WARNING = re.compile(r"\w*Warning: |^\s*warnings\.warn\(")


@pytest.fixture(scope="module")
def files(tmp_path_factory, synthetic_root):
    """Inputs shared by the cases: checkpoints of both kinds, a truncated one, bad config files, and a
    dataset root whose v1.0-mini folder the devkit cannot load."""
    d = tmp_path_factory.mktemp("inputs")
    torch.save({"epoch": 0, "config": PretrainConfig.lite().to_dict(), "model": {}, "model3d": {}, "optimizer": {},
                "history": [], "rng": {}}, d / "pretraining.pt")
    torch.save({"epoch": 0, "config": DownstreamConfig.lite().to_dict(), "model": {}, "optimizer": {},
                "history": {}}, d / "downstream.pt")
    whole = (d / "pretraining.pt").read_bytes()
    (d / "truncated.pt").write_bytes(whole[:len(whole) // 2])  # as a killed copy leaves it
    (d / "broken.json").write_text('{"lr": ')
    (d / "typed.json").write_text(json.dumps({"tau": "warm"}))
    (d / "wrong_version" / "v1.0-mini").mkdir(parents=True)
    return {"pre": d / "pretraining.pt", "down": d / "downstream.pt", "trunc": d / "truncated.pt",
            "broken": d / "broken.json", "typed": d / "typed.json", "wrong_version": d / "wrong_version",
            "root": synthetic_root}


def _snapshot(folder: Path) -> dict:
    """Every path under ``folder`` (hidden ones included) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _fails_cleanly(module, args, names, work: Path, files: dict, prepare=None):
    """Run ``python -m module args`` in ``work`` (its placeholders ``{work}``, ``{pre}``, ... filled in):
    exit status 2, one stderr line starting ``error:`` that contains every one of ``names``, and
    ``work`` exactly as before (``prepare(work)`` may put files there first)."""
    if prepare is not None:
        prepare(work, files)
    fill = {"work": work, **files}
    argv = [str(a).format(**fill) for a in args]
    before = _snapshot(work)
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", module, *argv], env=ENV, cwd=work,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not _WARNING.search(line)]
    assert done.returncode == 2, f"exit status {done.returncode}\n{done.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for name in names:
        assert str(name).format(**fill) in lines[0], (name, lines[0])
    assert _snapshot(work) == before, f"{module} {argv} wrote {set(_snapshot(work)) ^ set(before)}"
    return lines[0]


def _checkpoint_in_run(which):
    def prepare(work, files):
        (work / "run").mkdir()
        shutil.copy(files[which], work / "run" / "checkpoint.pt")
    return prepare


def _dataset_in_out(work, files):
    (work / "out" / "sequences").mkdir(parents=True)


def _predictions_in_preds(work, files):
    (work / "preds" / "lidarseg").mkdir(parents=True)


# (args, substrings the error line must contain, files to put in the work folder first)
PRETRAIN = {
    "unparsable_float": (["--set", "lr=abc"], ["lr must be a number", "'abc'"], None),
    "unparsable_int": (["--set", "epochs=abc"], ["epochs must be an integer", "'abc'"], None),
    "float_for_int": (["--set", "backbone.init_dim=8.5"], ["backbone.init_dim must be an integer", "8.5"], None),
    "text_for_bool_nested": (["--set", "method=cmcr", "cmcr.mim=yes"], ["cmcr.mim must be true or false", "'yes'"],
                             None),
    "two_levels_deep": (["--set", "pipeline.slic.n_segments=many"], ["pipeline.slic.n_segments", "'many'"], None),
    "number_for_dataclass_cmcr": (["--set", "method=cmcr", "cmcr=3"], ["cmcr must be a JSON object of CMCROptions"],
                                  None),
    "number_for_dataclass_ppkt": (["--set", "method=ppkt", "cmcr=3"], ["cmcr must be a JSON object of CMCROptions"],
                                  None),
    "field_of_a_number": (["--set", "lr.x=1"], ["lr.x", "no such config field"], None),
    "no_equals_sign": (["--set", "epochs"], ["'epochs'", "FIELD=VALUE"], None),
    "out_of_range": (["--set", "epochs=0"], ["epochs=0", ">= 1"], None),
    "negative_seed": (["--set", "seed=-1"], ["seed=-1", ">= 0"], None),
    "unknown_device": (["--set", "device=cuda:x"], ["device='cuda:x'"], None),
    "unknown_option": (["--epochs", "3"], ["unrecognized arguments: --epochs 3"], None),
    "config_not_json": (["--config", "{broken}"], ["{broken}", "JSON"], None),
    "config_bad_type": (["--config", "{typed}"], ["{typed}", "tau must be a number", "'warm'"], None),
    "missing_dataroot": (["--set", "dataroot={work}/nowhere"], ["{work}/nowhere"], None),
    "wrong_version": (["--set", "dataroot={root}", "version=v1.0-mini"], ["'v1.0-mini'", "{root}"], None),
    "resume_truncated": (["--resume"], ["{work}/run/checkpoint.pt", "truncated"], _checkpoint_in_run("trunc")),
    "resume_downstream_checkpoint": (["--resume"], ["{work}/run/checkpoint.pt", "is a downstream checkpoint"],
                                     _checkpoint_in_run("down")),
}


@pytest.mark.parametrize("case", list(PRETRAIN))
def test_pretrain_bad_input(case, tmp_path, files):
    args, names, prepare = PRETRAIN[case]
    _fails_cleanly("cmcr_lite.pretrain", ["--output-dir", "{work}/run", *args], names, tmp_path, files, prepare)


DOWNSTREAM = {
    "label_fraction_zero": (["--label-fraction", "0"], ["label_fraction", "0.0", "(0, 1]"], None),
    "label_fraction_negative": (["--label-fraction", "-1"], ["label_fraction", "-1.0"], None),
    "label_fraction_above_one": (["--label-fraction", "2"], ["label_fraction", "2.0"], None),
    "epochs_zero": (["--epochs", "0"], ["epochs", ">= 1", "got 0"], None),
    "epochs_unparsable": (["--epochs", "x"], ["--epochs", "'x'"], None),
    "unknown_mode": (["--mode", "probe"], ["--mode", "'probe'"], None),
    "set_unparsable": (["--set", "batch_size=abc"], ["batch_size must be an integer", "'abc'"], None),
    "set_number_for_dataclass": (["--set", "backbone=3"], ["backbone must be a JSON object of MinkUNetConfig"], None),
    "set_bad_list_item": (["--set", 'backbone.planes=[8,"a",8,8,8,8,8,8]'], ["backbone.planes must be a list of"],
                          None),
    "negative_seed": (["--seed", "-1"], ["seed", "-1"], None),
    "missing_dataroot": (["--dataroot", "{work}/nowhere"], ["{work}/nowhere"], None),
    "wrong_version": (["--version", "v1.0-mini"], ["'v1.0-mini'", "{root}"], None),
    # tests/test_downstream_cli.py checks the message; here: nothing is written before it is found
    "fraction_keeps_no_scene": (["--label-fraction", "0.01", "--set", *TINY], ["0.01 keeps no scene"], None),
    "evaluate_pretraining_checkpoint": (["--evaluate", "--model", "{pre}"],
                                        ["{pre}", "is a pretraining checkpoint", "--pretrained"], None),
    "evaluate_truncated": (["--evaluate", "--model", "{trunc}"], ["{trunc}", "truncated"], None),
    "pretrained_downstream_checkpoint": (["--pretrained", "{down}", "--set", *TINY],
                                         ["{down}", "is a downstream checkpoint"], None),
    "pretrained_truncated": (["--pretrained", "{trunc}", "--set", *TINY], ["{trunc}", "truncated"], None),
    "resume_truncated": (["--resume", "--set", *TINY], ["{work}/run/checkpoint.pt", "truncated"],
                         _checkpoint_in_run("trunc")),
    "resume_pretraining_checkpoint": (["--resume", "--set", *TINY],
                                      ["{work}/run/checkpoint.pt", "is a pretraining checkpoint"],
                                      _checkpoint_in_run("pre")),
    # earlier predictions are never overwritten; refused before training starts
    "write_predictions_not_empty": (["--write-predictions", "{work}/preds", "--set", *TINY],
                                    ["--write-predictions", "{work}/preds", "not empty"], _predictions_in_preds),
    "write_predictions_a_file": (["--write-predictions", "{pre}", "--set", *TINY],
                                 ["--write-predictions", "{pre}", "is a file"], None),
}


@pytest.mark.parametrize("case", list(DOWNSTREAM))
def test_downstream_bad_input(case, tmp_path, files):
    args, names, prepare = DOWNSTREAM[case]
    _fails_cleanly("cmcr_lite.downstream", ["--output-dir", "{work}/run", *args], names, tmp_path, files, prepare)


INSTANCES = {
    "label_fraction_zero": (["--label-fraction", "0"], ["label_fraction", "0.0", "(0, 1]"]),
    "set_unparsable": (["--set", "batch_size=abc"], ["batch_size must be an integer", "'abc'"]),
    "missing_dataroot": (["--dataroot", "{work}/nowhere"], ["{work}/nowhere"]),
    "wrong_version": (["--version", "v1.0-mini"], ["'v1.0-mini'", "{root}"]),
    "fraction_keeps_no_scene": (["--label-fraction", "0.01", "--set", *TINY], ["0.01 keeps no scene"]),
    "pretrained_downstream_checkpoint": (["--pretrained", "{down}", "--set", *TINY], ["{down}", "is a downstream checkpoint"]),
    "pretrained_truncated": (["--pretrained", "{trunc}", "--set", *TINY], ["{trunc}", "truncated"]),
}


@pytest.mark.parametrize("case", list(INSTANCES))
def test_instances_bad_input(case, tmp_path, files):
    args, names = INSTANCES[case]
    _fails_cleanly("cmcr_lite.downstream.instances", ["--output-dir", "{work}/run", *args], names, tmp_path, files)


SYNTHETIC = {
    "no_scenes": (["--scenes", "0"], ["--scenes", "got 0"]),
    "unparsable_scenes": (["--scenes", "abc"], ["--scenes", "'abc'"]),
    "negative_seed": (["--seed", "-1", "--scenes", "1", "--samples-per-scene", "1"], ["--seed", "-1"]),
    "no_workers": (["--workers", "0"], ["--workers", "got 0"]),
    "preset_and_size": (["--preset", "bench", "--seed", "3"], ["--preset bench", "--seed"]),
    "out_is_a_file": (["--out", "{pre}"], ["{pre}", "not a folder"]),
}


@pytest.mark.parametrize("case", list(SYNTHETIC))
def test_synthetic_bad_input(case, tmp_path, files):
    args, names = SYNTHETIC[case]
    out = [] if "--out" in args else ["--out", "{work}/out"]
    _fails_cleanly("cmcr_lite.data.synthetic", [*out, *args], names, tmp_path, files)


SUPERPIXELS = {
    "missing_dataroot": (["--dataroot", "{work}/nowhere"], ["{work}/nowhere"]),
    "wrong_version": (["--dataroot", "{root}", "--version", "v1.0-mini"], ["'v1.0-mini'", "{root}"]),
    "devkit_cannot_load": (["--dataroot", "{wrong_version}", "--version", "v1.0-mini"],
                           ["the devkit cannot load", "{wrong_version}/v1.0-mini"]),
    "unknown_split": (["--dataroot", "{root}", "--version", "v1.0-synthetic", "--split", "nosuch"], ["'nosuch'"]),
    "negative_workers": (["--dataroot", "{root}", "--version", "v1.0-synthetic", "--workers", "-1"],
                         ["--workers", "-1"]),
    "missing_dataroot_option": (["--version", "v1.0-synthetic"], ["--dataroot"]),
}


@pytest.mark.parametrize("case", list(SUPERPIXELS))
def test_superpixels_bad_input(case, tmp_path, files):
    args, names = SUPERPIXELS[case]
    _fails_cleanly("cmcr_lite.data.superpixels", [*args, "--cache-dir", "{work}/cache"], names, tmp_path, files)


SEMANTICKITTI = {
    "no_frames": (["--frames", "0"], ["--frames", "got 0"], None),
    "unparsable_frames": (["--frames", "x"], ["--frames", "'x'"], None),
    "repeated_sequence": (["--sequences", "0", "0"], ["--sequences", "[0, 0]"], None),
    "no_such_sequence": (["--sequences", "30"], ["--sequences", "[30]"], None),
    "negative_seed": (["--seed", "-1"], ["--seed", "-1"], None),
    "existing_out": ([], ["{work}/out", "--overwrite"], _dataset_in_out),
}


@pytest.mark.parametrize("case", list(SEMANTICKITTI))
def test_semantickitti_bad_input(case, tmp_path, files):
    args, names, prepare = SEMANTICKITTI[case]
    _fails_cleanly("cmcr_lite.data.semantickitti", ["--out", "{work}/out", *args], names, tmp_path, files, prepare)


WHERE = ["--results-dir", "{work}/results", "--output-root", "{work}/runs"]
EXPERIMENTS = {
    "unknown_experiment": (["nosuch"], ["invalid choice: 'nosuch'"]),
    "bench_unparsable_set": (["bench", "--smoke", *WHERE, "--set", "lr=abc"], ["lr must be a number", "'abc'"]),
    "bench_out_of_range_set": (["bench", "--smoke", *WHERE, "--set", "epochs=0"], ["epochs=0", ">= 1"]),
    "bench_aa_seeds_overlap": (["bench", "--smoke", *WHERE, "--aa-seeds", "0"], ["--aa-seeds", "disjoint"]),
    "ladder_unparsable_seed": (["ladder", "--smoke", *WHERE, "--seeds", "x"], ["--seeds", "'x'"]),
    "ladder_zero_weight": (["ladder", "--smoke", *WHERE, "--diagnostic-weights", "0"], ["--diagnostic-weights", "0"]),
    "label_efficiency_bad_set": (["label-efficiency", "--smoke", *WHERE, "--set", "tau=warm"],
                                 ["tau must be a number", "'warm'"]),
    "instances_bad_set": (["instances", "--smoke", *WHERE, "--set", "tau=warm"], ["tau must be a number", "'warm'"]),
    "mechanism_unknown_row": (["mechanism", "--smoke", *WHERE, "--row", "nosuch"], ["--row", "'nosuch'"]),
    "mechanism_zero_every": (["mechanism", "--smoke", *WHERE, "--every", "0"], ["--every", "got 0"]),
}


@pytest.mark.parametrize("case", list(EXPERIMENTS))
def test_experiments_bad_input(case, tmp_path, files):
    args, names = EXPERIMENTS[case]
    _fails_cleanly("experiments", args, names, tmp_path, files)


def test_an_interrupted_save_leaves_no_temporary_after_the_next_save(tmp_path, monkeypatch):
    """A save killed between writing its temporary file and the rename (SIGKILL, the OOM killer)
    cannot delete it; the next save into the folder does. Kept: fresh temporaries (a writer on another
    machine sharing the folder has a process id unknown here) and those of running writers."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id with no process behind it
    run = tmp_path / "run"
    run.mkdir()
    killed = run / f".checkpoint.tmp-{gone.pid}.pt"  # as save_checkpoint_atomic names it
    killed.write_bytes(b"the first half of a checkpoint")
    minutes_ago = time.time() - 5 * 60
    os.utime(killed, (minutes_ago, minutes_ago))
    # this process's own id, from before it started (ids are reused, e.g. after a container restart)
    reused = run / f".config.tmp-{os.getpid()}.json"
    reused.write_text("{")
    days_ago = time.time() - 10 * 24 * 3600
    os.utime(reused, (days_ago, days_ago))
    fresh = run / f".results.tmp-{gone.pid}.json"  # written a moment ago
    fresh.write_text("{")
    save_checkpoint_atomic({"epoch": 3}, run / "checkpoint.pt")
    assert sorted(p.name for p in run.iterdir()) == sorted(["checkpoint.pt", fresh.name])
    assert torch.load(run / "checkpoint.pt", weights_only=True) == {"epoch": 3}
    # a running writer's temporary stays whatever its age (this process's, written since it started)
    monkeypatch.setattr(runtime, "STALE_AFTER_SECONDS", 0.0)
    other = tmp_path / "other"
    other.mkdir()
    running = other / f".results.tmp-{os.getpid()}.json"
    running.write_text("{")
    save_checkpoint_atomic({"epoch": 4}, other / "checkpoint.pt")
    assert sorted(p.name for p in other.iterdir()) == sorted(["checkpoint.pt", running.name])

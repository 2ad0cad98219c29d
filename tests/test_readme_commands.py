"""Every `python -m cmcr_lite.…` / `torchrun … -m cmcr_lite.…` command the README prints runs, through
the real command line, at toy size: the README's own words, with only the dataset, weights and output
paths swapped for toy ones and the sizes shrunk by appended overrides. A README command can then
never break silently again (the CMCR pretraining command once exited at once with a config error).

What is substituted, and why:
  /data/sets/nuscenes-mini    -> a synthetic ``v1.0-mini`` set with the devkit's mini scene names (1 keyframe each)
  /data/sets/nuscenes…        -> a 2-scene synthetic set written as ``v1.0-trainval`` (the full preset's version)
  /weights/moco_v2_…pth.tar   -> a random ResNet-50 saved in the MoCo-v2 checkpoint layout
  /scratch/…, runs/…          -> folders under the test's tmp dir
  torchrun --nproc_per_node N -> 2 CPU processes (gloo); --workers N -> 2
  --label-fraction < 0.5      -> 0.5 (1 % of 2 training scenes keeps none; 0.5 keeps the 2nd)
  sizes                       -> 1 epoch, tiny MinkUNet, 56x104 crops (``TOY_PRETRAIN``, ``TOY_DOWNSTREAM``)
Research-length commands (``experiments.cli``, papermill runs of whole notebooks) are not run here.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmcr_lite.paths import REPO_ROOT

RUN_MODULES = ("cmcr_lite.pretrain", "cmcr_lite.downstream", "cmcr_lite.downstream.instances", "cmcr_lite.downstream.export",
               "cmcr_lite.data.superpixels", "cmcr_lite.data.synthetic")
TOY_PRETRAIN = ["epochs=1", "batch_size=2", "num_matches=64", "backbone.planes=[8,8,8,8,8,8,8,8]",
                "backbone.init_dim=8", "pipeline.crop_size=[56,104]", "pipeline.crop_min_pairs=50",
                "pipeline.occupancy_queries=96", "pipeline.slic.n_segments=30"]
TOY_DOWNSTREAM = ["batch_size=2", "backbone.planes=[8,8,8,8,8,8,8,8]", "backbone.init_dim=8"]


def readme_commands() -> list:
    """Shell commands of the README's bash blocks that call a module of ``RUN_MODULES``
    (backslash continuations joined, comments dropped), in README order."""
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("#") or not line:
                continue
            if any(f"-m {m} " in line + " " for m in RUN_MODULES):
                commands.append(line)
    return commands


def test_readme_prints_every_method_and_preset():
    cmds = readme_commands()
    pretrain = [c for c in cmds if "cmcr_lite.pretrain" in c]
    for method in ("slidr", "cmcr"):
        assert any(f"method={method}" in c for c in pretrain), method
    assert any("method=" not in c for c in pretrain)  # the default method, PPKT
    assert any("--config lite" in c for c in pretrain) and any("--config full" in c for c in pretrain)
    assert any("cmcr_lite.downstream" in c for c in cmds) and any("cmcr_lite.data.superpixels" in c for c in cmds)
    assert any("-m cmcr_lite.downstream.instances" in c and "--config full" in c for c in cmds)
    assert any("-m cmcr_lite.downstream.export" in c for c in cmds)


def _insert_overrides(args: list, overrides: list) -> list:
    """Append ``overrides`` to the command's ``--set`` list (argparse keeps only the last ``--set``)."""
    if "--set" not in args:
        return args + ["--set", *overrides]
    i = args.index("--set") + 1
    while i < len(args) and not args[i].startswith("--"):
        i += 1
    return args[:i] + overrides + args[i:]


def toy_command(line: str, paths: dict) -> list:
    args = shlex.split(line)
    out = []
    for a in args:
        for real, toy in paths.items():  # in order: the mini root before the root it starts with
            a = a.replace(real, toy)
        out.append(a)
    if "--label-fraction" in out and float(out[out.index("--label-fraction") + 1]) < 0.5:
        out[out.index("--label-fraction") + 1] = "0.5"
    if "--workers" in out:
        out[out.index("--workers") + 1] = "2"
    if out[0] == "torchrun":
        n = out.index("--nproc_per_node")
        out = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"] + out[n + 2:]
    elif out[0] == "python":
        out[0] = sys.executable
    module = [a for a in out if a in RUN_MODULES][0]
    if module == "cmcr_lite.pretrain":
        out = _insert_overrides(out, TOY_PRETRAIN)
    elif module in ("cmcr_lite.downstream", "cmcr_lite.downstream.instances"):
        if "--evaluate" not in out:
            out += ["--epochs", "1"]
        out = _insert_overrides(out, TOY_DOWNSTREAM)
    return out


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory, synthetic_root):
    """The substitutions: a toy 'real' dataset, fake MoCo weights, output folders."""
    from cmcr_lite.data.synthetic import generate
    from cmcr_lite.models.image_encoder import ResNet50

    tmp = tmp_path_factory.mktemp("readme")
    root = generate(tmp / "nuscenes", n_scenes=2, seed=1, samples_per_scene=1, version="v1.0-trainval",
                    progress=False)
    torch.manual_seed(0)
    resnet = ResNet50()
    moco = {"state_dict": {f"module.encoder_q.{k}": v for k, v in resnet.state_dict().items()
                           if not k.startswith("fc.")}}
    weights = tmp / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(moco, weights)
    mini = generate(tmp / "nuscenes-mini", seed=2, samples_per_scene=1, version="v1.0-mini", progress=False)
    from cmcr_lite.data.semantickitti import write_synthetic

    kitti = write_synthetic(tmp / "semantickitti", sequences=(0, 1, 8), frames_per_sequence=2)
    return {"/data/sets/semantickitti/dataset": str(kitti),
            "/data/sets/nuscenes-mini": str(mini), "/data/sets/nuscenes": str(root),
            "/weights/moco_v2_800ep_pretrain.pth.tar": str(weights),
            "/scratch/": f"{tmp}/scratch/", "runs/": f"{tmp}/runs/"}, tmp


def test_every_readme_command_runs_at_toy_size(toy_world):
    """In README order, so that a command may use what an earlier one wrote (a checkpoint, superpixels)."""
    paths, tmp = toy_world
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive",
           "CMCR_DATAROOT": os.environ.get("CMCR_DATAROOT", str(REPO_ROOT / "data" / "nuscenes-synthetic"))}
    ran = []
    for line in readme_commands():
        cmd = toy_command(line, paths)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp)
        assert done.returncode == 0, f"README command failed: {line}\nran: {shlex.join(cmd)}\n{done.stderr[-4000:]}"
        ran.append(line)
        if "cmcr_lite.downstream.instances" in line:  # the devkit's scores, written where the README says
            out_dir = Path(cmd[cmd.index("--output-dir") + 1])
            results = json.loads(((tmp / out_dir) if not out_dir.is_absolute() else out_dir).joinpath("results.json")
                                 .read_text())
            assert results["eval_set"] == "cmcr_val" and 0 <= results["panoptic"]["all"]["PQ"] <= 1
            assert "mean_ap" in results["detection"] and "nd_score" in results["detection"]
        if "cmcr_lite.pretrain" in line:
            out_dir = Path(cmd[cmd.index("--output-dir") + 1])
            if not out_dir.is_absolute():
                out_dir = tmp / out_dir
            state = torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
            assert state["epoch"] == 0 and state["history"][0]["steps"] >= 1
            assert any(p.name.startswith("events.") for p in (out_dir / "tensorboard").iterdir())
    assert len(ran) == len(readme_commands()) >= 5


@pytest.mark.parametrize("module", RUN_MODULES)
def test_module_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr[-2000:]


def test_resnet50_without_weights_is_an_error_naming_the_moco_file(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cmcr_lite.pretrain", "--config", "full", "--output-dir",
                           str(tmp_path), "--set", "dataroot=/nonexistent"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "moco_v2_800ep_pretrain.pth.tar" in done.stderr and "random_image_encoder" in done.stderr
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("method", ["ppkt", "slidr", "cmcr"])
def test_every_method_runs_at_the_lite_preset(method, tmp_path):
    """The README prints the lite preset for CMCR only; the same command for each method."""
    line = f"python -m cmcr_lite.pretrain --config lite --output-dir runs/{method} --set method={method}"
    cmd = toy_command(line, {"runs/": f"{tmp_path}/"})
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"})
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / method / "config.json").read_text())
    assert config["method"] == method and config["pipeline"]["superpixels"] == (method == "slidr")
    assert config["pipeline"]["mim_masks"] == config["pipeline"]["occupancy"] == (method == "cmcr")
    assert torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)["epoch"] == 0

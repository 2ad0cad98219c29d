"""The per-term gradient diagnostic: each term's gradient is autograd's on that term alone, the terms
add up to the total's gradient, and switching the diagnostic on changes no weight."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cmcr_lite.cmcr import CMCROptions
from cmcr_lite.data.pipeline import PairedScanDataset, batch_to_sparse_tensor, collate_pairs
from cmcr_lite.gradients import gradient_shares, term_gradients
from cmcr_lite.models.image_encoder import SmallImageTeacher
from cmcr_lite.pretrain import build_model, training_losses, trunk_gradient_shares

from conftest import tests_on_pythonpath
from test_cmcr import replace_small, tiny


def _one_step(tmp_path, keyframes, options):
    cfg = tiny(tmp_path, replace_small(options))
    torch.manual_seed(0)
    model = build_model(cfg, SmallImageTeacher(width=8, stride=4)).train()
    batch = collate_pairs([PairedScanDataset(keyframes, cfg.pipeline, seed=0)[i] for i in range(2)])
    terms = training_losses(model, cfg, batch, batch_to_sparse_tensor(batch, torch.device("cpu")),
                            torch.Generator().manual_seed(0))
    return cfg, model, terms


def _grad_of(loss, params):
    """The reference: ``loss.backward()`` into zeroed ``.grad`` fields, flattened."""
    for p in params:
        p.grad = None
    loss.backward(retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])


def test_each_term_is_autograd_on_that_term_and_they_add_up_to_the_total(tmp_path, two_keyframes):
    _, model, terms = _one_step(tmp_path, two_keyframes, CMCROptions())
    weights = model.term_weights()
    assert set(weights) == {"nce", "orth", "cmcm", "commit_points", "commit_pixels", "mim", "occupancy", "intensity"}
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    grads = term_gradients(terms, weights, params)
    for name, w in weights.items():
        reference = _grad_of(w * terms[name], params)
        assert torch.allclose(grads[name], reference, rtol=1e-5, atol=1e-8), name
    total = _grad_of(terms["loss"], params)
    assert torch.allclose(sum(grads.values()), total, rtol=1e-4, atol=1e-7)
    assert total.norm() > 0 and grads["nce"].norm() > 0 and grads["occupancy"].norm() > 0


def test_shares_follow_their_definitions():
    g = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([1.0, 2.0]), "zero": torch.zeros(2)}
    s = gradient_shares(g)
    total = torch.tensor([4.0, 2.0])
    assert s["total"]["norm"] == pytest.approx(float(total.norm()))
    assert s["a"]["norm"] == pytest.approx(3.0)
    assert s["a"]["cosine"] == pytest.approx(12.0 / (3.0 * float(total.norm())))
    assert s["a"]["share"] == pytest.approx(12.0 / 20.0) and s["b"]["share"] == pytest.approx(8.0 / 20.0)
    assert sum(v["share"] for k, v in s.items() if k != "total") == pytest.approx(1.0)
    assert s["zero"] == {"norm": 0.0, "cosine": 0.0, "share": 0.0}


# Two pretrainings, diagnostic off and on, in a child process on one OpenMP thread: with several threads
# MinkowskiEngine sums in a varying order, so even two identical runs differ in the last bits.
_LOOP_RUNS = """
import copy, json, sys, tempfile
from pathlib import Path
import torch
from test_cmcr import replace_small, tiny
from cmcr_lite.cmcr import CMCROptions
from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
from cmcr_lite.models.image_encoder import SmallImageTeacher
from cmcr_lite.pretrain import pretrain
kf = copy.copy(NuScenesKeyframes(sys.argv[2], "v1.0-synthetic", split="train"))
kf.sample_tokens = kf.sample_tokens[:2]
runs = {}
for every in (0, 1):
    torch.manual_seed(0)
    cfg = tiny(Path(tempfile.mkdtemp()), replace_small(CMCROptions()), gradient_every=every)
    runs[every] = pretrain(cfg, progress=False, keyframes=copy.copy(kf), image_trunk=SmallImageTeacher(width=8, stride=4))
weights = [runs[e]["model"].backbone.state_dict() for e in (0, 1)]
print(json.dumps({"same_weights": all(torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values())),
                  "losses": [runs[e]["history"][0]["loss"] for e in (0, 1)],
                  "steps": runs[1]["history"][0]["steps"], "off_has_gradients": "gradients" in runs[0]["history"][0],
                  "records": runs[1]["history"][0]["gradients"], "terms": list(runs[1]["model"].term_weights())}))
"""


def test_the_loop_records_shares_every_n_steps_and_changes_no_weight(synthetic_root):
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _LOOP_RUNS, str(Path(__file__).parent), str(synthetic_root)],
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tests_on_pythonpath()},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["off_has_gradients"]
    assert [r["step"] for r in got["records"]] == list(range(got["steps"]))
    assert set(got["records"][0]) == {"step", "total", *got["terms"]}
    assert got["same_weights"] and got["losses"][0] == got["losses"][1]


def test_ppkt_has_one_term(tmp_path, two_keyframes):
    cfg, model, terms = _one_step(tmp_path, two_keyframes, CMCROptions())
    ppkt_cfg = replace(cfg, method="ppkt")
    torch.manual_seed(0)
    ppkt = build_model(ppkt_cfg, SmallImageTeacher(width=8, stride=4)).train()
    batch = collate_pairs([PairedScanDataset(two_keyframes, ppkt_cfg.pipeline, seed=0)[i] for i in range(2)])
    t = training_losses(ppkt, ppkt_cfg, batch, batch_to_sparse_tensor(batch, torch.device("cpu")),
                        torch.Generator().manual_seed(0))
    shares = trunk_gradient_shares(ppkt, ppkt_cfg, t)
    assert set(shares) == {"loss", "total"} and shares["loss"]["share"] == pytest.approx(1.0)

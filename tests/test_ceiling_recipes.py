"""experiments/ceiling_recipes.py at toy size: each recipe's ceiling job runs with its own batch size and
learning rate (the step count per epoch follows the batch size), what it prints is read from the
jobs' own results, and a second call reads the jobs back instead of training again."""
import json
import math

from conftest import VERSION

from experiments import ceiling_recipes


def test_recipes_train_with_their_own_batch_and_rate_and_resume(tmp_path, synthetic_root, capsys):
    argv = ["--epochs", "1", "--seeds", "0", "--recipe", "b2_lr0.05", "b4_lr0.1", "--out", str(tmp_path),
            "--dataset", "notebook", "--dataroot", str(synthetic_root), "--version", VERSION]
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes

    n_train = len(NuScenesKeyframes(synthetic_root, VERSION, split="train"))
    lines = ceiling_recipes.main(argv)
    printed = capsys.readouterr().out
    steps = {}
    for line, name in zip(lines, ("b2_lr0.05", "b4_lr0.1")):
        job = json.loads((tmp_path / f"{name}_1ep" / "supervised_ceiling_seed0.json").read_text())
        recipe = ceiling_recipes.RECIPES[name]
        assert job["sizes"]["ceiling"] == recipe and job["sizes"]["ceiling_epochs"] == 1
        assert job["history"]["lr"][0] == recipe["lr"]          # the cosine schedule starts at the recipe's rate
        steps[name] = len(job["history"]["step_loss"])
        assert steps[name] == math.ceil(n_train / recipe["batch_size"])  # one epoch, the last batch partial
        # json.dumps: the toy val set has no car or truck, so that pair is NaN on both sides
        assert json.dumps([line["miou"], line["car|truck"]]) == json.dumps([job["miou"], job["per_pair"]["car|truck"]])
        assert f"{name:>10}   1 ep  mIoU {100 * job['miou']:5.1f}" in printed
    assert steps["b2_lr0.05"] > steps["b4_lr0.1"]                # a smaller batch makes more steps per pass
    again = ceiling_recipes.main(argv)
    assert json.dumps(again) == json.dumps(lines)                                       # read back, not retrained: the same seconds

"""environment.yml (GPU, conda) and requirements.txt (CPU, pip) pin the same versions."""
import re

from cmcr_lite.paths import REPO_ROOT


def _pins(text):
    return dict(re.findall(r"^[\s-]*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, flags=re.M))


def test_pip_pins_agree():
    req = _pins((REPO_ROOT / "requirements.txt").read_text())
    env = _pins((REPO_ROOT / "environment.yml").read_text())
    assert len(req) >= 10
    assert req == env, {k: (req.get(k), env.get(k)) for k in set(req) | set(env) if req.get(k) != env.get(k)}


def test_installed_versions_match_pins():
    from importlib.metadata import version

    req = _pins((REPO_ROOT / "requirements.txt").read_text())
    wrong = {name: (pin, version(name)) for name, pin in req.items() if version(name) != pin}
    assert not wrong, f"installed versions differ from requirements.txt: {wrong}"

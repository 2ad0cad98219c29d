"""Apply MinkowskiEngine 0.5.4's Python-3.10+/torch-2 compatibility fixes in place (idempotent).

ME 0.5.4 (2021) imports ``Sequence`` from ``collections`` (moved to ``collections.abc`` in Python
3.10) and ``torch._six`` (removed in torch 2.x, imported but unused in ``utils/gradcheck.py``).
We patch the installed files rather than fork ME; each fix is one exact line.
"""
import importlib.util
import pathlib

FIXES = {
    "from collections import Sequence, namedtuple\n":
        "from collections import namedtuple\nfrom collections.abc import Sequence\n",
    "from collections import Sequence\n": "from collections.abc import Sequence\n",
    "from torch._six import container_abcs, istuple\n": "import collections.abc as container_abcs\n",
}

spec = importlib.util.find_spec("MinkowskiEngine")
if spec is None or spec.origin is None:
    raise SystemExit("MinkowskiEngine is not installed in this environment")
root = pathlib.Path(spec.origin).parent
changed = []
for path in sorted(root.rglob("*.py")):
    text = path.read_text()
    new = text
    for old, fixed in FIXES.items():
        new = new.replace(old, fixed)
    if new != text:
        path.write_text(new)
        changed.append(str(path.relative_to(root)))
if changed:
    print("[setup] patched MinkowskiEngine:", ", ".join(changed))

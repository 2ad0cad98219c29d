#!/usr/bin/env bash
# Create or reuse the project virtualenv (.venv) with every pinned dependency.
#
#   bash tools/setup_env.sh          # idempotent: a second run takes seconds
#
# Steps: Debian's OpenBLAS (MinkowskiEngine links to it) -> venv -> torch==2.13.0 (CPU wheel)
# -> requirements.txt -> MinkowskiEngine 0.5.4 built CPU-only once, its wheel cached in
# $CMCR_WHEEL_CACHE (default ~/.cache/cmcr-lite/wheels, outside git) -> the project itself
# (editable) -> a Jupyter kernel named "python3" inside the venv, for JupyterLab, papermill and nbval.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMCR_VENV:-.venv}
WHEELS=${CMCR_WHEEL_CACHE:-$HOME/.cache/cmcr-lite/wheels}
PY=${PYTHON:-python3}
STAMP="$VENV/.cmcr-setup-$(cat requirements.txt pyproject.toml tools/setup_env.sh | sha1sum | cut -c1-12)"

if [ -f "$STAMP" ]; then
  exit 0  # everything below already done for these exact pins
fi

if ! ldconfig -p | grep -q libopenblas; then
  echo "[setup] installing Debian's libopenblas-dev (needed to build MinkowskiEngine)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas-dev >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip<26" wheel setuptools
# CPU wheel that lies on this machine's disk; a GPU box should use environment.yml instead.
$PIP install -q torch==2.13.0
$PIP install -q -r requirements.txt

if ! "$VENV/bin/python" -c "import MinkowskiEngine" 2>/dev/null; then
  mkdir -p "$WHEELS"
  whl=$(ls "$WHEELS"/[Mm]inkowski[Ee]ngine-0.5.4-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    echo "[setup] building MinkowskiEngine 0.5.4 CPU-only (about 6 minutes, once; cached in $WHEELS)"
    $PIP install -q ninja
    tmp=$(mktemp -d)
    # sdist build: no build isolation so it compiles against the torch installed above.
    $PIP wheel --no-build-isolation --no-deps -w "$tmp" \
      -C--global-option=--blas=openblas -C--global-option=--cpu_only MinkowskiEngine==0.5.4
    mv "$tmp"/*.whl "$WHEELS"/   # move only a finished wheel into the cache
    rm -rf "$tmp"
    whl=$(ls "$WHEELS"/[Mm]inkowski[Ee]ngine-0.5.4-*.whl | head -1)
  fi
  $PIP install -q --no-deps "$whl"
fi
# Python-3.11 compatibility of ME 0.5.4 (idempotent source fixes in the installed files).
"$VENV/bin/python" tools/patch_minkowski.py

$PIP install -q --no-deps -e .
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cmcr-lite)" >/dev/null
# Every IPython kernel of this venv (JupyterLab, papermill, nbval) loads the notebooks' display defaults
# (plotly renderer, figure width: cmcr_lite.notebook.load_ipython_extension) before a notebook's first cell.
mkdir -p "$VENV/etc/ipython"
echo '{"IPKernelApp": {"extensions": ["cmcr_lite.notebook"]}}' >"$VENV/etc/ipython/ipython_kernel_config.json"
"$VENV/bin/python" -c "import torch, MinkowskiEngine as ME, nuscenes; print('[setup] torch', torch.__version__, '| MinkowskiEngine', ME.__version__)"
rm -f "$VENV"/.cmcr-setup-*
touch "$STAMP"

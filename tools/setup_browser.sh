#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver, for tests/test_browser.py only (`make test` runs this;
# the notebooks and `make demo` do not need a browser). selenium, the Python side, is pinned in
# requirements.txt. Idempotent: nothing to do when both commands are there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
echo "[setup] installing Debian's chromium and chromium-driver (for tests/test_browser.py)"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null

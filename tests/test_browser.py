"""The notebooks as a reader sees them: JupyterLab from the venv on a loopback port, opened in Debian's
headless Chromium (tools/setup_browser.sh) through selenium.

* Every notebook `make demo` executed (outputs/notebooks/) renders with no error output, its formulas
  typeset, every image loaded and every plotly figure drawn by JupyterLab's plotly extension; the file is
  at most 2 MB and each plotly figure also carries a PNG for static renderers (GitHub, nbconvert).
* Opening a committed notebook (notebooks/) leaves it byte-identical: its metadata is what the project's
  kernel reports (tools/py2nb.py), so JupyterLab marks nothing modified and autosave, here every second
  instead of every two minutes, writes nothing.

JupyterLab serves copies in a temporary folder, with its own settings and kernel folders, so a failure
never rewrites a committed notebook and a user's Jupyter set-up changes nothing here.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmcr_lite.paths import REPO_ROOT
from test_notebook_sources import _py2nb

COMMITTED = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
EXECUTED = REPO_ROOT / "outputs" / "notebooks"  # written by `make demo`
MAX_BYTES = 2_000_000
PLOTLY = "application/vnd.plotly.v1+json"
# JupyterLab user settings for the test server: autosave every second (a notebook marked modified is
# rewritten at once), every cell rendered (windowing renders only the cells in view), no news fetched.
SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosaveInterval": 1},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# What the page shows of the open notebook: counts to compare with the notebook file, and what went wrong.
PAGE_STATE = """
const panel = window.jupyterapp && jupyterapp.shell.currentWidget;
if (!panel || !panel.context || !panel.context.isReady || !panel.content) return null;
const node = panel.content.node;
const images = [...node.querySelectorAll('.jp-RenderedImage img, .jp-MarkdownOutput img')];
// plotly's JupyterLab extension shows an output's PNG until the mouse enters it, then draws the figure there
const plots = [...node.querySelectorAll('.jp-RenderedPlotly.js-plotly-plot')];
const noWebGL = p => p.textContent.includes('WebGL is not supported');
// plotly sets visible = false on a trace whose data it cannot read
const drawn = p => p.querySelector('.main-svg') && p._fullData && p._fullData.some(t => t._length > 0)
  && p._fullData.every(t => t.visible !== false) && !noWebGL(p);
const rawMath = [...node.querySelectorAll('.jp-MarkdownOutput')].map(m => {
  const text = m.cloneNode(true);
  text.querySelectorAll('mjx-container, code, pre').forEach(e => e.remove());
  return text.textContent;
}).filter(t => /\\$|\\\\\\(|\\\\\\[/.test(t)).map(t => t.trim().slice(0, 80));
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return {
  outputs: node.querySelectorAll('.jp-OutputArea-output').length,
  stderr: [...node.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.textContent.slice(0, 200)),
  images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
  plotly_outputs: node.querySelectorAll('.jp-RenderedPlotly').length, drawn: plots.filter(drawn).length,
  formulas: node.querySelectorAll('mjx-container').length, raw_math: rawMath,
  kernel: kernel ? kernel.status : null, dirty: panel.context.model.dirty,
};
"""


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path
    originals: dict  # served path -> the bytes copied there

    def api(self, method: str, path: str):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(nb: dict) -> list:
    """The notebook's outputs as JupyterLab shows them: consecutive stream outputs of one name merged."""
    shown = []
    for cell in nb["cells"]:
        last = None
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream" and last is not None and last.get("name") == out["name"]:
                continue
            shown.append(out)
            last = out if out["output_type"] == "stream" else None
    return shown


def _is_plotly(out: dict) -> bool:
    """A plotly figure in any of plotly's renderers: its JSON mimetype, or HTML that loads plotly.js."""
    data = out.get("data", {})
    return PLOTLY in data or "plotly" in "".join(data.get("text/html", "")).lower()


def _executed(lab, name: str) -> Path:
    """The served copy of outputs/notebooks/<name>, checked to be executed from the served notebooks/<name>."""
    executed = lab.root / "outputs" / "notebooks" / name
    if not executed.is_file():
        pytest.fail(f"outputs/notebooks/{name} is missing: run `make demo` first")
    sources = [c["source"] for c in json.loads(lab.originals[f"notebooks/{name}"])["cells"]]
    if [c["source"] for c in json.loads(executed.read_text())["cells"]] != sources:
        pytest.fail(f"outputs/notebooks/{name} was executed from an older notebooks/{name}: run `make demo`")
    return executed


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving copies of notebooks/ and outputs/notebooks/ (the project's layout)."""
    root, home = tmp_path_factory.mktemp("lab"), tmp_path_factory.mktemp("jupyter")
    (root / "notebooks").mkdir()
    (root / "outputs" / "notebooks").mkdir(parents=True)
    for nb in COMMITTED:
        shutil.copy2(nb, root / "notebooks")
        if (EXECUTED / nb.name).is_file():
            shutil.copy2(EXECUTED / nb.name, root / "outputs" / "notebooks")
    for plugin, values in SETTINGS.items():
        path = home / "settings" / f"{plugin.replace(':', '/')}.jupyterlab-settings"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    port, token, log = _free_port(), secrets.token_hex(16), home / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI runs as root
    with open(log, "w") as log_file:
        server = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=root)
    originals = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.glob("*/**/*.ipynb")}
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log, originals)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                lab.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 90 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield lab
    finally:
        server.terminate()  # JupyterLab shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Debian's chromium and chromium-driver are not installed: run `make browser` "
                    "(bash tools/setup_browser.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # a laptop-sized window; software WebGL for plotly's 3D views (there is no GPU); root needs no sandbox
    for arg in ("--headless=new", "--window-size=1440,900", "--enable-unsafe-swiftshader", "--no-sandbox",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    session = webdriver.Chrome(options=options, service=Service(driver))
    session.set_script_timeout(30)
    yield session
    session.quit()


def _open(browser, lab, path: str):
    """Open ``path`` (relative to the served folder) in a fresh JupyterLab workspace."""
    browser.get(f"{lab.url}/lab/workspaces/{secrets.token_hex(4)}/tree/{path}?token={lab.token}")


def _wait(browser, until, what: str, timeout: float = 120) -> dict:
    """Poll the open notebook's state until ``until(state)``; the state."""
    deadline, state = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        state = browser.execute_script(PAGE_STATE)
        if state is not None and until(state):
            return state
        time.sleep(0.5)
    pytest.fail(f"{what} not reached within {timeout:.0f} s; the page shows {state}")


def _close_kernels(lab):
    for session in lab.api("GET", "/api/sessions"):
        lab.api("DELETE", f"/api/sessions/{session['id']}")


def test_the_project_kernel_reports_the_committed_metadata_and_its_display_defaults():
    """The kernel tools/setup_env.sh installs: the metadata JupyterLab would write is the committed one,
    plotly figures come as plotly's mimetype plus a PNG, and a wide pyplot figure is born JupyterLab-wide."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from cmcr_lite.viz import JUPYTERLAB_WIDTH_PX, MAX_FIGURE_WIDTH_IN

    kernels = KernelSpecManager(kernel_dirs=[os.path.join(sys.prefix, "share", "jupyter", "kernels")])
    spec = kernels.get_kernel_spec("python3")
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=kernels)
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        language_info = client.kernel_info(reply=True, timeout=60)["content"]["language_info"]
        request = client.execute("import matplotlib.pyplot as plt, plotly.graph_objects as go\n"
                       "go.Figure(go.Scatter(x=list(range(200)), y=list(range(200)))).show()\n"
                       "fig = plt.figure(figsize=(20, 3))\n"
                       "print(*fig.get_size_inches().round(2), round(fig.get_size_inches()[0] * fig.dpi))")
        shown = []
        while True:
            msg = client.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != request:
                continue
            if msg["msg_type"] in ("display_data", "stream", "error"):
                shown.append(msg["content"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    reported = {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": "python3"},
                "language_info": language_info}
    assert reported == _py2nb().KERNEL_METADATA, (
        "JupyterLab would rewrite every committed notebook on open: set tools/py2nb.py's KERNEL_METADATA to "
        f"{reported} and run `make notebooks`")
    assert not [m for m in shown if "ename" in m], shown
    assert sorted(shown[0]["data"]) == ["application/vnd.plotly.v1+json", "image/png"], shown[0]["data"].keys()
    assert shown[0]["data"][PLOTLY]["data"][0]["x"]["dtype"] == "i4"  # a typed array, not a JSON list
    # a 20 x 3 inch figure is scaled down whole to 11 inches and drawn 900 px wide
    assert shown[1]["text"].split() == [str(MAX_FIGURE_WIDTH_IN), str(round(3 * MAX_FIGURE_WIDTH_IN / 20, 2)),
                                        str(JUPYTERLAB_WIDTH_PX)], shown[1]["text"]


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.stem)
def test_executed_notebook_renders_in_jupyterlab(committed, lab, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    executed = _executed(lab, committed.name)
    size = executed.stat().st_size
    assert size <= MAX_BYTES, f"{executed.name} is {size / 1e6:.1f} MB, over {MAX_BYTES / 1e6:.0f} MB"
    nb = json.loads(executed.read_text())
    outputs = _outputs(nb)
    assert not [o for o in outputs if o["output_type"] == "error"], "the notebook stopped on an error"
    plots = [o for o in outputs if _is_plotly(o)]
    assert all(o["data"].get("image/png") for o in plots), "a plotly figure without its PNG for static renderers"
    images = sum(("image/png" in o.get("data", {})) and not _is_plotly(o) for o in outputs)
    stderr = sum(o["output_type"] == "stream" and o["name"] == "stderr" for o in outputs)  # warnings, progress bars
    formulas = any("$" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    path = f"outputs/notebooks/{executed.name}"

    def shown(s):
        return (s["outputs"] == len(outputs) and s["loaded"] == s["images"] == images
                and s["plotly_outputs"] == len(plots) and (s["formulas"] > 0) == formulas and not s["raw_math"])

    try:
        _open(browser, lab, path)
        # an idle kernel too: closing a kernel that is still starting leaves a traceback in JupyterLab's log
        state = _wait(browser, lambda s: (shown(s) and s["kernel"] == "idle") or len(s["stderr"]) > stderr,
                      f"{path}: every output shown")
        assert len(state["stderr"]) == stderr, f"{path} shows error output: {state['stderr']}"
        for plot in browser.find_elements(By.CSS_SELECTOR, ".jp-RenderedPlotly"):
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
            ActionChains(browser).move_to_element(plot).perform()  # a reader's mouse: plotly draws the figure
        state = _wait(browser, lambda s: s["drawn"] == len(plots), f"{path}: every plotly figure drawn")
    finally:
        _close_kernels(lab)
    assert shown(state) and state["drawn"] == len(plots), state


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda p: p.stem)
def test_opening_a_committed_notebook_leaves_it_byte_identical(committed, lab, browser):
    path = f"notebooks/{committed.name}"
    try:
        _open(browser, lab, path)
        _wait(browser, lambda s: s["kernel"] == "idle", f"{path}: an idle kernel")
        time.sleep(3)  # JupyterLab has set the kernel's metadata; autosave (every second) has had its turns
        state = browser.execute_script(PAGE_STATE)
    finally:
        _close_kernels(lab)
    assert not state["dirty"], f"JupyterLab marks {path} modified on open"
    assert (lab.root / path).read_bytes() == lab.originals[path], f"opening {path} in JupyterLab rewrote it"


def test_jupyterlab_logged_no_traceback(lab, browser):
    """A traceback in JupyterLab's log is a broken server extension (httpx>=0.28: the extension manager)."""
    log = lab.log.read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]

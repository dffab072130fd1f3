"""A chapter in a real JupyterLab, run the way a reader runs it.

A JupyterLab server (this Python's ``jupyterlab``) is started on 127.0.0.1 at a free port, with
a token, the repository as its root, and temporary Jupyter config, data, runtime, settings and
IPython folders, so nothing of the user's own Jupyter set-up is read or written. The chapter is
copied, without its stored outputs, into a temporary folder inside chapters/ (toylib is
installed, so it imports from anywhere); the copy is deleted afterwards and the original is
checked to be byte-for-byte unchanged. Autosave is off in the temporary settings, and the copy
is never saved.

The system's headless Chromium (``apt-get install chromium``; never a downloaded browser),
through Python playwright, opens the copy in JupyterLab, chooses Run > Run All Cells from the
menu bar, waits until every code cell has run and the kernel is idle, and then checks what the
reader sees: no error output, the widget panel with its "Run" button, at least one figure
(an <img> that loaded), and at least one Mermaid diagram drawn as an SVG. Requests for any host
other than 127.0.0.1 are blocked and must not happen. A second test then presses the panel's
Run button and expects the panel to show the rerun's figure. Screenshots are kept in
test-artifacts/jupyterlab/. The server is shut down through its API (which stops the kernel),
also when a test fails; should it not stop, its process group is sent SIGTERM
(on which the server stops its kernels), then SIGKILL.

Where no Chromium is installed, or playwright is missing, the test skips and says why.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                       reason="no chromium: apt-get install chromium"),
]

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "chapters" / "ch02_chatty.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "jupyterlab"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SERVER_START_S = 90
RUN_ALL_S = 300          # the chapter takes about 30 s; a slow shared machine gets room
RENDER_S = 30
PANEL_RUN_S = 60       # the panel's rerun takes about 5 s

# Temporary user settings: no autosave (the copy is never written back), no news or update
# check (each would be a request to a third-party host).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}

# The state of the run, read from the page: code cells, those still queued or running ("[*]"),
# those with an execution count, and the kernel's status from the notebook toolbar.
RUN_STATE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
      .map(p => p.textContent.trim());
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return {
    code_cells: prompts.length,
    running: prompts.filter(t => t.includes('*')).length,
    executed: prompts.filter(t => /\\[\\d+\\]/.test(t)).length,
    last: prompts.length ? prompts[prompts.length - 1] : '',
    kernel: indicator ? indicator.getAttribute('data-status') : null,
  };
}"""
KERNEL_READY_JS = """() => {
  const name = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName, .jp-KernelName');
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return !!name && !/no kernel/i.test(name.textContent) && !!indicator
      && indicator.getAttribute('data-status') === 'idle';
}"""
RUN_STARTED_JS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""
# JupyterLab 4 draws a ```mermaid block as an SVG, shown as a data:image/svg+xml <img> inside a
# <figure> of .jp-RenderedMermaid (.jp-mod-warning when Mermaid could not parse it). Figures are
# the other images of the outputs (matplotlib's PNGs).
# The panel's state after a click on its Run button: is the button disabled (the kernel is
# running the experiment), and does the panel's own output area (a widget Output beside the
# button) show a figure that loaded.
PANEL_JS = """() => {
  const b = [...document.querySelectorAll('.jp-OutputArea-output button.widget-button')]
      .find(b => b.textContent.trim() === 'Run');
  const panel = b && b.closest('.jp-OutputArea-output');
  const img = panel && panel.querySelector('.widget-output img');
  return {running: !!b && b.disabled,
          figure: !!img && img.complete && img.naturalWidth > 0};
}"""
SEEN_JS = """() => {
  const nb = document.querySelector('.jp-Notebook');
  const loaded = i => i.complete && i.naturalWidth > 0;
  const imgs = [...nb.querySelectorAll('.jp-OutputArea-output img')]
      .filter(i => !i.closest('.jp-RenderedMermaid'));
  const diagrams = [...nb.querySelectorAll('.jp-RenderedMermaid:not(.jp-mod-warning)')]
      .filter(d => [...d.querySelectorAll('img')].some(
          i => i.src.startsWith('data:image/svg+xml') && loaded(i)));
  return {
    errors: [...nb.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]')]
        .map(e => e.textContent.slice(0, 500)),
    figures: imgs.filter(loaded).length,
    images: imgs.length,
    mermaid_svgs: diagrams.length,
    mermaid_errors: nb.querySelectorAll('.jp-RenderedMermaid.jp-mod-warning').length,
    widgets: nb.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
    run_buttons: [...nb.querySelectorAll('.jp-OutputArea-output button.widget-button, '
                                         + '.jp-OutputArea-output .jupyter-button')]
        .filter(b => b.textContent.trim() === 'Run' && b.getBoundingClientRect().width > 0)
        .length,
  };
}"""



def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5.0):
    req = urllib.request.Request(base + path, method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


class LabServer:
    """``jupyter lab`` on 127.0.0.1 with throwaway Jupyter folders; ``stop`` always cleans up."""

    def __init__(self, home: Path):
        self.home = home
        self.port = _free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}/"
        self.log_path = home / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def env(self) -> dict:
        env = dict(os.environ)
        dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython",
                "JUPYTERLAB_SETTINGS_DIR": "config/lab/user-settings",
                "JUPYTERLAB_WORKSPACES_DIR": "config/lab/workspaces"}
        for var, sub in dirs.items():
            (self.home / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(self.home / sub)
        env.pop("JUPYTER_TOKEN", None)
        for rel, value in LAB_SETTINGS.items():
            f = self.home / "config" / "lab" / "user-settings" / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        return env

    def start(self) -> None:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={ROOT}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             # The extension manager would query a package index; read-only it queries nothing.
             "--LabApp.extension_manager=readonly",
             "--LabApp.news_url="]
            # CI containers often run as root, which Jupyter refuses without this flag.
            + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            cwd=self.home, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)     # its own process group, signalled as a whole
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited {self.proc.returncode}:\n{self.log()}")
            try:
                if _api(self.base, self.token, "api/status", timeout=2)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"jupyter lab did not answer in {SERVER_START_S} s:\n{self.log()}")

    def _signal_group(self, sig) -> None:
        """Signal the server's process group (on SIGTERM the server stops its kernels)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask the server to shut down (it stops its kernels first); kill it if it will not."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                _api(self.base, self.token, "api/shutdown", method="POST", timeout=10)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="module")
def sync_api():
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def lab(sync_api, tmp_path_factory):
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chapter_copy():
    """The chapter without its stored outputs, in a temporary folder inside chapters/."""
    nbformat = pytest.importorskip("nbformat")
    before = _sha256(CHAPTER)
    folder = Path(tempfile.mkdtemp(prefix="_jupyterlab_test_", dir=CHAPTER.parent))
    try:
        nb = nbformat.read(CHAPTER, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
        copy = folder / CHAPTER.name
        nbformat.write(nb, copy)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert _sha256(CHAPTER) == before, f"{CHAPTER.relative_to(ROOT)} was modified"


def _wait_for_run(page) -> dict:
    """Until every code cell has an execution count, none is queued and the kernel is idle."""
    deadline = time.monotonic() + RUN_ALL_S
    settled_since = None
    while True:
        s = page.evaluate(RUN_STATE_JS)
        done = (s["code_cells"] and not s["running"] and s["executed"] == s["code_cells"]
                and s["kernel"] == "idle")
        if done:
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > 1.0:   # idle, and still idle a second later
                return s
        else:
            settled_since = None
        if time.monotonic() > deadline:
            raise AssertionError(f"the chapter did not finish running in {RUN_ALL_S} s: {s}")
        page.wait_for_timeout(500)


class Reader:
    """The browser tab in which the chapter ran, and what was seen once it had run."""

    def __init__(self, page, state: dict, seen: dict, external: list[str],
                 console_errors: list[str]):
        self.page, self.state, self.seen = page, state, seen
        self.external, self.console_errors = external, console_errors

    def __repr__(self) -> str:   # what a failing test prints for its argument
        return f"<JupyterLab run: {self.state}, {self.seen}>"


@pytest.fixture(scope="module")
def reader(sync_api, lab, chapter_copy):
    """Open the copy in JupyterLab, Run > Run All Cells, wait for the end and the rendering."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    rel = chapter_copy.relative_to(ROOT).as_posix()
    external: list[str] = []
    console_errors: list[str] = []

    def route(r):
        url = r.request.url
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            external.append(url)
            r.abort()
        else:
            r.continue_()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{lab.base}lab/tree/{rel}?token={lab.token}", wait_until="load")
                # The notebook is open and its kernel has started (before that, the toolbar
                # says "No Kernel" and the execution indicator already reads idle).
                page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible")
                page.wait_for_function(KERNEL_READY_JS, timeout=90_000)

                # Run > Run All Cells, from the menu bar, as a reader would.
                page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).click()
                # The first cell leaves the "not yet run" state before we wait for the end.
                page.wait_for_function(RUN_STARTED_JS)
                state = _wait_for_run(page)

                # Outputs render asynchronously (images decode, Mermaid lays out, widgets
                # attach): give them until everything looked for is there, or RENDER_S.
                deadline = time.monotonic() + RENDER_S
                while True:
                    seen = page.evaluate(SEEN_JS)
                    if (seen["figures"] and seen["mermaid_svgs"] and seen["run_buttons"]) \
                            or time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(300)
                page.screenshot(path=str(ARTIFACTS / "02_chatty_apis.png"))
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "02_chatty_apis_failed.png"))
                raise
            yield Reader(page, state, seen, external, console_errors)
            context.close()
        finally:
            browser.close()


def test_the_chapter_runs_and_renders_in_jupyterlab(reader):
    seen = reader.seen
    print(f"JupyterLab: {reader.state}, {seen}; console errors: {len(reader.console_errors)}")
    assert not seen["errors"], "cells raised errors:\n" + "\n".join(seen["errors"])
    assert seen["run_buttons"] >= 1, f"no widget panel with a Run button rendered: {seen}"
    assert seen["figures"] >= 1, f"no figure rendered ({seen['images']} <img> in outputs)"
    assert seen["mermaid_svgs"] >= 1, f"no Mermaid diagram rendered as SVG: {seen}"
    assert not seen["mermaid_errors"], f"Mermaid could not draw a diagram: {seen}"
    assert not reader.external, "requests to other hosts (blocked):\n" + "\n".join(
        sorted(set(reader.external)))


def test_the_panels_run_button_shows_a_result(sync_api, reader):
    """The reader presses Run: the kernel reruns the small experiment, the panel shows it."""
    page = reader.page
    button = page.locator(".jp-OutputArea-output button.widget-button",
                          has_text=re.compile(r"^\s*Run\s*$")).first
    assert button.count(), "no Run button"
    button.scroll_into_view_if_needed()
    button.click()
    # The button is disabled while the experiment runs (a few seconds), then enabled again;
    # the figure, if the panel shows one, arrives with the end of the run.
    deadline = time.monotonic() + PANEL_RUN_S
    ran = False
    while time.monotonic() < deadline:
        state = page.evaluate(PANEL_JS)
        ran = ran or state["running"]
        if state["figure"] and not state["running"]:
            break
        if ran and not state["running"]:          # finished: the figure has 3 s to appear
            deadline = min(deadline, time.monotonic() + 3)
        page.wait_for_timeout(200)
    shown = page.evaluate(PANEL_JS)["figure"]
    page.screenshot(path=str(ARTIFACTS / "02_chatty_apis_panel.png"))
    assert shown, f"the panel's Run button showed no figure within {PANEL_RUN_S} s"

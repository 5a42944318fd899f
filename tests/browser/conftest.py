"""Fixtures of the real-browser test: a throw-away JupyterLab server and a headless chromium.

Run through `make test-browser`, which sets MOE_LIB_BROWSER_TEST=1; anywhere else (a plain `pytest`) these
tests are skipped, so the quick suite never starts a browser.

Everything the run writes lives in `.browser-test/` at the repository root (git-ignored): a copy of the
notebooks (JupyterLab never touches the committed ones), the server's settings, runtime files and log,
chromium's profile and caches, the decks `make slides` would build, and the screenshots.

The browser is offline: every request to a host other than 127.0.0.1 is aborted (and recorded, so a test can
say that a page tried to reach the network).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".browser-test"
WORK = OUT / "work"  # the server's root: copies of the notebooks
SCREENSHOTS = OUT / "screenshots"
ENABLED = os.environ.get("MOE_LIB_BROWSER_TEST") == "1"

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
SERVER_START_S = 90
HTTP_TIMEOUT_S = 10

# JupyterLab user settings for the run: no news popup, no autosave (the copies stay as they are), and every
# cell in the DOM (no windowing), so the test sees all outputs without scrolling.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # RISE's default theme ("simple") asks Google Fonts for its fonts; "white" uses fonts shipped in the bundle.
    "jupyterlab-rise/plugin.jupyterlab-settings": {"theme": "white"},
}
LOCAL_HOSTS = {"127.0.0.1"}


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="real-browser test: run `make test-browser`")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if pytest dies, so a killed run leaves no server behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class LabServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the folder it serves
    process: subprocess.Popen
    log: Path

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str, workspace: str) -> str:
        """A throw-away workspace (reset on load), so no earlier layout is restored."""
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        for session in self.api("/api/sessions"):
            try:
                self.api(f"/api/sessions/{session['id']}", method="DELETE")
            except urllib.error.URLError:
                pass

    def stop(self) -> None:
        """/api/shutdown with the token, then the process group: SIGTERM, SIGKILL."""
        try:
            self.api("/api/shutdown", method="POST")
        except (urllib.error.URLError, OSError, ValueError):
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue


def _prepare_workdir() -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "notebooks").mkdir(parents=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, WORK / "notebooks" / notebook.name)
    settings = OUT / "lab-user-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="session", autouse=ENABLED)
def fresh_screenshots():
    """The screenshots of this run only."""
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    SCREENSHOTS.mkdir(parents=True)


@pytest.fixture(scope="session")
def lab_server() -> LabServer:
    _prepare_workdir()
    token = os.urandom(16).hex()
    port = _free_port()
    log = OUT / "server.log"
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(OUT / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(OUT / "jupyter-runtime"),
        "JUPYTER_DATA_DIR": str(OUT / "jupyter-data"),
        "IPYTHONDIR": str(OUT / "ipython"),
        "MPLCONFIGDIR": env.get("MPLCONFIGDIR", str(ROOT / ".venv" / "mplconfig")),
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTERLAB_SETTINGS_DIR": str(OUT / "lab-user-settings"),  # RISE's own app reads its settings here
    })
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={WORK / 'notebooks'}",
        f"--LabApp.user_settings_dir={OUT / 'lab-user-settings'}",
        f"--LabApp.workspaces_dir={OUT / 'lab-workspaces'}",
        "--LabApp.expose_app_in_browser=True",
        "--ServerApp.shutdown_no_activity_timeout=1800",  # a forgotten server ends by itself
        "--MappingKernelManager.cull_idle_timeout=1800",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=WORK, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    server = LabServer(f"http://127.0.0.1:{port}", token, WORK / "notebooks", process, log)
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                server.api("/api/status")
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in {SERVER_START_S} s:\n"
                                       f"{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield server
    finally:
        server.stop()


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (make test-browser does it)")
    return path


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    profile = OUT / "chromium-home"
    env = dict(os.environ)
    env.update({"HOME": str(profile), "XDG_CONFIG_HOME": str(profile / "config"),
                "XDG_CACHE_HOME": str(profile / "cache")})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS,
                                             env=env, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def offline(context) -> list[str]:
    """Abort every request of `context` to a host other than 127.0.0.1; returns the list of those it aborted."""
    aborted: list[str] = []

    def handle(route):
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            aborted.append(url)
            route.abort("internetdisconnected")
        else:  # 127.0.0.1, file:, data:, blob:
            route.continue_()

    context.route("**/*", handle)
    return aborted


@pytest.fixture
def page(browser, lab_server):
    """A fresh page in its own offline context; dialogs (beforeunload after running cells) are accepted.

    `page.aborted` lists the requests to other hosts that were refused."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    context.set_default_timeout(60_000)
    aborted = offline(context)
    page = context.new_page()
    page.aborted = aborted
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        yield page
    finally:
        try:
            page.close(run_before_unload=False)
            context.close()
        finally:
            lab_server.shutdown_kernels()


# -- the decks of `make slides`, and the server of `make present` ------------------------------------------------------

DECKS = OUT / "decks"


@pytest.fixture(scope="session")
def decks() -> Path:
    """Every notebook built into a deck, as `make slides` does, in .browser-test/decks/."""
    from moe_lib.teach import slides

    if DECKS.exists():
        shutil.rmtree(DECKS)
    built = slides.build_decks(sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), DECKS)
    network = {b.source.name: w for b in built for w in b.warnings if "network" in w}
    assert not network, network  # (alt texts and the like: tests/notebooks/test_decks.py)
    return DECKS


@pytest.fixture(scope="session")
def present_server(decks) -> str:
    """`make present`'s server (python -m moe_lib.teach.slides serve) on a free 127.0.0.1 port; its URL."""
    port = _free_port()
    log = OUT / "present.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moe_lib.teach.slides", "serve", "--dir", str(decks), "--port", str(port)],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/index.html", timeout=HTTP_TIMEOUT_S):
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the deck server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        for sig in (signal.SIGINT, signal.SIGKILL):
            if process.poll() is not None:
                break
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def deck_page(browser):
    """A fresh offline page for a deck; `page.aborted` (requests refused) and `page.problems` (errors) collect."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
    context.set_default_timeout(30_000)
    aborted = offline(context)
    page = context.new_page()
    page.aborted = aborted
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url} {r.failure}"))
    try:
        yield page
    finally:
        context.close()

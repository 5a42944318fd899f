"""The Makefile's `lab` target: a busy port is reported and the target stops (JupyterLab would otherwise move
to another port without a word)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_on_a_busy_port_says_so_and_stops():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # -o: never (re)install the venv from this test; PY: this interpreter, wherever the tests run
        # a clean make: not a sub-make of `make test`'s -j3 (whose jobserver would add a warning on stderr)
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        result = subprocess.run(["make", "-s", "-o", ".venv/.installed-stamp", "lab", f"PORT={port}",
                                 f"PY={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                env=env)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (f"make lab: port {port} is busy (another JupyterLab?); stop what uses "
                                             f"it, or pick another: make lab PORT={port + 1}")
    assert "jupyter" not in result.stdout.lower()  # stopped before JupyterLab started


def test_make_lab_never_moves_to_another_port():
    recipe = (ROOT / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "--port=$(PORT) --ServerApp.port_retries=0" in recipe


def test_make_lab_opens_the_learners_workspace_with_the_news_popup_off():
    recipe = (ROOT / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "--ServerApp.root_dir=workspace" in recipe and "workspace" in recipe.split("jupyter lab")[0]
    assert '"fetchNews": "false"' in recipe and "$(LAB_OVERRIDES)" in recipe
    assert "/workspace/" in (ROOT / ".gitignore").read_text().splitlines()  # study never dirties tracked files

"""JupyterLab in a real browser: every notebook runs top to bottom, renders its figures, and its widgets answer.

For each notebook in notebooks/ (not the solutions), and for a gallery of the `moe_lib.teach.widgets` explorers:
open it in a throw-away workspace, run all cells, and check

* every code cell ran, and no output is an error or stderr (in the notebook model and in the page);
* every figure output is an <img> that the browser decoded;
* every widget rendered, and moving its first slider one step (keyboard, like a user) changes the figure
  the kernel draws below it.

Screenshots go to .browser-test/screenshots/. Each wait has a timeout; nothing waits forever.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".browser-test" / "work"  # as in conftest.py: the server's folder, copies of the notebooks
SCREENSHOTS = ROOT / ".browser-test" / "screenshots"
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
GALLERY = "widgets_gallery.ipynb"  # written into the server's folder by the test below
KERNEL_READY_S = 120
RUN_ALL_S = 480  # the slowest notebook takes ~90 s under nbval on 2 cores; the browser adds little
WIDGET_REACTION_S = 60
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

GALLERY_CELLS = [
    "import moe_lib  # first: the Triton interpreter without a GPU\n"
    "from moe_lib.teach.widgets import alignment_explorer, routing_explorer, tp_explorer",
    "routing_explorer()",
    "alignment_explorer()",
    "tp_explorer()",
]

# -- JavaScript run in the page (window.jupyterapp exists because of --LabApp.expose_app_in_browser) -------
JS_NOTEBOOK_OPEN = """(name) => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  return !!(w && w.context && w.context.path.endsWith(name) && w.sessionContext && w.content);
}"""

JS_KERNEL_STATUS = """async () => {
  const w = window.jupyterapp.shell.currentWidget;
  await w.context.ready;
  await w.sessionContext.ready;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  return kernel ? kernel.status : 'no kernel';
}"""

JS_RUN_ALL = """async (ms) => {
  const app = window.jupyterapp;
  const limit = new Promise((_, reject) => setTimeout(() => reject(new Error('run-all timed out')), ms));
  return await Promise.race([app.commands.execute('notebook:run-all-cells'), limit]);
}"""

JS_CELLS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const result = [];
  const cells = w.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    const node = w.content.widgets[i].node;
    const imgs = [...node.querySelectorAll('.jp-OutputArea-output img')];
    result.push({
      index: i,
      source: cell.sharedModel.getSource().slice(0, 80),
      count: cell.executionCount,
      outputs: cell.outputs.toJSON().map(o => ({
        type: o.output_type, name: o.name || null, ename: o.ename || null, evalue: o.evalue || null,
        mimes: o.data ? Object.keys(o.data) : [],
      })),
      images: imgs.length,
      decoded: imgs.filter(img => img.complete && img.naturalWidth > 0).length,
    });
  }
  return result;
}"""

# Error / stderr outputs anywhere on the page (also inside widget Output areas).
ERROR_SELECTOR = ('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], '
                  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')

JS_WIDGET_STATE = """(index) => {
  // interact/interactive nest an (empty) Output area of their own next to the figure's: look in all of them.
  const node = window.jupyterapp.shell.currentWidget.content.widgets[index].node;
  const areas = [...node.querySelectorAll('.widget-output')];
  const img = areas.map(a => a.querySelector('img')).find(i => i);
  const stdout = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]';
  const text = areas.map(a => [...a.querySelectorAll(stdout)].map(e => e.textContent).join('')).join('');
  return {
    widgets: node.querySelectorAll('.jupyter-widgets').length,
    sliders: node.querySelectorAll('.noUi-handle').length,
    src: img ? img.getAttribute('src') : null,
    decoded: img ? (img.complete && img.naturalWidth > 0) : false,
    text: text,
    readout: [...node.querySelectorAll('.widget-readout')].map(e => e.textContent.trim()),
  };
}"""


def _write_gallery() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in GALLERY_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, WORK / "notebooks" / GALLERY)


def _open(page, lab_server, name: str) -> None:
    workspace = "bt-" + re.sub(r"[^a-z0-9]+", "-", name.lower())
    page.goto(lab_server.lab_url(name, workspace), wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function(JS_NOTEBOOK_OPEN, arg=name, timeout=90_000)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # more room for the notebook
    deadline = time.monotonic() + KERNEL_READY_S
    while (status := page.evaluate(JS_KERNEL_STATUS)) != "idle":
        assert time.monotonic() < deadline, f"{name}: kernel not idle after {KERNEL_READY_S} s ({status})"
        time.sleep(0.5)


def _run_all(page, name: str) -> list[dict]:
    page.evaluate(JS_RUN_ALL, RUN_ALL_S * 1000)
    deadline = time.monotonic() + 60
    while True:  # run-all resolves when the last cell finished; let the outputs reach the DOM
        cells = page.evaluate(JS_CELLS)
        pending = [c for c in cells if c["count"] is None]
        undecoded = [c for c in cells if c["decoded"] < c["images"]]
        if (not pending and not undecoded) or time.monotonic() > deadline:
            return cells
        time.sleep(0.5)


def _check_cells(name: str, cells: list[dict], page) -> None:
    assert cells, f"{name}: no code cells found"
    for cell in cells:
        for out in cell["outputs"]:
            assert out["type"] != "error", f"{name} cell {cell['index']}: {out['ename']}: {out['evalue']}"
            assert out["name"] != "stderr", f"{name} cell {cell['index']} wrote to stderr ({cell['source']!r})"
    not_run = [c["index"] for c in cells if c["count"] is None]
    assert not not_run, f"{name}: cells {not_run} did not run (run-all stopped early)"
    for cell in cells:
        figures = sum("image/png" in o["mimes"] for o in cell["outputs"])
        assert cell["images"] >= figures, f"{name} cell {cell['index']}: {figures} figures, {cell['images']} <img>"
        assert cell["decoded"] == cell["images"], f"{name} cell {cell['index']}: an <img> was not decoded"
    errors = page.locator(ERROR_SELECTOR)
    assert errors.count() == 0, f"{name}: error output on the page: {errors.first.inner_text()[:500]}"


def _widget_cells(cells: list[dict]) -> list[dict]:
    return [c for c in cells if any(WIDGET_MIME in o["mimes"] for o in c["outputs"])]


def _move_first_slider(page, index: int) -> None:
    """One step to the right, with the keyboard, as a user would: focus the handle, press ArrowRight."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    handle = cell.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed(timeout=10_000)
    handle.focus(timeout=10_000)
    handle.press("ArrowRight", timeout=10_000)


def _check_widget_responds(page, name: str, cell: dict) -> str:
    index = cell["index"]
    state = page.evaluate(JS_WIDGET_STATE, index)
    assert state["widgets"] > 0, f"{name} cell {index}: the widget did not render"
    assert state["sliders"] > 0, f"{name} cell {index}: no slider"
    assert state["src"] and state["decoded"], f"{name} cell {index}: the widget shows no figure"
    _move_first_slider(page, index)
    deadline = time.monotonic() + WIDGET_REACTION_S
    while True:
        after = page.evaluate(JS_WIDGET_STATE, index)
        if after["src"] and after["decoded"] and after["src"] != state["src"]:
            break
        assert time.monotonic() < deadline, (
            f"{name} cell {index}: the figure did not change within {WIDGET_REACTION_S} s after moving the slider "
            f"(readouts {state['readout']} -> {after['readout']})")
        time.sleep(0.3)
    assert after["readout"] != state["readout"], f"{name} cell {index}: the slider's readout did not move"
    if state["text"]:  # an explorer also prints a line about what it drew
        assert after["text"] and after["text"] != state["text"], f"{name} cell {index}: the text did not change"
    assert page.locator(ERROR_SELECTOR).count() == 0, f"{name}: error output after moving the slider"
    page.locator(".jp-Notebook .jp-Cell").nth(index).scroll_into_view_if_needed()
    return f"{state['readout']} -> {after['readout']}"


JS_SCROLL_TO_OUTPUT = """(index) => {
  const node = window.jupyterapp.shell.currentWidget.content.widgets[index].node;
  (node.querySelector('.jp-Cell-outputWrapper') || node).scrollIntoView({block: 'start'});
}"""


def _screenshot(page, name: str, index: int | None, suffix: str) -> Path:
    """The page scrolled so that the output of cell `index` starts at the top."""
    if index is not None:
        page.evaluate(JS_SCROLL_TO_OUTPUT, index)
        time.sleep(0.3)
    path = SCREENSHOTS / f"{Path(name).stem}-{suffix}.png"
    page.screenshot(path=str(path), timeout=30_000)
    return path


def _exercise(page, lab_server, name: str) -> dict:
    _open(page, lab_server, name)
    cells = _run_all(page, name)
    _check_cells(name, cells, page)
    first_figure = next((c["index"] for c in cells if c["images"]), None)
    _screenshot(page, name, first_figure, "figure")
    moves = []
    for cell in _widget_cells(cells):
        moves.append(_check_widget_responds(page, name, cell))
        _screenshot(page, name, cell["index"], f"widget-{cell['index']}")
    return {"cells": len(cells), "figures": sum(c["images"] for c in cells), "widgets": moves}


def _committed_widgets(name: str) -> int:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return sum(any(WIDGET_MIME in o.get("data", {}) for o in c.get("outputs", [])) for c in nb.cells)


@pytest.mark.parametrize("name", NOTEBOOKS, ids=[Path(n).stem for n in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(page, lab_server, name, record_property):
    summary = _exercise(page, lab_server, name)
    record_property("summary", json.dumps(summary))
    assert len(summary["widgets"]) == _committed_widgets(name), f"{name}: widgets {summary['widgets']}"
    assert page.aborted == [], f"{name}: JupyterLab tried to reach the network (offline here): {page.aborted}"


def test_widgets_gallery(page, lab_server):
    """The moe_lib.teach.widgets explorers, each in its own cell: rendered, and redrawn when a slider moves."""
    _write_gallery()
    summary = _exercise(page, lab_server, GALLERY)
    assert len(summary["widgets"]) == 3, summary


def test_the_checks_catch_errors_and_stderr(page, lab_server):
    """The test can fail: a notebook that raises, or writes to stderr, is reported."""
    for source, expected in [("import sys\nprint('careful', file=sys.stderr)", "stderr"), ("1 / 0", "ZeroDivision")]:
        name = f"broken_{expected.lower()}.ipynb"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell("2")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, WORK / "notebooks" / name)
        _open(page, lab_server, name)
        cells = _run_all(page, name)
        with pytest.raises(AssertionError, match=expected):
            _check_cells(name, cells, page)

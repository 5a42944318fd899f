"""Live slides in JupyterLab (jupyterlab-rise), offline, as a lecturer starts them.

For two notebooks with math: open it in JupyterLab, run it, and start RISE with its command ("Open as Reveal
Slideshow", which opens a second tab). In that tab: reveal.js is in slide mode, the math is typeset by JupyterLab's
MathJax (bundled, no CDN) with no raw `$` left, the notes cells are speaker notes, the right arrow moves on, and a
code cell runs from the slide (Shift+Enter) on the notebook's kernel. Every request to a host other than 127.0.0.1
is aborted, and RISE must not try one. Screenshots go to .browser-test/screenshots/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".browser-test" / "screenshots"
KERNEL_READY_S = 120
RUN_ALL_S = 300


def _has_math(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "markdown" and "$" in c.source for c in nb.cells)


RISE_NOTEBOOKS = [p.name for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) if _has_math(p)][:2]

JS_OPEN = """(name) => {
  const w = window.jupyterapp && window.jupyterapp.shell && window.jupyterapp.shell.currentWidget;
  return !!(w && w.context && w.context.path.endsWith(name) && w.sessionContext && w.content);
}"""

JS_KERNEL = """async () => {
  const w = window.jupyterapp.shell.currentWidget;
  await w.context.ready;
  await w.sessionContext.ready;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status : 'no kernel';
}"""

JS_RUN_ALL = """async (ms) => {
  const limit = new Promise((_, reject) => setTimeout(() => reject(new Error('run-all timed out')), ms));
  return await Promise.race([window.jupyterapp.commands.execute('notebook:run-all-cells'), limit]);
}"""

JS_RISE = r"""() => {
  const reveal = document.querySelector('.reveal');
  const slides = document.querySelector('.reveal .slides');
  if (!reveal || !slides) return null;
  const md = [...slides.querySelectorAll('.jp-RenderedMarkdown')].map(e => {
    const c = e.cloneNode(true);
    c.querySelectorAll('pre, code, mjx-container, script').forEach(x => x.remove());
    return c.textContent;
  }).join(' ');
  const present = slides.querySelector('section.present');
  return {
    ready: reveal.classList.contains('ready'),
    rise: document.body.classList.contains('rise-enabled'),
    sections: slides.querySelectorAll('section').length,
    math: slides.querySelectorAll('mjx-container').length,
    raw: (md.match(/\$[^$\n]{0,40}/g) || []).slice(0, 5),
    notes: slides.querySelectorAll('aside.notes').length,
    present: present ? present.innerText.slice(0, 80) : null,
  };
}"""

JS_PROMPT = """() => {
  const p = document.querySelector('.reveal .slides section.present .jp-CodeCell .jp-InputPrompt');
  return p ? p.textContent.trim() : null;
}"""

# The code cell of the present slide gets a mark, so its prompt can be read after RISE moved on (Shift+Enter
# runs the cell, then goes to the next one).
JS_MARK = """() => {
  const cell = document.querySelector('.reveal .slides section.present .jp-CodeCell');
  cell.setAttribute('data-moe-probe', '1');
  return cell.querySelector('.jp-InputPrompt').textContent.trim();
}"""

JS_MARKED_PROMPT = """() => document.querySelector('[data-moe-probe] .jp-InputPrompt').textContent.trim()"""


def _count(name: str, slide_type: str) -> int:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return sum(c.metadata.get("slideshow", {}).get("slide_type") == slide_type for c in nb.cells)


@pytest.mark.skipif(len(RISE_NOTEBOOKS) < 2, reason="fewer than two notebooks with math")
@pytest.mark.parametrize("name", RISE_NOTEBOOKS, ids=[Path(n).stem for n in RISE_NOTEBOOKS])
def test_rise_presents_the_notebook_from_jupyterlab(page, lab_server, name, record_property):
    workspace = "rise-" + re.sub(r"[^a-z0-9]+", "-", name.lower())
    page.goto(lab_server.lab_url(name, workspace), wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function(JS_OPEN, arg=name, timeout=90_000)
    deadline = time.monotonic() + KERNEL_READY_S
    while page.evaluate(JS_KERNEL) != "idle":
        assert time.monotonic() < deadline, f"{name}: kernel not idle after {KERNEL_READY_S} s"
        time.sleep(0.5)
    page.evaluate(JS_RUN_ALL, RUN_ALL_S * 1000)  # the lecturer runs the notebook, then presents it

    page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex = 0")
    with page.expect_popup(timeout=30_000) as popup_info:
        page.evaluate("() => window.jupyterapp.commands.execute('RISE:slideshow')")
    rise = popup_info.value
    rise.on("dialog", lambda dialog: dialog.accept())
    assert "/rise/" in rise.url, rise.url
    rise.wait_for_selector(".reveal.ready", timeout=90_000)
    rise.wait_for_function("() => document.querySelectorAll('.reveal .slides mjx-container').length > 0",
                           timeout=60_000)
    state = rise.evaluate(JS_RISE)
    assert state["ready"] and state["rise"], f"{name}: RISE did not enter slide mode: {state}"
    # a <section> per slide, and one inside it per sub-slide (its first included), as nbconvert does
    assert state["sections"] == 2 * _count(name, "slide") + _count(name, "subslide"), state
    assert state["raw"] == [], f"{name}: raw TeX on RISE's slides: {state['raw']}"
    assert state["notes"] == _count(name, "notes"), f"{name}: speaker notes in RISE: {state}"
    rise.screenshot(path=str(SCREENSHOTS / f"rise-{Path(name).stem}-title.png"), timeout=30_000)

    # the right arrow moves on; on a slide with code, Shift+Enter runs it on the notebook's kernel
    first = state["present"]
    for _ in range(12):
        rise.keyboard.press("ArrowRight")
        time.sleep(0.8)
        if rise.evaluate(JS_PROMPT) is not None:
            break
    assert rise.evaluate(JS_RISE)["present"] != first, f"{name}: the right arrow did not move to the next slide"
    assert rise.evaluate(JS_PROMPT) is not None, f"{name}: no slide with a code cell in the first 12"
    before = rise.evaluate(JS_MARK)
    # as a lecturer does: click the cell's prompt (selects it, keyboard focus on the notebook), Shift+Enter
    rise.locator(".reveal .slides section.present .jp-CodeCell .jp-InputPrompt").first.click()
    rise.keyboard.press("Shift+Enter")
    deadline = time.monotonic() + 60
    while True:
        errors = rise.locator('.reveal .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
        assert errors.count() == 0, f"{name}: running the cell in RISE failed: {errors.first.inner_text()[:300]}"
        prompt = rise.evaluate(JS_MARKED_PROMPT)
        if re.fullmatch(r"\[\d+\]:", prompt or "") and prompt != before:
            break
        assert time.monotonic() < deadline, f"{name}: the cell did not run from RISE ({before} -> {prompt})"
        time.sleep(0.5)
    time.sleep(0.5)
    rise.screenshot(path=str(SCREENSHOTS / f"rise-{Path(name).stem}-code.png"), timeout=30_000)
    assert page.aborted == [], f"{name}: JupyterLab or RISE tried to reach the network: {page.aborted}"
    record_property("rise_cell_ran", f"{before} -> {prompt}")
    print(f"{name}: RISE ran a cell: {before} -> {prompt}")
    rise.close(run_before_unload=False)

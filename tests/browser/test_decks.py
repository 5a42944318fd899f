"""The decks of `make slides` in a real browser, offline: from `make present`'s server and opened from disk.

Every request to a host other than 127.0.0.1 is aborted (conftest.offline), and a deck must not even try one.
For each deck: reveal.js starts; the math is MathML that the browser lays out (no raw `$`); every figure is a
decoded <img>; the right-arrow key moves to the next slide; the notes cells are speaker notes, and the speaker view
(S key) shows them. Screenshots go to .browser-test/screenshots/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".browser-test" / "screenshots"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]


def _cells(name: str):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells


def _count(name: str, slide_type: str) -> int:
    return sum(c.metadata.get("slideshow", {}).get("slide_type") == slide_type for c in _cells(name))


JS_READY = "() => !!(window.Reveal && Reveal.isReady && Reveal.isReady())"

JS_DECK = r"""() => {
  const slides = document.querySelector('.reveal .slides');
  const maths = [...slides.querySelectorAll('math')];
  const clone = slides.cloneNode(true);
  clone.querySelectorAll('pre, code, annotation, script, style, aside.notes').forEach(e => e.remove());
  const text = clone.textContent;
  const imgs = [...slides.querySelectorAll('img')];
  return {
    total: Reveal.getTotalSlides(),
    maths: maths.length,
    mathml: maths.filter(m => m instanceof MathMLElement && m.namespaceURI === 'http://www.w3.org/1998/Math/MathML').length,
    laidOut: maths.filter(m => getComputedStyle(m).display.includes('math')).length,
    raw: (text.match(/\$[^$\n]{0,40}|\\(frac|begin|sum|mathrm|text)\b/g) || []).slice(0, 5),
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    withoutAlt: imgs.filter(i => !(i.getAttribute('alt') || '').trim()).length,
    notes: slides.querySelectorAll('aside.notes').length,
    notesPlugin: !!Reveal.getPlugin('notes'),
  };
}"""

JS_GO_TO = """(selector) => {
  const el = document.querySelector('.reveal .slides ' + selector);
  if (!el) return null;
  const section = el.closest('section');
  const at = Reveal.getIndices(section);
  Reveal.slide(at.h, at.v);
  return at;
}"""

JS_MATH_BOX = """() => {
  const m = document.querySelector('.reveal .slides section.present math');
  if (!m) return null;
  const r = m.getBoundingClientRect();
  return {width: r.width, height: r.height};
}"""


def _open(page, url: str) -> None:
    page.goto(url, wait_until="load", timeout=60_000)
    page.wait_for_function(JS_READY, timeout=30_000)


def _check_deck(page, name: str, url: str) -> dict:
    _open(page, url)
    deck = page.evaluate(JS_DECK)
    sections = _count(name, "slide") + _count(name, "subslide")
    assert deck["total"] == sections, f"{name}: {deck['total']} slides, the notebook has {sections}"
    assert deck["maths"] > 0, f"{name}: no math in the deck"
    assert deck["mathml"] == deck["maths"] == deck["laidOut"], f"{name}: math not laid out as MathML: {deck}"
    assert deck["raw"] == [], f"{name}: raw TeX on the slides: {deck['raw']}"
    assert deck["images"] > 0 and deck["decoded"] == deck["images"], f"{name}: figures not decoded: {deck}"
    assert deck["notesPlugin"], f"{name}: the speaker-notes plugin did not load"
    assert deck["notes"] == _count(name, "notes"), f"{name}: {deck['notes']} speaker notes in the deck"

    # a formula on screen has a size (the browser drew it), and the right arrow moves on
    at = page.evaluate(JS_GO_TO, 'math[display="block"]') or page.evaluate(JS_GO_TO, "math")
    time.sleep(0.6)  # the slide transition
    box = page.evaluate(JS_MATH_BOX)
    assert box and box["width"] > 5 and box["height"] > 5, f"{name}: the formula on slide {at} is not drawn: {box}"
    page.screenshot(path=str(SCREENSHOTS / f"deck-{name}-math.png"), timeout=30_000)
    page.evaluate("() => Reveal.slide(0, 0)")
    page.locator("body").press("ArrowRight")
    page.wait_for_function("() => Reveal.getIndices().h === 1", timeout=10_000)
    return deck


@pytest.mark.parametrize("name", NAMES)
def test_deck_from_the_present_server(deck_page, present_server, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _check_deck(deck_page, name, f"{present_server}/{name}.slides.html")
    assert deck_page.aborted == [], f"{name}: the deck tried to reach the network: {deck_page.aborted}"
    assert deck_page.problems == [], deck_page.problems


@pytest.mark.parametrize("name", NAMES)
def test_deck_opened_from_disk(deck_page, decks, name):
    _check_deck(deck_page, name, (decks / f"{name}.slides.html").as_uri())
    assert deck_page.aborted == [] and deck_page.problems == [], (deck_page.aborted, deck_page.problems)


def test_index_links_every_deck(deck_page, present_server):
    deck_page.goto(f"{present_server}/", wait_until="load")
    links = deck_page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))")
    assert links == [f"{n}.slides.html" for n in NAMES]


NOTED = [n for n in NAMES if _count(n, "notes")]


@pytest.mark.skipif(not NOTED, reason="no notebook has speaker notes yet")
def test_the_speaker_view_shows_the_notes(deck_page, present_server):
    """S opens reveal.js's speaker view (a second window): the current slide's notes, the next slide, a timer."""
    name = NOTED[0]
    _open(deck_page, f"{present_server}/{name}.slides.html")
    deck_page.evaluate("() => Reveal.slide(Reveal.getHorizontalSlides().length - 1, 0)")  # away from the notes
    with deck_page.expect_popup(timeout=20_000) as popup_info:
        deck_page.locator("body").press("s")  # the lecturer opens the speaker view, then moves through the deck
    speaker = popup_info.value
    speaker.wait_for_selector(".speaker-controls-notes", state="attached", timeout=20_000)
    deck_page.evaluate(JS_GO_TO, "aside.notes")
    expected = deck_page.evaluate(
        "() => document.querySelector('.reveal .slides section.present aside.notes').textContent")
    words = re.findall(r"[A-Za-z]{5,}", expected)[:4]
    assert words, expected
    speaker.wait_for_function(
        "(words) => { const n = document.querySelector('.speaker-controls-notes .value');"
        " return !!n && words.every(w => n.textContent.includes(w)); }", arg=words, timeout=30_000)
    speaker.set_viewport_size({"width": 1280, "height": 800})
    time.sleep(1.5)  # the slide previews load
    speaker.screenshot(path=str(SCREENSHOTS / f"deck-{name}-speaker-view.png"), timeout=30_000)
    assert deck_page.aborted == [], deck_page.aborted


def test_a_handout_prints_to_pdf_with_the_system_chromium(tmp_path):
    """`make handouts`: the print-ready HTML, printed to A4 by Debian's chromium (no browser download)."""
    from moe_lib.teach import slides

    built = slides.build_handouts([NOTEBOOKS[1]], tmp_path, pdf=True)
    pdf = built[0].output
    assert pdf.suffix == ".pdf" and pdf.with_suffix(".html").is_file()
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    pages = max(int(n) for n in re.findall(rb"/Count (\d+)", data))
    assert pages >= 2, f"{pdf.name}: {pages} page(s)"

"""Lecture decks and handouts that work offline (`make slides`, `make handouts`; moe_lib.teach.slides).

Here, on the CPU and without a browser: two notebooks are built into decks and one into a handout, and the HTML is
checked — nothing is fetched from another host, every formula is MathML, every figure has alt text, notes cells
are speaker notes, widgets show their saved picture. The notebooks themselves are checked for what a room can read
(about 80 words of prose per slide at most; the rest is speaker notes) and for alt text on every figure.
`make test-browser` opens every deck in chromium with the network cut off (tests/browser/test_decks.py).
"""

from __future__ import annotations

import logging
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("latex2mathml")  # the dev extra; not on the GPU machine: skip there, never error
pytest.importorskip("nbconvert")
nbformat = pytest.importorskip("nbformat")

from moe_lib.teach import slides  # noqa: E402

if slides.importlib.util.find_spec("sphinx_revealjs") is None:
    pytest.skip("sphinx-revealjs (reveal.js's files) is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_SLIDE_WORDS = 80


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _has_widget(path: Path) -> bool:
    return any(slides.WIDGET_VIEW in o.get("data", {}) for c in _read(path).cells for o in c.get("outputs", []))


def _slide_type(cell) -> str:
    return cell.metadata.get("slideshow", {}).get("slide_type") or "-"


# Until the notebooks carry their speaker notes and alt texts (issue #15), these checks report, not fail.
PENDING = pytest.mark.xfail(not any(_slide_type(c) == "notes" for p in NOTEBOOKS for c in _read(p).cells),
                            reason="notebooks not yet split into slides + speaker notes, alt texts pending")


# Built once: the overview (math, a figure) and the first notebook with a widget (notes, figures, the widget).
BUILT = [NOTEBOOKS[0], next((p for p in NOTEBOOKS if _has_widget(p)), NOTEBOOKS[-1])] if NOTEBOOKS else []


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    out = tmp_path_factory.mktemp("decks")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        built = slides.build_decks(BUILT, out)
    finally:
        logging.getLogger().removeHandler(handler)
    return out, {b.source.stem: b for b in built}, records


def _deck(decks, name: str) -> str:
    return (decks[0] / f"{name}.slides.html").read_text(encoding="utf-8")


# -- the built decks -------------------------------------------------------------------------------------------------


def test_decks_and_reveal_sit_in_the_output_folder(decks):
    out, built, _ = decks
    assert (out / "index.html").is_file()
    for rel in ("reveal.js/dist/reveal.js", "reveal.js/dist/reveal.css", "reveal.js/dist/theme/white.css",
                "reveal.js/plugin/notes/notes.js", "reveal.js/LICENSE"):
        assert (out / rel).is_file(), rel
    for name in built:
        assert name in (out / "index.html").read_text()


@pytest.mark.parametrize("name", [p.stem for p in BUILT])
def test_a_deck_loads_nothing_from_the_network(decks, name):
    body = _deck(decks, name)
    assert slides.network_references(body) == []
    for marker in ("unpkg.com", "cdnjs", "jsdelivr", "require.js", "MathJax.Hub", "mermaid"):
        assert marker not in body, marker
    # every local file it loads is there, and so is every font its theme loads
    out = decks[0]
    local = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', body)
    assert "reveal.js/dist/reveal.js" in local and "reveal.js/plugin/notes/notes.js" in local
    for rel in local:
        assert (out / rel).is_file(), rel
    theme = out / "reveal.js/dist/theme/white.css"
    for css in [theme, *[theme.parent / u for u in re.findall(r"@import url\(([^)]+)\)", theme.read_text())]]:
        for url in re.findall(r"url\(([^)]+)\)", css.read_text()):
            url = url.strip("'\"").split("?")[0].split("#")[0]
            if not url.startswith("data:") and not url.endswith(".css"):
                assert (css.parent / url).is_file(), f"{css.name}: {url}"


@pytest.mark.parametrize("name", [p.stem for p in BUILT])
def test_every_formula_is_mathml(decks, name):
    body = _deck(decks, name)
    assert slides.raw_tex(body) == [], "TeX left for MathJax in the deck"
    formulas = _formulas(_read(ROOT / "notebooks" / f"{name}.ipynb"), slide_cells_only=True)
    assert formulas, f"{name}: expected math in this notebook"
    assert len(re.findall(r"<math[\s>]", body)) == len(formulas)
    assert 'encoding="application/x-tex"' in body  # the TeX source is kept as the annotation


@PENDING
def test_building_prints_no_warnings(decks):
    _, built, records = decks
    assert [r.getMessage() for r in records] == []
    assert {name: b.warnings for name, b in built.items() if b.warnings} == {}


@PENDING
@pytest.mark.parametrize("name", [p.stem for p in BUILT])
def test_every_figure_has_alt_text(decks, name):
    body = _deck(decks, name)
    images = re.findall(r"<img\b[^>]*>", body)
    assert images, f"{name}: no figures in the deck"
    for img in images:
        alt = re.search(r'\balt="([^"]*)"', img)
        assert alt and len(alt.group(1).split()) >= 3, f"{name}: an image without a real alt text: {img[:120]}"
        assert "No description" not in alt.group(1)


class _Deck(HTMLParser):
    """Counts slides (outer <section>), sub-slides (inner <section>) and speaker notes (<aside class="notes">)."""

    def __init__(self):
        super().__init__()
        self.depth = self.outer = self.inner = self.notes = 0

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.depth += 1
            self.outer += self.depth == 1
            self.inner += self.depth == 2
        if tag == "aside" and "notes" in (dict(attrs).get("class") or "").split():
            assert self.depth == 2, "speaker notes outside a slide"
            self.notes += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1


@pytest.mark.parametrize("name", [p.stem for p in BUILT])
def test_slides_and_speaker_notes_follow_the_cells(decks, name):
    types = [_slide_type(c) for c in _read(ROOT / "notebooks" / f"{name}.ipynb").cells]
    deck = _Deck()
    deck.feed(_deck(decks, name))
    assert deck.depth == 0, "unbalanced <section> tags"
    assert deck.outer == types.count("slide")
    assert deck.inner == types.count("slide") + types.count("subslide")
    assert deck.notes == types.count("notes")
    body = _deck(decks, name)
    assert "Reveal.initialize" in body and "RevealNotes" in body
    assert "%matplotlib inline" not in slides.page_text(body)  # the imports cell is skipped
    skipped = [c for c in _read(ROOT / "notebooks" / f"{name}.ipynb").cells if _slide_type(c) == "skip"]
    assert skipped and "%matplotlib inline" in skipped[0].source


def test_a_widget_shows_its_saved_picture(decks):
    name = BUILT[-1].stem
    if not _has_widget(BUILT[-1]):
        pytest.skip("no notebook has a widget")
    body = _deck(decks, name)
    assert "application/vnd.jupyter.widget" not in body  # no widget manager, no widget state
    assert "moe-widget-note" in body and "live in JupyterLab" in body
    nb = slides.prepare(_read(BUILT[-1]))
    widget_cells = [c for c in _read(BUILT[-1]).cells
                    if any(slides.WIDGET_VIEW in o.get("data", {}) for o in c.get("outputs", []))]
    index = _read(BUILT[-1]).cells.index(widget_cells[0])
    shown = nb.cells[index].outputs
    assert any("image/png" in o.get("data", {}) for o in shown), "the widget's figure, as executed"
    assert "=" in shown[-1]["data"]["text/html"]  # the controls' values


# -- handouts --------------------------------------------------------------------------------------------------------


def test_a_handout_is_the_whole_notebook_for_print(tmp_path):
    built = slides.build_handouts([BUILT[-1]], tmp_path, pdf=False)
    body = built[0].output.read_text(encoding="utf-8")
    assert built[0].output.suffix == ".html"
    assert slides.network_references(body) == [] and "<script src" not in body
    assert slides.raw_tex(body) == []
    assert "@page" in body  # print layout
    nb = _read(BUILT[-1])
    notes = [c for c in nb.cells if _slide_type(c) == "notes"]
    for cell in notes[:3]:  # the speaker notes are part of the text
        words = re.findall(r"[A-Za-z]{6,}", cell.source)[:3]
        assert all(w in body for w in words), words
    assert "%matplotlib inline" in slides.page_text(body)  # every cell, the skipped imports too


# -- the math converter and the checks themselves --------------------------------------------------------------------


def test_tex_to_mathml_covers_what_the_notebooks_write():
    xml = slides.tex_to_mathml(r"\Big\lceil \frac{n_e}{B} \Big\rceil B \le \texttt{max\_len}", True)
    assert xml.startswith('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">')
    assert "\u2308" in xml and "max_len" in xml and "<mfrac>" in xml
    assert "\\" not in re.sub(r"<annotation.*?</annotation>", "", xml)
    with pytest.raises(slides.MathError):
        slides.tex_to_mathml(r"\notacommand{x}", False)


def test_every_formula_of_every_notebook_converts():
    for path in NOTEBOOKS + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb")):
        for tex, display in _formulas(_read(path)):
            try:
                slides.tex_to_mathml(tex, display)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{path.name}: {tex.strip()[:80]!r}: {exc}")


def test_the_checks_catch_a_cdn_and_raw_tex():
    page = ('<script src="https://cdn.example/x.js"></script><link href="//cdn.example/y.css" rel=stylesheet>'
            '<style>@import url("https://fonts.example/f.css");</style><a href="https://example.org">ok</a>'
            "<p>cost $x$ here</p><pre>$ not math</pre>")
    assert len(slides.network_references(page)) == 3
    found = slides.raw_tex(page)
    assert found and "not math" not in " ".join(found)  # code is not math


def test_make_targets_build_offline_decks_and_serve_them_locally():
    def dry(target: str) -> str:
        return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "moe_lib.teach.slides decks --out build/slides" in dry("slides")
    assert "moe_lib.teach.slides serve --dir build/slides" in dry("present")
    assert "moe_lib.teach.slides handouts --out build/handouts" in dry("handouts")
    assert "build/" in (ROOT / ".gitignore").read_text().split()


# -- the notebooks: slides a room can read, figures described --------------------------------------------------------


def _formulas(nb, slide_cells_only: bool = False) -> list[tuple[str, bool]]:
    """(TeX, display) of every formula in the markdown cells, as nbconvert's markdown parser finds them."""
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    found: list[tuple[str, bool]] = []

    class Collect(IPythonRenderer):
        def inline_math(self, body):
            found.append((body, False))
            return ""

        def block_math(self, body):
            found.append((body, True))
            return ""

        def latex_environment(self, name, body):
            found.append((f"\\begin{{{name}}}{body}\\end{{{name}}}", True))
            return ""

    for cell in nb.cells:
        if cell.cell_type == "markdown" and not (slide_cells_only and _slide_type(cell) == "skip"):
            MarkdownWithMath(renderer=Collect(escape=False)).render(cell.source)
    return found


def prose_words(markdown: str) -> int:
    """Words a room has to read: code blocks, tables and display math left out; inline math or code is one word."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))
    text = re.sub(r"\$[^$]+\$|`[^`]*`", " x ", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return len(re.findall(r"[^\W_]\S*", text))


def slides_of(nb) -> list[tuple[str, int]]:
    """(first line, prose words) of every slide and sub-slide: its markdown cells, speaker notes left out."""
    result: list[list] = []
    for cell in nb.cells:
        kind = _slide_type(cell)
        if kind in ("slide", "subslide") or not result:
            result.append([cell.source.strip().split("\n", 1)[0][:60], 0])
        if cell.cell_type == "markdown" and kind not in ("notes", "skip"):
            result[-1][1] += prose_words(cell.source)
    return [tuple(r) for r in result]


def test_prose_words_counts_what_a_room_reads():
    assert prose_words("## A title\n\nTwo words, `code` and $x + y$.") == 7
    assert prose_words("| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nx = 1\n```\n$$ a = b $$\nOne.") == 1




@PENDING
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_slide_carries_at_most_about_80_words_the_rest_is_speaker_notes(path):
    long = [(first, n) for first, n in slides_of(_read(path)) if n > MAX_SLIDE_WORDS]
    assert not long, f"{path.name}: slides over {MAX_SLIDE_WORDS} words (move prose into a `notes` cell): {long}"


@PENDING
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_figure_in_a_notebook_has_alt_text(path):
    nb = _read(path)
    for i, cell in enumerate(slides.prepare(nb).cells):
        figures = [o for o in cell.get("outputs", []) if any(m in o.get("data", {}) for m in slides.FIGURE_MIMES)]
        if not figures:
            continue
        alts = slides.figure_alts(nb.cells[i])
        assert alts, f"{path.name} cell {i}: {len(figures)} figure(s) and no `alt` in the cell's metadata"
        assert len(alts) in (1, len(figures)), f"{path.name} cell {i}: {len(figures)} figures, {len(alts)} alts"
        for alt in alts:
            assert len(alt.split()) >= 5, f"{path.name} cell {i}: alt text too short: {alt!r}"

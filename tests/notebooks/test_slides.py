"""Slides: the cells of every numbered notebook carry slide types, and nbconvert builds reveal.js decks from them.

`make slides` runs `jupyter nbconvert --to slides` over the notebooks; here the same exporter runs in-process
on two notebooks and the deck's structure is compared with the cells' slide types.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")  # not on the GPU machine: skip there, never error
ROOT = Path(__file__).resolve().parents[2]
SLIDE_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
EXERCISE_NOTEBOOKS = {"01", "03", "04", "05", "06", "07", "08", "11"}  # the notebooks with a module in teach/exercises


def _slide_types(pair: Path) -> list[tuple[str, str, str | None]]:
    nb = jupytext.read(pair)
    return [(c.cell_type, c.source, c.metadata.get("slideshow", {}).get("slide_type")) for c in nb.cells]


def test_notebooks_are_numbered_from_00_without_gaps():
    numbers = [int(p.name[:2]) for p in SLIDE_NOTEBOOKS]
    assert numbers and numbers == list(range(len(numbers)))


@pytest.mark.parametrize("pair", SLIDE_NOTEBOOKS, ids=[p.stem for p in SLIDE_NOTEBOOKS])
def test_every_cell_has_a_sensible_slide_type(pair):
    cells = _slide_types(pair)
    for i, (kind, source, slide_type) in enumerate(cells):
        assert slide_type in SLIDE_TYPES, f"{pair.name} cell {i}: slide_type {slide_type!r}"
        first = source.lstrip().split("\n", 1)[0]
        if kind == "markdown" and re.match(r"#{1,2} ", first):
            assert slide_type == "slide", f"{pair.name} cell {i} ({first!r}) is a section header: a new slide"
        if kind == "markdown" and first.startswith("### "):
            assert slide_type == "subslide", f"{pair.name} cell {i} ({first!r}): a sub-slide"
    assert cells[0][2] == "slide" and cells[0][1].startswith("# "), "the title opens the deck"
    headers = [s.split("\n", 1)[0] for k, s, t in cells if t == "slide"]
    assert any(h.startswith("## What you learned") for h in headers), headers
    if pair.name[:2] in EXERCISE_NOTEBOOKS:
        assert "## Exercises" in headers, f"{pair.name}: the exercises get their own slide"


@pytest.mark.parametrize("pair", SLIDE_NOTEBOOKS, ids=[p.stem for p in SLIDE_NOTEBOOKS])
def test_exercises_sit_at_the_same_place_in_every_notebook(pair):
    """The lesson's sections, then the exercises (and puzzles), then "What you learned" with the Next link."""
    sections = [s.lstrip().split("\n", 1)[0] for k, s, _ in _slide_types(pair)
                if k == "markdown" and s.lstrip().startswith("## ")]
    assert sections[-1].startswith("## What you learned"), f"{pair.name} ends with {sections[-1]!r}"
    practice = [i for i, s in enumerate(sections) if s.startswith(("## Exercises", "## Puzzles"))]
    assert practice == list(range(len(sections) - 1 - len(practice), len(sections) - 1)), (
        f"{pair.name}: exercises and puzzles come right before 'What you learned': {sections}")
    assert "**Next" in _slide_types(pair)[-1][1] or pair == SLIDE_NOTEBOOKS[-1], f"{pair.name}: ends with Next"


class _Sections(HTMLParser):
    """Counts reveal.js slides (outer <section>) and sub-slides (inner <section>)."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.outer = self.inner = 0

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.depth += 1
            self.outer += self.depth == 1
            self.inner += self.depth == 2

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1


@pytest.mark.parametrize("name", ["00_overview", "05_alignment"])
def test_slides_build_with_one_section_per_slide(name):
    from nbconvert import SlidesExporter

    body, _ = SlidesExporter(reveal_scroll=True).from_filename(str(ROOT / "notebooks" / f"{name}.ipynb"))
    types = [t for _, _, t in _slide_types(ROOT / "notebooks" / f"{name}.py")]
    sections = _Sections()
    sections.feed(body)
    assert sections.depth == 0, "unbalanced <section> tags"
    assert sections.outer == types.count("slide")
    assert sections.inner == types.count("slide") + types.count("subslide")
    assert "Reveal.initialize" in body and "reveal.js" in body
    assert "var scroll = true" in body  # long outputs scroll inside their slide
    assert "%matplotlib inline" not in body  # the imports cell is skipped
    assert "What you learned" in body and "<img" in body  # prose and figures made it


def test_make_slides_builds_offline_decks_into_a_git_ignored_folder():
    """`make slides` runs moe_lib.teach.slides (nbconvert's reveal exporter, offline): tests/notebooks/test_decks.py."""
    dry = subprocess.run(["make", "-n", "slides"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "moe_lib.teach.slides decks" in dry and "--out build/slides" in dry, dry
    assert "build/" in (ROOT / ".gitignore").read_text().split()

"""Lecture material that works offline: reveal.js decks and printable handouts of the notebooks.

    python -m moe_lib.teach.slides decks    [--out build/slides]   [--theme white] NOTEBOOK...
    python -m moe_lib.teach.slides handouts [--out build/handouts] [--pdf auto|yes|no] NOTEBOOK...
    python -m moe_lib.teach.slides serve    [--dir build/slides]   [--port 8000]

(`make slides`, `make handouts` and `make present` call these.) Nothing here, and nothing a deck or a handout
loads, comes from the network:

* reveal.js 5 (script, stylesheet, themes and their fonts, the speaker-notes plugin) is copied from the
  `sphinx-revealjs` package, which ships reveal.js's own distribution files unchanged, into
  `<out>/reveal.js/`, next to the decks;
* math is rendered when the deck is built: every `$…$`, `$$…$$` and `\\begin{…}` of the markdown becomes
  MathML (`latex2mathml`), which browsers draw themselves; no MathJax, no script;
* a widget cannot run without a kernel: a deck shows what the widget showed when the notebook was executed
  (its saved state: the figure and text of its output areas, the values of its controls) and says that it is
  live in JupyterLab (RISE);
* figures carry alt text: a code cell's metadata `alt` (a string, or a list with one entry per figure) becomes
  the `alt` of its images (an `alt` in an output's own metadata wins);
* `slide_type: notes` cells become reveal.js speaker notes (press `S` in a deck for the speaker view).

Decks are built with nbconvert's own reveal template, of which this module replaces only the parts that load
scripts from CDNs. Handouts are the whole notebook (every cell, the notes as prose) as one print-ready HTML
file, turned into a PDF by the system chromium (Debian's package) through Playwright when it is installed.
"""

from __future__ import annotations

import argparse
import copy
import functools
import html
import http.server
import importlib.util
import logging
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nbformat

LOG = logging.getLogger("moe_lib.teach.slides")
MATHML_NS = "http://www.w3.org/1998/Math/MathML"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
FIGURE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
REVEAL_DIR = "reveal.js"  # next to the decks
THEMES = ("white", "simple", "black", "serif", "sky", "solarized", "beige", "league", "moon", "night", "blood",
          "dracula", "white-contrast", "black-contrast")


# -- reveal.js, from an installed package ------------------------------------------------------------------------


def reveal_source() -> Path:
    """reveal.js's distribution (dist/, plugin/) as shipped inside the installed `sphinx-revealjs` package."""
    spec = importlib.util.find_spec("sphinx_revealjs")  # finds the files without importing Sphinx
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("reveal.js comes from the `sphinx-revealjs` package: run `make setup` "
                           "(pip install -c constraints.txt -e '.[dev]')")
    root = Path(next(iter(spec.submodule_search_locations))) / "_static" / "revealjs"
    if not (root / "dist" / "reveal.js").is_file():
        raise RuntimeError(f"no reveal.js distribution in {root}")
    return root


def reveal_version() -> str:
    head = (reveal_source() / "dist" / "reveal.js").read_text(encoding="utf-8")[:300]
    match = re.search(r"reveal\.js (\d+\.\d+\.\d+)", head)
    return match.group(1) if match else "unknown"


def copy_reveal(out: Path) -> Path:
    """Copy what a deck loads (script, stylesheet, themes with fonts, notes plugin, licence) into out/reveal.js/."""
    src, dst = reveal_source(), out / REVEAL_DIR
    if dst.exists():
        shutil.rmtree(dst)
    for rel in ("LICENSE", "dist/reveal.js", "dist/reveal.css", "plugin/notes/notes.js"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    shutil.copytree(src / "dist" / "theme", dst / "dist" / "theme")
    return dst


# -- math: TeX -> MathML when the deck is built ------------------------------------------------------------------

_TEXT_ESCAPES = re.compile(r"\\([_%&#$ {}])")
# Delimiters latex2mathml leaves as TeX after \big, \Big, ... (`\Big\lceil` -> <mo>\lceil</mo>)
_DELIMITERS = {"lceil": "\u2308", "rceil": "\u2309", "lfloor": "\u230a", "rfloor": "\u230b", "langle": "\u27e8",
               "rangle": "\u27e9", "lVert": "\u2016", "rVert": "\u2016", "Vert": "\u2016", "lvert": "|",
               "rvert": "|", "vert": "|", "{": "{", "}": "}"}


class MathError(ValueError):
    """A formula that latex2mathml could not (fully) convert."""


@functools.lru_cache(maxsize=4096)
def tex_to_mathml(tex: str, display: bool) -> str:
    """One formula as a <math> element; the TeX source rides along as its annotation (copy/paste, screen readers).

    Raises MathError when a TeX command is left in the result (latex2mathml does not know it).
    """
    from latex2mathml.converter import convert

    mathml = convert(tex.strip(), display="block" if display else "inline")
    # latex2mathml keeps TeX's escapes inside \text{...} and \texttt{...}: `hidden\_states` -> `hidden_states`
    mathml = re.sub(r"(<mtext[^>]*>)(.*?)(</mtext>)", lambda m: m[1] + _TEXT_ESCAPES.sub(r"\1", m[2]) + m[3],
                    mathml)
    mathml = re.sub(r"(<mo[^>]*>)\\(\w+|[{}])(</mo>)",
                    lambda m: m[1] + _DELIMITERS.get(m[2], "\\" + m[2]) + m[3], mathml)
    # MathML Core draws mathvariant only on <mi>: \texttt{...} gets its monospace font from CSS
    mathml = mathml.replace('mathvariant="monospace"', 'class="moe-tt"')
    left = re.search(r"\\[A-Za-z]+", re.sub(r"<[^>]+>", " ", mathml))
    if left:
        raise MathError(f"{left.group(0)} not converted")
    start = mathml.index(">") + 1
    end = mathml.rindex("</math>")
    annotation = html.escape(" ".join(tex.split()), quote=False)
    return (f"{mathml[:start]}<semantics><mrow>{mathml[start:end]}</mrow>"
            f'<annotation encoding="application/x-tex">{annotation}</annotation></semantics></math>')


def _math_renderer_class():
    from nbconvert.filters.markdown_mistune import IPythonRenderer

    class MathMLRenderer(IPythonRenderer):
        """nbconvert's markdown renderer, with the math drawn as MathML instead of left for MathJax."""

        def _math(self, tex: str, display: bool) -> str:
            try:
                return tex_to_mathml(tex, display)
            except Exception as exc:  # an unsupported command: show the TeX, say so once
                LOG.warning("math not converted (%s): %s", exc, tex.strip()[:80])
                return f'<code class="moe-tex">{self.escape_html(tex)}</code>'

        def block_math(self, body: str) -> str:
            return self._math(body, True)

        def inline_math(self, body: str) -> str:
            return self._math(body, False)

        def latex_environment(self, name: str, body: str) -> str:
            return self._math(f"\\begin{{{name}}}{body}\\end{{{name}}}", True)

    return MathMLRenderer


def _markdown2html(exporter, context, source: str) -> str:
    """HTMLExporter.markdown2html, with the MathML renderer."""
    from nbconvert.filters.markdown_mistune import MarkdownWithMath

    cell = context.get("cell", {})
    renderer = _math_renderer_class()(
        escape=False,
        attachments=cell.get("attachments", {}),
        embed_images=exporter.embed_images,
        path=context.get("resources", {}).get("metadata", {}).get("path", ""),
        anchor_link_text=exporter.anchor_link_text,
        exclude_anchor_links=exporter.exclude_anchor_links,
        **exporter.lexer_options,
    )
    return MarkdownWithMath(renderer=renderer).render(source)


# -- the notebook before export: figures' alt text, widgets as their saved picture --------------------------------


def figure_alts(cell) -> list[str]:
    """The alt texts a code cell declares for its figures (metadata `alt`: a string or a list of strings)."""
    alt = cell.get("metadata", {}).get("alt")
    if alt is None:
        return []
    return [alt] if isinstance(alt, str) else [str(a) for a in alt]


def _widget_outputs(state: dict, model_id: str, seen: set[str] | None = None) -> tuple[list, list[str]]:
    """The outputs saved in the Output widgets under `model_id`, and the 'description = value' of its controls."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return [], []
    seen.add(model_id)
    model = state[model_id]
    values = model.get("state", {})
    outputs, controls = [], []
    if model.get("model_name") == "OutputModel":
        outputs += [nbformat.from_dict(o) for o in values.get("outputs", [])]
    if values.get("description") and "value" in values:
        value = values["value"]
        if "_options_labels" in values and isinstance(values.get("index"), int):
            value = values["_options_labels"][values["index"]]
        controls.append(f"{values['description']} = {value}")
    for child in values.get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            more, ctl = _widget_outputs(state, child[len("IPY_MODEL_"):], seen)
            outputs += more
            controls += ctl
    return outputs, controls


def _widget_note(controls: list[str]) -> nbformat.NotebookNode:
    shown = f" Shown here as executed ({', '.join(controls)})." if controls else ""
    text = (f'<p class="moe-widget-note">Interactive widget: live in JupyterLab (present it with RISE).{shown}</p>')
    return nbformat.v4.new_output("display_data", data={"text/html": text})


def prepare(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` ready for a static export: alt text on every figure output, widgets as their saved picture."""
    nb = copy.deepcopy(nb)
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
                continue
            saved, controls = _widget_outputs(state, view.get("model_id", ""))
            outputs += [o for o in saved if o.get("output_type") != "stream" or o.get("name") != "stderr"]
            outputs.append(_widget_note(controls))
        alts = figure_alts(cell)
        figures = [o for o in outputs if any(m in o.get("data", {}) for m in FIGURE_MIMES)]
        for i, output in enumerate(figures):
            mime = next(m for m in FIGURE_MIMES if m in output["data"])
            meta = output.setdefault("metadata", {}).setdefault(mime, {})
            if not meta.get("alt") and alts:
                meta["alt"] = alts[min(i, len(alts) - 1)]
        cell.outputs = outputs
    return nb


# -- templates (nbconvert's reveal and lab templates, minus what they fetch from CDNs) ------------------------------

_IMG_BLOCKS = """
{% macro figure(output, mime, src_mime, extra_class) -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
{%- set alt = output | get_metadata('alt', mime) -%}
{%- set width = output | get_metadata('width', mime) -%}
{%- set height = output | get_metadata('height', mime) -%}
<img src="data:{{ src_mime }};base64,{{ output.data[mime] | escape_html }}"
{%- if alt %} alt="{{ alt | escape_html }}"{% endif %}
{%- if width is not none %} width="{{ width | escape_html }}"{% endif %}
{%- if height is not none %} height="{{ height | escape_html }}"{% endif %}
{%- if output | get_metadata('unconfined', mime) %} class="unconfined"{% endif %}>
</div>
{%- endmacro %}
{% block data_png scoped %}{{ figure(output, 'image/png', 'image/png', extra_class) }}{% endblock data_png %}
{% block data_jpg scoped %}{{ figure(output, 'image/jpeg', 'image/jpeg', extra_class) }}{% endblock data_jpg %}
"""

_COMMON_CSS = """
math[display="block"] { display: block math; margin: 0.6em 0; font-size: 1.05em; }
math { font-family: math, "STIX Two Math", "Latin Modern Math", "DejaVu Math TeX Gyre", "Cambria Math", serif; }
math[display="block"] { overflow-x: auto; overflow-y: hidden; max-width: 100%; }
math .moe-tt { font-family: var(--jp-code-font-family, monospace); font-size: 0.9em; }
.moe-widget-note { font-size: 0.8em; font-style: italic; opacity: 0.8; }
code.moe-tex { color: #a00; }
"""

DECK_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{#- nbconvert's reveal template; the blocks below replace what it loads from CDNs (jQuery, require.js,
    mermaid, the widget manager, MathJax) and load reveal.js from the copy next to the deck. -#}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block notebook_css %}
{{ super() }}
<style type="text/css">
"""
    + _COMMON_CSS
    + """
.reveal .jp-RenderedImage img { max-height: 560px; width: auto; }
:root { --jp-code-font-size: 16px; }  /* nbconvert's deck sets 19px: long lines then run off the slide */
.reveal .jp-InputArea pre, .reveal .jp-OutputArea-output pre { white-space: pre-wrap; word-break: normal;
  overflow-wrap: anywhere; }
.reveal aside.notes { display: none; }
</style>
{% endblock notebook_css %}
"""
    + _IMG_BLOCKS
    + """
{% block footer_js %}
<script src="{{ reveal_url_prefix }}/dist/reveal.js"></script>
<script src="{{ reveal_url_prefix }}/plugin/notes/notes.js"></script>
<script>
(function () {
  // Sub-slides taller than the screen scroll inside their slide (nbconvert's reveal_scroll, without jQuery).
  function setScrollingSlide() {
    if (!{{ reveal_scroll }}) return;
    var h = document.querySelector('.reveal').clientHeight * 0.95;
    document.querySelectorAll('section.present section').forEach(function (s) {
      if (s.scrollHeight > h) {
        s.style.height = 'calc(95vh)';
        s.style.overflowY = 'scroll';
        s.style.marginTop = '20px';
      }
    });
  }
  Reveal.initialize({
    controls: true,
    progress: true,
    hash: true,
    transition: "{{ reveal_transition }}",
    slideNumber: "{{ reveal_number }}" || false,
    plugins: [RevealNotes],
    width: {{ reveal_width }},
    height: {{ reveal_height }},
  }).then(setScrollingSlide);
  Reveal.on('slidechanged', setScrollingSlide);
})();
</script>
{% endblock footer_js %}
"""
)

HANDOUT_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{#- nbconvert's lab template for print: no scripts at all (math is MathML, figures are embedded). -#}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block extra_css %}
<style type="text/css">
"""
    + _COMMON_CSS
    + """
@page { size: A4; margin: 14mm 12mm; }
body { max-width: 190mm; margin: 0 auto; }
.jp-InputPrompt, .jp-OutputPrompt { display: none !important; }
.jp-Cell { padding: 0 !important; }
pre { white-space: pre-wrap; word-break: break-word; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
.jp-RenderedImage, table, pre, math[display="block"] { break-inside: avoid; }
h1, h2, h3 { break-after: avoid; }
h2 { margin-top: 1.6em; }
.jp-Cell + .jp-Cell { margin-top: 0.6em; }
a.anchor-link { display: none; }
</style>
{% endblock extra_css %}
"""
    + _IMG_BLOCKS
)


def _exporter_classes():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter, SlidesExporter

    loader = DictLoader({"moe_deck.html.j2": DECK_TEMPLATE, "moe_handout.html.j2": HANDOUT_TEMPLATE})

    class DeckExporter(SlidesExporter):
        """reveal.js deck that loads nothing from the network (reveal.js from `reveal.js/` next to it)."""

        def __init__(self, **kw):
            kw.setdefault("extra_loaders", [loader])
            kw.setdefault("template_file", "moe_deck.html.j2")
            kw.setdefault("reveal_url_prefix", REVEAL_DIR)
            kw.setdefault("reveal_theme", "white")
            kw.setdefault("reveal_scroll", True)
            super().__init__(**kw)

        def markdown2html(self, context, source):
            return _markdown2html(self, context, source)

    DeckExporter.markdown2html = _contextfilter(DeckExporter.markdown2html)

    class HandoutExporter(HTMLExporter):
        """The whole notebook as one HTML page for print: no scripts, MathML, embedded figures."""

        def __init__(self, **kw):
            kw.setdefault("extra_loaders", [loader])
            kw.setdefault("template_file", "moe_handout.html.j2")
            super().__init__(**kw)

        def markdown2html(self, context, source):
            return _markdown2html(self, context, source)

    HandoutExporter.markdown2html = _contextfilter(HandoutExporter.markdown2html)
    return DeckExporter, HandoutExporter


def _contextfilter(fn):
    from jinja2 import pass_context

    return pass_context(fn)


# -- checks on a built page -----------------------------------------------------------------------------------------

# Attributes through which a page loads something by itself (a plain <a href> is a link the reader may follow).
_LOADING = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "video": "src",
            "audio": "src", "embed": "src", "object": "data", "track": "src"}


def network_references(page_html: str) -> list[str]:
    """Everything the page would fetch from another host: script/link/img/... URLs and CSS url()/@import."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page_html, "html.parser")
    found = []
    for tag, attr in _LOADING.items():
        for element in soup.find_all(tag):
            url = element.get(attr)
            if url and _is_remote(url):
                found.append(f"<{tag} {attr}={url}>")
    css = "\n".join(s.get_text() for s in soup.find_all("style"))
    css += "\n".join(e.get("style", "") for e in soup.find_all(style=True))
    for url in re.findall(r"""(?:@import\s+(?:url\()?|url\()\s*['"]?([^'")\s;]+)""", css):
        if _is_remote(url):
            found.append(f"css {url}")
    for script in soup.find_all("script"):
        found += [f"script import {u}" for u in re.findall(r"""import\s[^'"]*['"](https?://[^'"]+)""",
                                                             script.get_text())]
    return found


def _is_remote(url: str) -> bool:
    url = url.strip()
    return url.startswith("//") or urlsplit(url).scheme in {"http", "https", "ws", "wss", "ftp"}


def page_text(page_html: str) -> str:
    """The text a reader sees (scripts and styles left out)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page_html, "html.parser")
    for element in soup.find_all(["script", "style"]):
        element.decompose()
    return soup.get_text()


def raw_tex(page_html: str) -> list[str]:
    """Text outside code that still looks like TeX for MathJax ($...$, $$, \\begin{...}): math left unrendered."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page_html, "html.parser")
    for element in soup.find_all(["script", "style", "pre", "code", "annotation", "title"]):
        element.decompose()
    text = soup.get_text(" ")
    return re.findall(r"\$[^$\n]{0,60}|\\begin\{\w+\}", text)


# -- building --------------------------------------------------------------------------------------------------------


@dataclass
class Built:
    source: Path
    output: Path
    slides: int = 0
    figures: int = 0
    notes: int = 0
    formulas: int = 0
    widgets: int = 0
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = [f"{self.slides} slides"] if self.slides else []
        what += [f"{self.figures} figures", f"{self.formulas} formulas"]
        what += [f"{self.notes} speaker notes"] if self.slides else []
        what += [f"{self.widgets} widgets as executed"] if self.widgets else []
        return f"{self.output}  ({', '.join(what)})"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _export(exporter, path: Path) -> tuple[str, list[str]]:
    nb = prepare(nbformat.read(path, as_version=4))
    collect = _Collect()
    loggers = [exporter.log, LOG]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem,
                                                                           "path": str(path.parent)}})
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
    return body, collect.messages


def _count(nb_path: Path, body: str, built: Built) -> Built:
    nb = nbformat.read(nb_path, as_version=4)
    built.figures = len(re.findall(r"<img\s", body))
    built.formulas = len(re.findall(r"<math[\s>]", body))
    built.notes = sum(c.metadata.get("slideshow", {}).get("slide_type") == "notes" for c in nb.cells)
    built.widgets = sum(WIDGET_VIEW in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    return built


def build_decks(notebooks: list[Path], out: Path, theme: str = "white") -> list[Built]:
    """One deck per notebook in out/ (NAME.slides.html), reveal.js in out/reveal.js/, and an index.html."""
    if theme not in THEMES:
        raise ValueError(f"theme {theme!r}: one of {', '.join(THEMES)}")
    out.mkdir(parents=True, exist_ok=True)
    copy_reveal(out)
    DeckExporter, _ = _exporter_classes()
    exporter = DeckExporter(reveal_theme=theme)
    built = []
    for path in notebooks:
        body, warnings = _export(exporter, path)
        target = out / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        result = _count(path, body, Built(path, target, warnings=warnings))
        types = [c.metadata.get("slideshow", {}).get("slide_type") for c in nbformat.read(path, as_version=4).cells]
        result.slides = types.count("slide") + types.count("subslide")  # what reveal.js counts
        remote = network_references(body)
        if remote:
            result.warnings.append(f"loads from the network: {remote[:5]}")
        built.append(result)
    _write_index(out, built)
    return built


def _write_index(out: Path, built: list[Built]) -> None:
    items = "\n".join(f'<li><a href="{html.escape(b.output.name)}">{html.escape(b.source.stem)}</a> '
                      f"<small>({b.slides} slides)</small></li>" for b in built)
    out.joinpath("index.html").write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>moe_lib decks</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:3em auto;line-height:1.6}</style></head>"
        f"<body><h1>moe_lib decks</h1><ul>\n{items}\n</ul>"
        "<p>In a deck: arrows or space to move, <kbd>S</kbd> for the speaker view (notes, timer, next slide), "
        "<kbd>F</kbd> full screen, <kbd>Esc</kbd> overview.</p></body></html>\n", encoding="utf-8")


def build_handouts(notebooks: list[Path], out: Path, pdf: bool | None = None) -> list[Built]:
    """NAME.html (print-ready, self-contained) per notebook in out/, and NAME.pdf beside it when `pdf`.

    `pdf=None`: the PDFs when the system chromium is there, else a note (the HTML prints from any browser).
    """
    out.mkdir(parents=True, exist_ok=True)
    _, HandoutExporter = _exporter_classes()
    exporter = HandoutExporter()
    built = []
    for path in notebooks:
        body, warnings = _export(exporter, path)
        target = out / f"{path.stem}.html"
        target.write_text(body, encoding="utf-8")
        result = _count(path, body, Built(path, target, warnings=warnings))
        remote = network_references(body)
        if remote:
            result.warnings.append(f"loads from the network: {remote[:5]}")
        built.append(result)
    if pdf is None:
        pdf = chromium_path() is not None
        if not pdf:
            print("no chromium here (Debian: apt-get install chromium): HTML handouts only; print them from a "
                  "browser, or run `make handouts` again once chromium is installed")
    if pdf:
        pdfs = print_to_pdf([b.output for b in built])
        for b, p in zip(built, pdfs, strict=True):
            b.output = p
    return built


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def print_to_pdf(pages: list[Path]) -> list[Path]:
    """Print each HTML page to a PDF beside it with the system chromium (Playwright, never a downloaded browser).

    Runs in a thread of its own: Playwright's sync API refuses to start inside a running asyncio loop (a notebook,
    another Playwright session).
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_print_to_pdf, pages).result()


def _print_to_pdf(pages: list[Path]) -> list[Path]:
    import os
    import tempfile

    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("PDF handouts need Debian's chromium (`apt-get install chromium`); "
                           "the HTML handouts are written: print them from any browser, or pass --pdf no")
    with tempfile.TemporaryDirectory(prefix="moe-handouts-") as home:
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/config", XDG_CACHE_HOME=f"{home}/cache")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                                 env=env, timeout=60_000)
            try:
                context = browser.new_context()
                # a handout loads nothing: refuse anything that is not the file itself
                context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                              else route.abort())
                results = []
                for page_path in pages:
                    page = context.new_page()
                    page.goto(page_path.resolve().as_uri(), wait_until="load", timeout=60_000)
                    page.evaluate("() => document.fonts.ready")
                    target = page_path.with_suffix(".pdf")
                    page.pdf(path=str(target), format="A4", print_background=True, prefer_css_page_size=True,
                             display_header_footer=True, header_template="<span></span>",
                             footer_template='<div style="font-size:8px;width:100%;text-align:center">'
                                             f"{html.escape(page_path.stem)} · "
                                             '<span class="pageNumber"></span>/<span class="totalPages"></span>'
                                             "</div>",
                             margin={"top": "14mm", "bottom": "16mm", "left": "12mm", "right": "12mm"})
                    page.close()
                    results.append(target)
                return results
            finally:
                browser.close()


# -- serving (make present) -----------------------------------------------------------------------------------------


def serve(directory: Path, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve the decks on http://127.0.0.1:PORT/ until Ctrl-C (only this machine can reach it)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer((host, port), handler) as server:
        print(f"Serving {directory} on http://{host}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


# -- command line ---------------------------------------------------------------------------------------------------


def _report(built: list[Built]) -> int:
    """One line per file; the warnings were printed as they came (logging). Loading from the network fails."""
    status = 0
    for b in built:
        print(b.line())
        for w in b.warnings:
            if w.startswith("loads from the network"):
                print(f"error: {b.source.name}: {w}", file=sys.stderr)
                status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m moe_lib.teach.slides", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    decks = sub.add_parser("decks", help="reveal.js decks that load nothing from the network")
    decks.add_argument("notebooks", nargs="+", type=Path)
    decks.add_argument("--out", type=Path, default=Path("build/slides"))
    decks.add_argument("--theme", default="white", choices=THEMES)
    handouts = sub.add_parser("handouts", help="print-ready HTML, and PDF through the system chromium")
    handouts.add_argument("notebooks", nargs="+", type=Path)
    handouts.add_argument("--out", type=Path, default=Path("build/handouts"))
    handouts.add_argument("--pdf", choices=["auto", "yes", "no"], default="auto",
                          help="PDFs through the system chromium: auto = when it is installed")
    present = sub.add_parser("serve", help="serve the decks on 127.0.0.1")
    present.add_argument("--dir", type=Path, default=Path("build/slides"))
    present.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.command == "decks":
        built = build_decks(args.notebooks, args.out, args.theme)
        status = _report(built)
        print(f"reveal.js {reveal_version()} in {args.out / REVEAL_DIR}; open {args.out / 'index.html'} "
              "or run `make present`")
        return status
    if args.command == "handouts":
        pdf = {"auto": None, "yes": True, "no": False}[args.pdf]
        return _report(build_handouts(args.notebooks, args.out, pdf=pdf))
    if not (args.dir / "index.html").is_file():
        print(f"no decks in {args.dir}: run `make slides` first", file=sys.stderr)
        return 1
    serve(args.dir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_decks", "build_handouts", "copy_reveal", "figure_alts", "network_references", "prepare",
           "print_to_pdf", "raw_tex", "reveal_source", "serve", "tex_to_mathml"]

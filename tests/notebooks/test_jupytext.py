"""Every notebook has its jupytext py:percent pair, and the two hold the same cells.

Only the inputs are compared — cell type, source and the slide type — never the outputs, which live in the
.ipynb alone (nbval re-executes them). After editing a .py pair, `make sync` brings the .ipynb up to date
(then re-execute it with `make execute NB=...`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")  # not on the GPU machine: skip there, never error
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIRS = [ROOT / "notebooks", ROOT / "notebooks" / "solutions"]
NOTEBOOKS = sorted(p for d in NOTEBOOK_DIRS for p in d.glob("*.ipynb"))
PAIRS = sorted(p for d in NOTEBOOK_DIRS for p in d.glob("*.py"))


def _ids(paths):
    return [str(p.relative_to(ROOT / "notebooks")) for p in paths]


def _cells(nb) -> list[tuple[str, str, str | None]]:
    """(cell type, source, slide type) of every cell; trailing whitespace does not count."""
    return [
        (cell.cell_type, cell.source.rstrip(), cell.metadata.get("slideshow", {}).get("slide_type"))
        for cell in nb.cells
    ]


def test_there_are_notebooks_and_solutions():
    names = {p.name for p in NOTEBOOKS}
    assert {"00_overview.ipynb", "03_routing.ipynb", "06_fused_kernel.ipynb"} <= names
    assert any(p.parent.name == "solutions" for p in NOTEBOOKS)


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_pair_exists_and_cells_match(ipynb):
    pair = ipynb.with_suffix(".py")
    assert pair.exists(), f"{pair.relative_to(ROOT)} is missing: run `jupytext --set-formats ipynb,py:percent {ipynb}`"
    nb, py = jupytext.read(ipynb), jupytext.read(pair)
    formats = nb.metadata.get("jupytext", {}).get("formats", "")
    assert formats == "ipynb,py:percent", f"{ipynb.name}: jupytext formats are {formats!r}, not paired"
    a, b = _cells(nb), _cells(py)
    for i, (cell_nb, cell_py) in enumerate(zip(a, b, strict=False)):
        assert cell_nb == cell_py, (
            f"{ipynb.name} cell {i} differs from its .py pair (run `make sync`):\n"
            f"ipynb: {cell_nb!r:.300}\npy   : {cell_py!r:.300}"
        )
    assert len(a) == len(b), f"{ipynb.name} has {len(a)} cells, its .py pair {len(b)} (run `make sync`)"


@pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
def test_every_py_pair_has_its_notebook(pair):
    assert pair.with_suffix(".ipynb").exists(), f"{pair.relative_to(ROOT)} has no .ipynb"
    header = pair.read_text().splitlines()[:4]
    assert "#   jupytext:" in header, f"{pair.name} has no jupytext header"


def test_cells_compare_sources_not_outputs(tmp_path):
    """The comparison itself: an edited source is caught, a different output is not."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    jupytext.write(nb, tmp_path / "a.py", fmt="py:percent")
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    assert _cells(nb) == _cells(jupytext.read(tmp_path / "a.py"))
    nb.cells[0].source = "print(2)"
    assert _cells(nb) != _cells(jupytext.read(tmp_path / "a.py"))

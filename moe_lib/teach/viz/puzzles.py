"""The figure of a kernel puzzle's failure report (notebooks 02, 03, 05, 06, 08): which program wrote each
element of the output, which elements no program wrote, and which writes landed outside the output.

    puzzle_write_map   one panel per output tensor: its memory as a grid of cells, coloured by program
    WritePanel         what one panel shows (the checker in :mod:`moe_lib.teach.puzzles` builds them)
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..._validate import INT_DTYPES, check_tensor
from .style import GUIDE, REMOTE_STYLE, UNUSED_STYLE, check_str, series_colors

#: What a cell of a panel is (``WritePanel.region``).
CELL_NONE, CELL_OUTPUT, CELL_GUARD, CELL_GAP, CELL_KEEP = -1, 0, 1, 2, 3
_UNTOUCHED = "0.93"  # guard, gap or protected cells that nobody wrote
_MAX_TEXT_CELLS = 720  # program numbers in the cells up to this many cells


@dataclass(frozen=True)
class WritePanel:
    """One output tensor's memory, laid out as a grid of cells (rows, cols).

    ``writer``: the program (its index in launch order) that last wrote each cell, -1 for none.
    ``region``: what the cell is — 0 an element of the output, 1 the guard before or after it, 2 the gap
    between two rows, 3 an element of the output that this kernel must leave alone, -1 no cell (the end of a
    wrapped row). ``wrong``: a written element whose value is wrong. ``twice``: a cell written more than
    once. ``row_labels``: one label per row (an index, or "guard").
    """

    name: str
    writer: torch.Tensor
    region: torch.Tensor
    wrong: torch.Tensor
    twice: torch.Tensor
    row_labels: tuple[str, ...]


def _check_panel(i: int, panel) -> tuple[np.ndarray, ...]:
    if not isinstance(panel, WritePanel):
        raise TypeError(f"panels[{i}] must be a WritePanel, got {type(panel).__name__}")
    check_str(f"panels[{i}].name", panel.name)
    check_tensor(f"panels[{i}].writer", panel.writer, ndim=2, dtypes=INT_DTYPES)
    shape = tuple(panel.writer.shape)
    if 0 in shape:
        raise ValueError(f"panels[{i}].writer must not be empty, got shape {shape}")
    check_tensor(f"panels[{i}].region", panel.region, ndim=2, dtypes=INT_DTYPES)
    for field in ("wrong", "twice"):
        check_tensor(f"panels[{i}].{field}", getattr(panel, field), ndim=2, dtypes=(torch.bool,))
    for field in ("region", "wrong", "twice"):
        if tuple(getattr(panel, field).shape) != shape:
            raise ValueError(f"panels[{i}].{field} has shape {tuple(getattr(panel, field).shape)}, "
                             f"panels[{i}].writer {shape}: they must match")
    if len(panel.row_labels) != shape[0]:
        raise ValueError(f"panels[{i}].row_labels holds {len(panel.row_labels)} labels for {shape[0]} rows")
    region = panel.region.cpu().numpy()
    if not np.isin(region, (CELL_NONE, CELL_OUTPUT, CELL_GUARD, CELL_GAP, CELL_KEEP)).all():
        raise ValueError(f"panels[{i}].region holds values other than -1, 0, 1, 2, 3")
    return (panel.writer.cpu().numpy().astype(np.int64), region, panel.wrong.cpu().numpy(),
            panel.twice.cpu().numpy())


def puzzle_write_map(panels: Sequence[WritePanel], *, programs: Sequence[str], title: str | None = None) -> Figure:
    """Which program wrote each cell of each output, one panel per output.

    A written cell has its program's colour (and number, for small grids; ``+`` when it was written more than
    once). White cells marked ``?`` are elements of the output that no program wrote. Hatched cells are the
    guards before and after the output and the gaps between its rows: a colour there is a write outside the
    output. A thick black frame marks an element whose value is wrong. ``programs`` names each program in
    launch order (``"3"`` for a 1-D grid, ``"(1, 0)"`` for a 2-D one).
    """
    if isinstance(panels, WritePanel) or not isinstance(panels, Sequence) or len(panels) == 0:
        raise TypeError("panels must be a non-empty sequence of WritePanel")
    if isinstance(programs, str) or not isinstance(programs, Sequence):
        raise TypeError(f"programs must be a sequence of str, got {type(programs).__name__}")
    programs = [check_str(f"programs[{i}]", p) for i, p in enumerate(programs)]
    if title is not None:
        check_str("title", title)
    data = [_check_panel(i, p) for i, p in enumerate(panels)]
    most = max((int(w.max()) for w, *_ in data), default=-1)
    if most >= len(programs):
        raise ValueError(f"a panel names program {most}, but programs lists {len(programs)}")
    colors = series_colors(max(len(programs), 1))

    widths = [w.shape[1] for w, *_ in data]
    heights = [w.shape[0] for w, *_ in data]
    fig = Figure(figsize=(min(14.0, max(7.0, 2.0 + 0.3 * max(widths))), 1.4 + sum(0.3 * h + 0.55 for h in heights)),
                 layout="constrained")
    axes = fig.subplots(len(data), 1, squeeze=False, height_ratios=[h + 1.5 for h in heights])[:, 0]
    for ax, panel, (writer, region, wrong, twice) in zip(axes, panels, data, strict=True):
        _draw_panel(ax, panel, writer, region, wrong, twice, colors)

    handles = [Patch(facecolor=colors[p], label=f"program {name}" if name == str(p) else f"{p}: program {name}")
               for p, name in enumerate(programs[:9])]
    if len(programs) > 9:
        handles.append(Patch(facecolor="white", edgecolor="white", label=f"... {len(programs)} programs in all"))
    handles += [
        Patch(facecolor=_UNTOUCHED, edgecolor=REMOTE_STYLE["edgecolor"], hatch=REMOTE_STYLE["hatch"],
              label="guard / gap: must stay untouched"),
        Patch(facecolor=_UNTOUCHED, edgecolor=UNUSED_STYLE["edgecolor"], label="not this kernel's to write"),
        Patch(facecolor=UNUSED_STYLE["facecolor"], edgecolor=UNUSED_STYLE["edgecolor"], label="? never written"),
        Patch(facecolor="white", edgecolor=GUIDE, linewidth=2, label="wrong value"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)
    if title is not None:
        fig.suptitle(textwrap.fill(title, 100), fontsize=10)
    return fig


def _draw_panel(ax, panel: WritePanel, writer, region, wrong, twice, colors) -> None:
    rows, cols = writer.shape
    image = np.zeros((rows, cols, 4))
    image[region != CELL_NONE] = to_rgba(_UNTOUCHED)
    image[(region == CELL_OUTPUT)] = to_rgba(UNUSED_STYLE["facecolor"])
    written = writer >= 0
    for (r, c) in zip(*np.nonzero(written), strict=True):
        image[r, c] = to_rgba(colors[writer[r, c]])
    ax.imshow(image, aspect="auto", interpolation="nearest", extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))

    def cells(mask):
        return [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(*np.nonzero(mask), strict=True)]

    outside = (region == CELL_GUARD) | (region == CELL_GAP)
    ax.add_collection(PatchCollection(cells(outside), facecolor="none", edgecolor=REMOTE_STYLE["edgecolor"],
                                      hatch=REMOTE_STYLE["hatch"], linewidth=0.3))
    ax.add_collection(PatchCollection(cells(region != CELL_NONE), facecolor="none",
                                      edgecolor=UNUSED_STYLE["edgecolor"], linewidth=0.4))
    ax.add_collection(PatchCollection(cells(wrong | (written & outside)), facecolor="none", edgecolor=GUIDE,
                                      linewidth=1.8))
    if rows * cols <= _MAX_TEXT_CELLS:
        for r in range(rows):
            for c in range(cols):
                if written[r, c]:
                    text = f"{writer[r, c]}{'+' if twice[r, c] else ''}"
                    ax.text(c, r, text, ha="center", va="center", fontsize=6, color="black")
                elif region[r, c] == CELL_OUTPUT:
                    ax.text(c, r, "?", ha="center", va="center", fontsize=6, color="0.45")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_yticks(range(rows), panel.row_labels, fontsize=7)
    step = 1 if cols <= 24 else 4
    ax.set_xticks(range(0, cols, step))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(panel.name, fontsize=9, loc="left")


__all__ = ["puzzle_write_map", "WritePanel"]

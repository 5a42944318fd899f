"""Figures for the Triton primer (notebook 02): which program of a launch grid reads or writes each element.

    program_map       a grid of a tensor's elements, each coloured by the program that touched it
    record_programs   which program wrote each element of a kernel's output, measured by launching sub-grids
    record_reads      which program read each element of a kernel's input, measured by poisoning it

A *program map* is an integer tensor shaped like the tensor it describes (1-D or 2-D): entry ``i`` is the
flat id of the program that read or wrote element ``i``, or -1 where no program touched it. For a 2-D grid
``(g0, g1)`` the flat id of program ``(i, j)`` is ``i * g1 + j`` (row-major), the order in which the
interpreter runs them. Programs take the distinct, never-grey colours of :func:`.style.expert_colors`;
untouched elements are drawn white (:data:`.style.UNUSED_STYLE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..._validate import INT_DTYPES, check_int, check_tensor
from .style import FLOATS, GUIDE, UNUSED_STYLE, check_str, expert_colors


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------
def _grid(grid) -> tuple[int, ...]:
    """A launch grid: an int or a tuple of one or two ints >= 1."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid,)
    if not isinstance(grid, Sequence) or isinstance(grid, (str, bytes)) or not 1 <= len(grid) <= 2:
        raise TypeError(f"grid must be an int or a tuple of one or two ints, got {grid!r}")
    return tuple(check_int(f"grid[{i}]", g, low=1) for i, g in enumerate(grid))


def _panels(panels) -> dict[str, np.ndarray]:
    """title -> program-id map as an int64 numpy array (1-D or 2-D, not empty, values >= -1)."""
    if isinstance(panels, torch.Tensor):
        panels = {"": panels}
    if not isinstance(panels, Mapping):
        raise TypeError(f"panels must be a tensor or a mapping title -> tensor of program ids, got "
                        f"{type(panels).__name__}")
    if len(panels) == 0:
        raise ValueError("panels must hold at least one tensor")
    out = {}
    for key, ids in panels.items():
        check_str("panels key", key)
        name = f"panels[{key!r}]"
        check_tensor(name, ids, dtypes=INT_DTYPES)
        if ids.dim() not in (1, 2):
            raise ValueError(f"{name} must be 1-D or 2-D, got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(ids.shape)}")
        arr = ids.detach().to("cpu", torch.int64).numpy()
        if arr.min() < -1:
            raise ValueError(f"{name} holds program ids >= 0 and -1 for untouched elements, got {arr.min()}")
        out[key] = arr
    return out


# ----------------------------------------------------------------------------------------------------
# The figure
# ----------------------------------------------------------------------------------------------------
def _pid_label(pid: int, grid: tuple[int, ...] | None) -> str:
    if grid is not None and len(grid) == 2:
        return f"{pid // grid[1]},{pid % grid[1]}"
    return str(pid)


def program_map(
    panels: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    grid: int | tuple[int, ...] | None = None,
    num_programs: int | None = None,
    title: str | None = None,
    per_row: int = 32,
) -> Figure:
    """Each element of one or more tensors as a square, coloured by the program that touched it.

    Every panel is a program map (module docstring): an integer tensor, 1-D or 2-D, holding for each element
    the flat id of the program that read or wrote it, -1 for none (drawn white). A square shows its program's
    id (``i,j`` for a 2-D ``grid``) when the panel is small enough. 1-D panels are drawn as strips of at most
    ``per_row`` elements, stacked; 2-D panels side by side, row 0 at the top. All panels share the colours:
    program ``p`` has the same colour in every panel, so a program's reads and writes can be matched.

    Args:
        panels: a tensor, or a mapping panel title -> tensor (e.g. ``{"x (read)": ..., "out (written)": ...}``).
        grid: the launch grid, an int or a tuple of one or two ints; it labels programs as ``(i, j)`` and
            fixes the number of colours to the number of programs.
        num_programs: how many programs to give colours (default: the grid's size, else the largest id + 1);
            keep it fixed to keep colours fixed across figures.
        title: the figure's title.
        per_row: elements per strip of a 1-D panel.
    """
    maps = _panels(panels)
    if grid is not None:
        grid = _grid(grid)
    check_int("per_row", per_row, low=1)
    if title is not None:
        check_str("title", title)
    largest = max(int(a.max()) for a in maps.values())
    if num_programs is None:
        num_programs = math.prod(grid) if grid is not None else max(largest + 1, 1)
    check_int("num_programs", num_programs, low=1)
    if grid is not None and math.prod(grid) != num_programs:
        raise ValueError(f"num_programs={num_programs} does not match grid {grid} ({math.prod(grid)} programs)")
    if largest >= num_programs:
        raise ValueError(f"the panels hold program id {largest} but there are only {num_programs} programs "
                         f"(num_programs or grid)")

    colors = expert_colors(num_programs)
    # Layout of every panel: (rows, cols) of squares and the (row, col) square of each element.
    layouts = {}
    for key, arr in maps.items():
        if arr.ndim == 1:
            cols = min(per_row, arr.shape[0])
            rows = math.ceil(arr.shape[0] / cols)
            idx = np.arange(arr.shape[0])
            layouts[key] = (rows, cols, idx // cols, idx % cols, arr)
        else:
            r, c = np.indices(arr.shape)
            layouts[key] = (arr.shape[0], arr.shape[1], r.ravel(), c.ravel(), arr.ravel())
    stacked = any(arr.ndim == 1 for arr in maps.values())
    widest = max(lay[1] for lay in layouts.values())
    if stacked:  # inches per square: 0.34, less where the strips would not fit 13 inches
        cell = min(0.34, 11.4 / widest)
        width = max(4.0, cell * widest + 1.6)
        heights = [cell * lay[0] + 0.85 for lay in layouts.values()]  # inches: squares, title, ticks, label
        fig = Figure(figsize=(width, min(12.0, 0.5 + sum(heights))), layout="constrained")
        axes = fig.subplots(len(maps), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    else:  # side by side within 14 x 8 inches
        all_cols, tallest = sum(lay[1] for lay in layouts.values()), max(lay[0] for lay in layouts.values())
        cell = min(0.34, (13.0 - 0.9 * len(layouts)) / all_cols, 6.5 / tallest)
        width = 1.0 + sum(cell * lay[1] + 0.9 for lay in layouts.values())
        height = 1.5 + cell * tallest
        fig = Figure(figsize=(max(width, 4.0), height), layout="constrained")
        axes = fig.subplots(1, len(maps), squeeze=False,
                            gridspec_kw={"width_ratios": [lay[1] + 1 for lay in layouts.values()]})[0]

    for ax, (key, (rows, cols, rr, cc, ids)) in zip(axes, layouts.items(), strict=True):
        for pid in [*sorted(set(ids.tolist()) - {-1}), -1]:
            where = np.flatnonzero(ids == pid)
            if where.size == 0:
                continue
            squares = [Rectangle((cc[i], rr[i]), 1.0, 1.0) for i in where]
            style = UNUSED_STYLE if pid < 0 else {"facecolor": colors[pid], "edgecolor": "white"}
            collection = PatchCollection(squares, linewidth=0.8, match_original=False, **style)
            collection.set_gid("untouched" if pid < 0 else f"program-{pid}")
            ax.add_collection(collection)
        if rows * cols <= 600 and cell >= 0.26:  # each square shows its program while it is big enough
            size = 7 if (grid is None or len(grid) == 1) and num_programs <= 100 else 6
            for i in np.flatnonzero(ids >= 0):
                ax.text(cc[i] + 0.5, rr[i] + 0.52, _pid_label(int(ids[i]), grid), ha="center", va="center",
                        fontsize=size, color="black")
        ax.add_patch(Rectangle((0, 0), cols, rows, fill=False, edgecolor=GUIDE, linewidth=1.0))
        ax.set_xlim(-0.2, (widest if stacked else cols) + 0.2)  # stacked strips share one scale
        ax.set_ylim(rows + 0.2, -0.2)
        ax.set_aspect("equal")
        step = 1 if cols <= 16 else (2 if cols <= 32 else 8)
        ax.set_xticks([c + 0.5 for c in range(0, cols, step)], [str(c) for c in range(0, cols, step)], fontsize=7)
        rstep = 1 if rows <= 16 else 4
        if maps[key].ndim == 1:
            ax.set_yticks([r + 0.5 for r in range(rows)], [str(r * cols) for r in range(rows)], fontsize=7)
            ax.set_xlabel("element" if rows == 1 else "element (+ the strip's first, on the left)", fontsize=8)
        else:
            ax.set_yticks([r + 0.5 for r in range(0, rows, rstep)], [str(r) for r in range(0, rows, rstep)],
                          fontsize=7)
            ax.set_xlabel("column", fontsize=8)
            ax.set_ylabel("row", fontsize=8)
        ax.tick_params(length=0)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        if key:
            ax.set_title(key, fontsize=9)

    present = sorted({int(p) for a in maps.values() for p in np.unique(a) if p >= 0})
    handles = []
    if len(present) <= 16:
        two = grid is not None and len(grid) == 2
        handles = [Patch(facecolor=colors[p], label=f"program ({_pid_label(p, grid).replace(',', ', ')})" if two
                         else f"program {p}") for p in present]
    if any((a < 0).any() for a in maps.values()):
        handles.append(Patch(**UNUSED_STYLE, label="no program"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6 if stacked else 4),
                   fontsize=8, frameon=False)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------
# Measuring a program map
# ----------------------------------------------------------------------------------------------------
def _written(out: torch.Tensor, fill) -> torch.Tensor:
    return ~torch.isnan(out) if out.dtype.is_floating_point else out != fill


def record_programs(launch: Callable[[tuple[int, ...]], object], out: torch.Tensor, grid) -> torch.Tensor:
    """Which program of ``grid`` wrote each element of ``out``: an int64 tensor shaped like ``out``, -1 where
    no program wrote.

    ``launch(sub_grid)`` must run the kernel on the launch grid ``sub_grid`` (a tuple) with ``out`` as the
    tensor it writes. The kernel is launched on growing sub-grids, each time on ``out`` filled with NaN (an
    integer ``out``: its dtype's smallest value): for a 1-D grid, the elements that grid ``(p + 1,)`` writes
    and grid ``(p,)`` does not are program ``p``'s; for a 2-D grid, program ``(i, j)`` (flat id
    ``i * g1 + j``) owns what grid ``(i + 1, j + 1)`` writes and neither ``(i, j + 1)`` nor ``(i + 1, j)``
    does. So it needs programs that write disjoint elements (an element written by several is given to the
    first, in that order) and a kernel that does not store NaN (or the fill). ``out`` is left holding the
    result of the full grid. No GPU needed; on one the same works, launch by launch.
    """
    if not callable(launch):
        raise TypeError(f"launch must be a callable taking a launch grid, got {type(launch).__name__}")
    check_tensor("out", out, dtypes=FLOATS + INT_DTYPES + (torch.int16, torch.int8, torch.uint8))
    if out.numel() == 0:
        raise ValueError(f"out must not be empty, got shape {tuple(out.shape)}")
    grid = _grid(grid)
    fill = float("nan") if out.dtype.is_floating_point else torch.iinfo(out.dtype).min
    cache: dict[tuple[int, ...], torch.Tensor] = {}
    last = [None]

    def run(sub: tuple[int, ...]) -> None:
        out.fill_(fill)
        launch(sub)
        last[0] = sub

    def written(sub: tuple[int, ...]) -> torch.Tensor:
        if 0 in sub:
            return torch.zeros(out.shape, dtype=torch.bool)
        if sub not in cache:
            run(sub)
            cache[sub] = _written(out, fill).cpu()
        return cache[sub]

    owner = torch.full(out.shape, -1, dtype=torch.int64)
    if len(grid) == 1:
        subs = [((p + 1,), [(p,)], p) for p in range(grid[0])]
    else:
        g0, g1 = grid
        subs = [((i + 1, j + 1), [(i, j + 1), (i + 1, j)], i * g1 + j) for i in range(g0) for j in range(g1)]
    for sub, before, pid in subs:
        new = written(sub)
        for b in before:
            new = new & ~written(b)
        owner[new & (owner < 0)] = pid
    if last[0] != grid:  # leave out as the full launch wrote it
        run(grid)
    return owner


def record_reads(launch: Callable[[tuple[int, ...]], object], inp: torch.Tensor, out: torch.Tensor,
                 grid, *, poison: float = float("nan")) -> torch.Tensor:
    """Which program of ``grid`` read each element of ``inp``: an int64 tensor shaped like ``inp``, -1 where no
    program read it (the lowest program id where several did).

    ``launch(sub_grid)`` runs the kernel as for :func:`record_programs`, reading the floating-point ``inp``
    and writing ``out``. First the writers of ``out`` are recorded and the full grid's output kept; then, one
    element at a time, ``inp``'s element is set to ``poison`` and the full grid launched again: the programs
    whose written elements change read it. A read whose value never reaches the output is not seen: a
    masked-off lane, a value multiplied by zero — or NaN in a ``tl.max``, which ignores NaN: pass
    ``poison=float("inf")`` there. One launch per element of ``inp``: for small tensors. ``inp`` is restored
    and ``out`` left as the full launch wrote it.
    """
    check_tensor("inp", inp, dtypes=FLOATS)
    if inp.numel() == 0:
        raise ValueError(f"inp must not be empty, got shape {tuple(inp.shape)}")
    check_tensor("out", out, dtypes=FLOATS)
    if isinstance(poison, bool) or not isinstance(poison, (int, float)):
        raise TypeError(f"poison must be a float, got {type(poison).__name__}")
    writers = record_programs(launch, out, grid).view(-1)  # (out.numel(),)
    grid = _grid(grid)
    baseline = out.detach().clone().view(-1).cpu()
    readers = torch.full((inp.numel(),), -1, dtype=torch.int64)
    for i in range(inp.numel()):
        index = tuple(int(v) for v in np.unravel_index(i, tuple(inp.shape)))
        saved = inp[index].item()
        inp[index] = poison
        launch(grid)
        now = out.detach().view(-1).cpu()
        changed = ~((now == baseline) | (torch.isnan(now) & torch.isnan(baseline)))
        hit = writers[changed & (writers >= 0)]
        if hit.numel():
            readers[i] = int(hit.min())
        inp[index] = saved
    launch(grid)  # leave out as the full launch wrote it, from the restored input
    return readers.view(inp.shape)


__all__ = ["program_map", "record_programs", "record_reads"]

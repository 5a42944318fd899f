"""The one place for colours and for the drawing and argument rules that every figure module shares.

The notebooks promise that an expert, a rank or an implementation has the same colour in every figure:
every module asks this one for it (:func:`expert_colors`, :func:`rank_colors`, :data:`IMPL_COLORS`) and
picks no colour map of its own for them.

    expert_colors   one colour per expert id: tab10 / tab20 without their greys, an even sweep beyond
    rank_colors     one colour per rank: Set2 (soft, apart from the expert colours), an even sweep beyond 8
    series_colors   lines that are neither experts nor ranks (BLOCK_M values, runs, placements)
    tp_colors       one colour per tensor-parallel degree, light to dark
    IMPL_COLORS     the benchmarked implementations; REFERENCE_COLOR: vLLM
    CHOSEN, OTHER   chosen experts and the rest; GUIDE: reference lines and outlines
    PADDING_STYLE, UNUSED_STYLE, REMOTE_STYLE   slots of an aligned layout that hold no row of this rank
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from ..._validate import FLOAT_DTYPES, INT_DTYPES, check_int, check_tensor
from ...config import MoEConfig

# ----------------------------------------------------------------------------------------------------
# Colours
# ----------------------------------------------------------------------------------------------------
#: Chosen experts, the rest, and reference lines (balanced load, floors, outlines).
CHOSEN, OTHER, GUIDE = "tab:orange", "tab:gray", "black"
#: The benchmarked implementations, so every figure and notebook agrees; vLLM, the reference, is black.
IMPL_COLORS = {"moe_lib": "tab:blue", "grouped_mm": "tab:green", "loop": "tab:red"}
REFERENCE_COLOR = "black"
#: A layer call split in two: the kernel's time and the all-reduce's.
KERNEL_COLOR, COMM_COLOR = "tab:blue", "tab:red"
#: Slots of an aligned layout that hold no (token, slot) row of this rank. Grey means padding, so the
#: expert and series colours leave the greys out.
PADDING_STYLE = {"facecolor": "0.82", "edgecolor": "0.45", "hatch": "////"}
UNUSED_STYLE = {"facecolor": "white", "edgecolor": "0.8"}
REMOTE_STYLE = {"facecolor": "0.95", "edgecolor": "0.55", "hatch": "xx"}

_TAB10_NO_GREY = (0, 1, 2, 3, 4, 5, 6, 8, 9)
_TAB20_NO_GREY = tuple(i for i in range(20) if i not in (14, 15))


def _sweep(count: int) -> list[tuple]:
    """``count`` colours evenly spread over a wide map, for more items than a qualitative map holds."""
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / max(count - 1, 1)) for i in range(count)]


def expert_colors(num_experts: int) -> list[tuple]:
    """One RGBA colour per expert id, the same in every figure that shows ``num_experts`` experts: tab10
    (up to 9 experts) or tab20 (up to 18) without their greys, else an even sweep of a wide map."""
    check_int("num_experts", num_experts, low=1)
    if num_experts <= len(_TAB10_NO_GREY):
        return [colormaps["tab10"](i) for i in _TAB10_NO_GREY[:num_experts]]
    if num_experts <= len(_TAB20_NO_GREY):
        return [colormaps["tab20"](i) for i in _TAB20_NO_GREY[:num_experts]]
    return _sweep(num_experts)


def rank_colors(num_ranks: int) -> list[tuple]:
    """One RGBA colour per rank, the same in every figure: Set2 (soft, so a rank never looks like an expert)
    up to 8 ranks — rank r keeps its colour whatever the number of ranks — else an even sweep of a wide map,
    so that every one of many ranks stays distinct."""
    check_int("num_ranks", num_ranks, low=1)
    cmap = colormaps["Set2"]
    return [cmap(r) for r in range(num_ranks)] if num_ranks <= cmap.N else _sweep(num_ranks)


def series_colors(count: int) -> list[tuple]:
    """``count`` distinct colours, in a fixed order, for the lines of one figure that are neither experts nor
    ranks (tab10 without grey, repeated past 9)."""
    check_int("count", count, low=0)
    return [colormaps["tab10"](_TAB10_NO_GREY[i % len(_TAB10_NO_GREY)]) for i in range(count)]


def tp_colors(tps: Sequence[int]) -> dict[int, tuple]:
    """One colour per tensor-parallel degree, in the given order, light to dark (viridis)."""
    cmap = colormaps["viridis"]
    n = len(tps)
    return {tp: cmap(0.1 + 0.75 * i / max(n - 1, 1)) for i, tp in enumerate(tps)}


# ----------------------------------------------------------------------------------------------------
# Axes
# ----------------------------------------------------------------------------------------------------
#: Tick labels 200, 1000, 5000 rather than 2x10^2 ... on log axes.
PLAIN = FuncFormatter(lambda value, _pos: f"{value:g}")


def log_axes(ax: Axes, *, x_base: int = 2, y_log: bool = True) -> None:
    """A log x axis (and log y unless ``y_log`` is False) with plain tick labels and a light grid."""
    ax.set_xscale("log", base=x_base)
    ax.xaxis.set_major_formatter(PLAIN)
    if y_log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(PLAIN)
    ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.12, which="minor")


def figure_legend(fig: Figure, axes: Iterable[Axes], *, ncol: int | None = None) -> None:
    """One legend under the figure: every label of ``axes`` once, in order of appearance."""
    legend = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                legend.setdefault(label, handle)
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=ncol or min(len(legend), 6),
                   fontsize=8, frameon=False)


# ----------------------------------------------------------------------------------------------------
# Argument checks shared by the figure modules (a bad argument is named in the error)
# ----------------------------------------------------------------------------------------------------
#: Figures draw any floating-point tensor, fp64 included.
FLOATS = FLOAT_DTYPES + (torch.float64,)


def check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def is_number(value) -> bool:
    """An int or a float, not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def int_list(name: str, values, *, low: int, distinct: bool = False) -> list[int]:
    """A non-empty sequence (or 1-D integer tensor) of ints >= ``low``; no value twice when ``distinct``."""
    if isinstance(values, torch.Tensor):
        check_tensor(name, values, ndim=1, dtypes=INT_DTYPES)
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one value")
    out = [check_int(f"{name}[{i}]", v, low=low) for i, v in enumerate(values)]
    if distinct and len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a value, got {out}")
    return out


def check_config(config) -> MoEConfig:
    if not isinstance(config, MoEConfig):
        raise TypeError(f"config must be a moe_lib.config.MoEConfig, got {type(config).__name__}")
    return config


def check_runs(runs, *, keys: Sequence[str], record_keys: Sequence[str]) -> list[Mapping]:
    """A non-empty list of recorded benchmark runs: dicts holding ``keys``, whose ``records`` hold
    ``record_keys``."""
    if isinstance(runs, (str, bytes, Mapping)) or not isinstance(runs, Sequence):
        raise TypeError(f"runs must be a sequence of benchmark results (dicts), got {type(runs).__name__}")
    if len(runs) == 0:
        raise ValueError("runs must hold at least one benchmark result")
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise TypeError(f"runs[{i}] must be a dict, got {type(run).__name__}")
        missing = [key for key in keys if key not in run]
        if missing:
            raise ValueError(f"runs[{i}] lacks {missing}")
        for j, rec in enumerate(run["records"]):
            if not isinstance(rec, Mapping) or not set(record_keys) <= set(rec):
                raise ValueError(f"runs[{i}]['records'][{j}] must be a dict with {', '.join(record_keys)}")
    return list(runs)


__all__ = [
    "expert_colors",
    "rank_colors",
    "series_colors",
    "tp_colors",
    "IMPL_COLORS",
    "REFERENCE_COLOR",
    "CHOSEN",
    "OTHER",
    "GUIDE",
    "PADDING_STYLE",
    "UNUSED_STYLE",
    "REMOTE_STYLE",
]

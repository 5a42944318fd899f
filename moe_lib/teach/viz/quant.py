"""Figures for notebook 11 (FP8 experts).

    e4m3_grid                   every positive e4m3 value, the step between neighbours, and the largest relative
                                rounding error, against the magnitude (log axes)
    scale_layouts               which weights share a scale: per tensor, per channel, per block
    relative_error_histograms   the per-element relative error of quantized weights, one outline per layout
    error_vs_block_size         error measures against the block size, with per-tensor / per-channel lines
    token_errors                the relative error of each token's quantized activations, per scale layout
    k_group_scales              the scale factor each K group of one output element gets (per channel vs block)
    error_budget                grouped bars: the error of each scale layout, by what was quantized
    fp8_latency                 µs per layer call against M, bf16 and FP8 paths, with the bf16 and FP8 floors
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..._validate import check_int, check_tensor
from ...perf.floors import MIXTRAL, floor_us
from .style import (
    CHOSEN,
    FLOATS,
    GUIDE,
    OTHER,
    PLAIN,
    check_runs,
    check_str,
    figure_legend,
    int_list,
    is_number,
    log_axes,
    series_colors,
)

_E4M3 = torch.float8_e4m3fn


def e4m3_positive_values() -> torch.Tensor:
    """Every positive finite float8_e4m3fn value, ascending (126 of them: bit patterns 0x01 ... 0x7E)."""
    bits = torch.arange(1, 0x7F, dtype=torch.int32).to(torch.uint8)
    return bits.view(_E4M3).double()


def _float_map(name: str, values) -> dict[str, np.ndarray]:
    """A non-empty mapping label -> floating tensor (or sequence of numbers), as float64 numpy arrays."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a mapping label -> values, got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one entry")
    out = {}
    for label, v in values.items():
        check_str(f"{name} key", label)
        if isinstance(v, torch.Tensor):
            check_tensor(f"{name}[{label!r}]", v, dtypes=FLOATS)
            arr = v.detach().to("cpu", torch.float64).flatten().numpy()
        else:
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not all(is_number(x) for x in v):
                raise TypeError(f"{name}[{label!r}] must be a floating tensor or a sequence of numbers")
            arr = np.asarray(v, dtype=np.float64)
        if arr.size == 0:
            raise ValueError(f"{name}[{label!r}] must not be empty")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}[{label!r}] must hold finite values")
        out[label] = arr
    return out


# ----------------------------------------------------------------------------------------------------
# The format
# ----------------------------------------------------------------------------------------------------
def e4m3_grid(marks: Mapping[float, float] | None = None) -> Figure:
    """The e4m3 grid in three panels: (a) every positive value on a log axis, one row per exponent field
    (subnormals in orange); (b) the step to the next value against the magnitude; (c) the largest relative
    rounding error, half a step over the value, with bf16's for comparison. ``marks``: x -> its rounded value,
    drawn on (a) as an arrow from x to the grid value it rounds to."""
    marks = {} if marks is None else marks
    if not isinstance(marks, Mapping):
        raise TypeError(f"marks must be a mapping x -> rounded value, got {type(marks).__name__}")
    for x, q in marks.items():
        if not (is_number(x) and is_number(q) and x > 0 and q > 0):
            raise ValueError(f"marks must map positive numbers to positive numbers, got {x!r} -> {q!r}")
    values = e4m3_positive_values().numpy()  # (126,)
    bits = np.arange(1, 0x7F)
    field = bits >> 3  # the exponent field: 0 for subnormals
    sub = field == 0
    step = np.diff(np.append(values, 480.0))  # to the next value (past 448 the grid would continue at 480)

    fig = Figure(figsize=(13.0, 3.8), layout="constrained")
    ax_grid, ax_step, ax_rel = fig.subplots(1, 3)
    ax_grid.scatter(values[~sub], field[~sub], s=9, color="tab:blue", label="normal: $2^{e-7}(1 + m/8)$")
    ax_grid.scatter(values[sub], field[sub], s=9, color=CHOSEN, label="subnormal: $2^{-6} \\cdot m/8$")
    for x, q in marks.items():
        row = float(np.clip(math.floor(math.log2(q)) + 7, 0, 15))
        ax_grid.annotate("", xy=(q, row), xytext=(x, row + 1.6),
                         arrowprops={"arrowstyle": "->", "color": GUIDE, "lw": 0.8})
        ax_grid.text(x, row + 1.8, f"{x:g}", fontsize=7, ha="center", va="bottom")
    ax_grid.set_xscale("log", base=2)
    ax_grid.set_xlabel("value (log scale)")
    ax_grid.set_ylabel("exponent field e (bits 6..3)")
    ax_grid.set_ylim(-0.8, 17.5)
    ax_grid.set_title("(a) the 126 positive e4m3 values", fontsize=10)
    ax_grid.grid(alpha=0.3)
    ax_grid.legend(fontsize=7, loc="upper left")

    ax_step.step(values, step, where="post", color="tab:blue")
    ax_step.set_xscale("log", base=2)
    ax_step.set_yscale("log", base=2)
    ax_step.axvline(2.0**-6, color=OTHER, linestyle=":", linewidth=1)
    ax_step.text(2.0**-6, 2.0**3, " smallest normal $2^{-6}$", fontsize=7, color=OTHER)
    ax_step.set_xlabel("value (log scale)")
    ax_step.set_ylabel("step to the next value")
    ax_step.set_title("(b) step size: $2^{e-3}$, doubling every binade", fontsize=10)
    ax_step.grid(alpha=0.3)

    rel = 0.5 * step / values
    ax_rel.step(values, 100 * rel, where="post", color="tab:blue", label="e4m3 (3 mantissa bits)")
    ax_rel.axhline(100 / 16, color=GUIDE, linestyle="--", linewidth=1, label="1/16 = 6.25 %")
    ax_rel.axhline(100 / 256, color=OTHER, linestyle="-.", linewidth=1, label="bf16 (7 bits): at most 0.39 %")
    ax_rel.set_xscale("log", base=2)
    ax_rel.set_yscale("log")
    ax_rel.yaxis.set_major_formatter(PLAIN)
    ax_rel.set_xlabel("value (log scale)")
    ax_rel.set_ylabel("largest rounding error (% of the value)")
    ax_rel.set_title("(c) relative error: flat above $2^{-6}$", fontsize=10)
    ax_rel.grid(alpha=0.3)
    ax_rel.legend(fontsize=7, loc="upper right")
    return fig


# ----------------------------------------------------------------------------------------------------
# Scales
# ----------------------------------------------------------------------------------------------------
def scale_layouts(rows: int = 8, cols: int = 16, block: tuple[int, int] = (4, 8)) -> Figure:
    """A (rows, cols) weight — N output channels by K inputs — coloured by the scale each element shares:
    one per tensor, one per channel (row), one per ``block`` = (bn, bk) tile."""
    check_int("rows", rows, low=1, high=64)
    check_int("cols", cols, low=1, high=64)
    if not (isinstance(block, (tuple, list)) and len(block) == 2):
        raise TypeError(f"block must be (bn, bk), got {block!r}")
    bn, bk = (check_int("block[0]", block[0], low=1), check_int("block[1]", block[1], low=1))
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    ids = {
        "per tensor: 1 scale": np.zeros((rows, cols), dtype=np.int64),
        f"per channel: {rows} scales": np.broadcast_to(r, (rows, cols)),
        f"per block {bn} x {bk}: {math.ceil(rows / bn) * math.ceil(cols / bk)} scales":
            (r // bn) * math.ceil(cols / bk) + c // bk,
    }
    fig = Figure(figsize=(12.0, 2.9), layout="constrained")
    axes = fig.subplots(1, 3)
    palette = ListedColormap(series_colors(9))
    for ax, (title, grid) in zip(axes, ids.items(), strict=True):
        ax.imshow(grid % 9, cmap=palette, vmin=0, vmax=8, aspect="equal", interpolation="nearest")
        ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
        ax.set_xticks([0, cols - 1])
        ax.set_yticks([0, rows - 1])
        ax.set_xlabel("K (inputs)")
        ax.set_ylabel("N (output channels)")
        ax.set_title(title, fontsize=10)
    return fig


def relative_error_histograms(errors: Mapping[str, torch.Tensor], *, bound: float = 1 / 16,
                              title: str | None = None) -> Figure:
    """Histograms (log-spaced bins, log counts) of per-element relative errors |q - w| / |w|, one outline per
    entry of ``errors``; the dashed line is ``bound`` (the largest error of a normal e4m3 value, 1/16).
    Exact values (error 0) count in the first bin; values flushed to zero sit at 1."""
    data = _float_map("errors", errors)
    if not (is_number(bound) and bound > 0):
        raise ValueError(f"bound must be a positive number, got {bound!r}")
    edges = np.logspace(-6, 0.5, 53)
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for color, (label, err) in zip(series_colors(len(data)), data.items(), strict=True):
        clipped = np.clip(np.abs(err), edges[0], edges[-1] * 0.999)
        beyond = float((np.abs(err) > bound * 1.0001).mean())
        ax.hist(clipped, bins=edges, histtype="step", linewidth=1.4, color=color,
                label=f"{label}: {beyond:.3%} above the bound")
    ax.axvline(bound, color=GUIDE, linestyle="--", linewidth=1, label=f"bound {bound:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("relative error |q·s − w| / |w|")
    ax.set_ylabel("weights")
    ax.set_title(title if title is not None else "Per-weight relative error", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def error_vs_block_size(block_sizes: Sequence[int], panels: Mapping[str, Mapping[str, Sequence[float]]], *,
                        references: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """One panel per error measure (``panels``: measure -> label -> one value per block size), against the block
    size (log2 axis); ``references``: label -> measure -> value, drawn as horizontal dashed lines (per tensor,
    per channel)."""
    sizes = int_list("block_sizes", block_sizes, low=1, distinct=True)
    if not isinstance(panels, Mapping) or len(panels) == 0:
        raise TypeError("panels must be a non-empty mapping measure -> {label: values}")
    references = {} if references is None else references
    if not isinstance(references, Mapping):
        raise TypeError(f"references must be a mapping label -> {{measure: value}}, got {type(references).__name__}")
    checked = {}
    for measure, series in panels.items():
        check_str("panels key", measure)
        data = _float_map(f"panels[{measure!r}]", series)
        for label, values in data.items():
            if values.shape != (len(sizes),):
                raise ValueError(f"panels[{measure!r}][{label!r}] must hold {len(sizes)} values (one per block "
                                 f"size), got {values.size}")
        checked[measure] = data
    for label, by_measure in references.items():
        check_str("references key", label)
        if not isinstance(by_measure, Mapping) or not all(is_number(v) for v in by_measure.values()):
            raise TypeError(f"references[{label!r}] must map measures to numbers")
    fig = Figure(figsize=(5.2 * len(checked) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(checked), squeeze=False)[0]
    ref_colors = {label: c for label, c in zip(references, (GUIDE, OTHER, CHOSEN, "tab:purple"), strict=False)}
    for ax, (measure, data) in zip(axes, checked.items(), strict=True):
        for color, (label, values) in zip(series_colors(len(data)), data.items(), strict=True):
            ax.plot(sizes, values, marker="o", markersize=4, color=color, label=label)
        for label, by_measure in references.items():
            if measure in by_measure:
                ax.axhline(by_measure[measure], color=ref_colors.get(label, GUIDE), linestyle="--", linewidth=1,
                           label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(PLAIN)
        ax.set_xticks(sizes)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("block size b (b x b blocks)")
        ax.set_ylabel(measure)
        ax.grid(alpha=0.3)
        ax.set_title(measure, fontsize=10)
    figure_legend(fig, axes)
    return fig


def token_errors(errors: Mapping[str, torch.Tensor], *, highlight: int | None = None) -> Figure:
    """The relative error of each token's quantized activations (one value per token) for several scale
    layouts, on a log axis; ``highlight`` marks one token (the one with the outliers)."""
    data = _float_map("errors", errors)
    lengths = {v.size for v in data.values()}
    if len(lengths) != 1:
        raise ValueError("every entry of errors must hold one value per token (the same number)")
    m = lengths.pop()
    if highlight is not None:
        check_int("highlight", highlight, low=0, high=m - 1)
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for color, (label, err) in zip(series_colors(len(data)), data.items(), strict=True):
        ax.plot(np.arange(m), 100 * np.maximum(err, 1e-6), marker="o", markersize=3, color=color, label=label)
    if highlight is not None:
        ax.axvspan(highlight - 0.5, highlight + 0.5, color=CHOSEN, alpha=0.2, label=f"token {highlight}: outliers")
    ax.set_yscale("log")
    ax.set_yticks([t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                   if t >= 0.5 * 100 * min(float(e.min()) for e in data.values())])
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(np.arange(m))
    ax.set_xlabel("token")
    ax.set_ylabel("relative error of the token (%)")
    ax.set_title("Activation quantization error per token", fontsize=10)
    ax.grid(alpha=0.3)
    figure_legend(fig, [ax], ncol=3)
    return fig


def k_group_scales(per_channel: float, per_block: torch.Tensor, *, group: int) -> Figure:
    """The factor that multiplies each K group's partial sum of one output element: the same
    ``per_channel`` value for every group (it factors out of the sum), or ``per_block[g]`` per group (it does
    not)."""
    if not (is_number(per_channel) and per_channel > 0):
        raise ValueError(f"per_channel must be a positive number, got {per_channel!r}")
    check_tensor("per_block", per_block, ndim=1, dtypes=FLOATS)
    check_int("group", group, low=1)
    factors = per_block.detach().to("cpu", torch.float64).numpy()
    if factors.size == 0 or not (factors > 0).all():
        raise ValueError("per_block must hold positive factors, one per K group")
    g = np.arange(factors.size)
    fig = Figure(figsize=(7.0, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(g - 0.2, np.full(factors.size, per_channel), width=0.4, color="tab:blue",
           label="per channel / token: $s_a[m]\\,s_b[n]$, the same for every group")
    ax.bar(g + 0.2, factors, width=0.4, color=CHOSEN, label="per block: $s_a[m, g]\\,s_b[n, g]$")
    ax.set_xticks(g, [f"k in [{i * group}, {(i + 1) * group})" for i in g], fontsize=8)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_xlabel("K group g")
    ax.set_ylabel("factor on the group's partial sum")
    ax.set_title("One output element: C[m, n] = sum over g of factor_g x (its group's raw sum)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    figure_legend(fig, [ax], ncol=1)
    return fig


def error_budget(errors: Mapping[str, Mapping[str, float]], *, title: str | None = None) -> Figure:
    """Grouped bars of relative errors (in %): ``errors[layout][what]``, e.g. "weights only" and "the FP8 call"
    for each scale layout. Every layout must name the same bars."""
    if not isinstance(errors, Mapping) or len(errors) == 0:
        raise TypeError("errors must be a non-empty mapping layout -> {bar: relative error}")
    bars = None
    for layout, by_bar in errors.items():
        check_str("errors key", layout)
        if not isinstance(by_bar, Mapping) or len(by_bar) == 0:
            raise TypeError(f"errors[{layout!r}] must be a non-empty mapping bar -> relative error")
        if not all(is_number(v) and math.isfinite(v) and v >= 0 for v in by_bar.values()):
            raise ValueError(f"errors[{layout!r}] must hold finite relative errors >= 0")
        if bars is None:
            bars = list(by_bar)
        elif list(by_bar) != bars:
            raise ValueError(f"errors[{layout!r}] names the bars {list(by_bar)}, the first layout {bars}")
    if title is not None:
        check_str("title", title)
    layouts = list(errors)
    width = 0.8 / len(bars)
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(layouts))
    for i, (color, bar) in enumerate(zip(series_colors(len(bars)), bars, strict=True)):
        values = [100 * errors[layout][bar] for layout in layouts]
        rects = ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width=width, color=color, label=bar)
        ax.bar_label(rects, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, layouts)
    ax.set_ylim(0, 1.15 * ax.get_ylim()[1])
    ax.set_ylabel("relative error (%)")
    ax.set_title(title if title is not None else "Where the error comes from", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    figure_legend(fig, [ax], ncol=1)
    return fig


# ----------------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------------
def fp8_latency(runs: Sequence[Mapping], *, ceilings: Mapping[str, float], tps: Sequence[int] = (1, 8),
                shape: Mapping[str, int] = MIXTRAL) -> Figure:
    """µs per layer call against M (log-log), one panel per tensor-parallel degree: every implementation of
    every run (``records`` of ``{"tp", "M", "impl", "us"}``; a run's label is its ``label`` or ``gpu``), the
    bf16 floor (dashed: 2-byte weights, ``matmul_TFLOPs``) and the FP8 floor (dotted: 1-byte weights,
    ``fp8_matmul_TFLOPs``), both at ``copy_TBps``."""
    runs = check_runs(runs, keys=("gpu", "records"), record_keys=("tp", "M", "impl", "us"))
    tps = int_list("tps", tps, low=1)
    if not isinstance(ceilings, Mapping):
        raise TypeError(f"ceilings must be a dict, got {type(ceilings).__name__}")
    for key in ("copy_TBps", "matmul_TFLOPs", "fp8_matmul_TFLOPs"):
        if not (key in ceilings and is_number(ceilings[key]) and ceilings[key] > 0):
            raise ValueError(f"ceilings[{key!r}] must be a positive number")
    fp8_ceilings = {"copy_TBps": ceilings["copy_TBps"], "matmul_TFLOPs": ceilings["fp8_matmul_TFLOPs"]}
    series = sorted({(str(run.get("label", run["gpu"])), r["impl"]) for run in runs for r in run["records"]})
    colors = dict(zip(series, series_colors(len(series)), strict=True))
    fig = Figure(figsize=(4.4 * len(tps) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(tps), squeeze=False)[0]
    for ax, tp in zip(axes, tps, strict=True):
        ms = set()
        for run in runs:
            label = str(run.get("label", run["gpu"]))
            for impl in sorted({r["impl"] for r in run["records"]}):
                pts = sorted((r["M"], r["us"]) for r in run["records"]
                             if r["tp"] == tp and r["impl"] == impl and r["us"] is not None)
                if pts:
                    arr = np.array(pts)
                    ms.update(arr[:, 0].tolist())
                    ax.plot(arr[:, 0], arr[:, 1], marker="o", markersize=3, color=colors[(label, impl)],
                            label=impl if len(runs) == 1 else f"{label}: {impl}")
        if ms:
            m = np.array(sorted(ms))
            ax.plot(m, [floor_us(int(x), tp, dict(ceilings), shape)["floor_us"] for x in m], color=GUIDE,
                    linestyle="--", linewidth=1, label="bf16 floor")
            ax.plot(m, [floor_us(int(x), tp, fp8_ceilings, shape, bytes_per_weight=1)["floor_us"] for x in m],
                    color=GUIDE, linestyle=":", linewidth=1.2, label="FP8 floor")
            log_axes(ax)
        else:
            ax.text(0.5, 0.5, f"no TP={tp} records", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("tokens per call, M")
        ax.set_ylabel("µs per layer call")
        ax.set_title(f"TP = {tp}", fontsize=10)
    figure_legend(fig, axes, ncol=3)
    return fig


__all__ = [
    "e4m3_positive_values",
    "e4m3_grid",
    "scale_layouts",
    "relative_error_histograms",
    "error_vs_block_size",
    "token_errors",
    "k_group_scales",
    "error_budget",
    "fp8_latency",
]

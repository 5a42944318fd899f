"""Figures for the parallelism notebooks (08 tensor parallel, 09 expert parallel). Ranks and experts take
their colours from :mod:`.style`, as in every other figure.

    tp_shards               one expert's w13 and w2, coloured by the rank that holds each slice
    allreduce_traffic       bytes each rank sends per token in a ring all-reduce, against the TP size
    parallel_bench          recorded NCCL runs: kernel + all-reduce µs per layer call, TP = 1 against TP = N
    expert_placement        which logical expert each rank's (physical) expert slots hold
    rank_loads              (token, slot) rows per rank, for several placements
    imbalance_vs_redundancy max / mean rank load against the number of redundant experts
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..._validate import INT_DTYPES, check_int, check_tensor
from .style import (
    COMM_COLOR,
    GUIDE,
    KERNEL_COLOR,
    check_runs,
    check_str,
    expert_colors,
    int_list,
    is_number,
    rank_colors,
    series_colors,
)


def _float_list(name: str, values, *, length: int | None = None) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    for i, v in enumerate(values):
        if not is_number(v) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name}[{i}] must be a finite number >= 0, got {v!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must hold {length} values, got {len(values)}")
    return [float(v) for v in values]


# ----------------------------------------------------------------------------------------------------
# Notebook 08: tensor parallel
# ----------------------------------------------------------------------------------------------------
def _band(ax: Axes, x: float, y: float, w: float, h: float, color, label: str | None, gid: str) -> None:
    rect = Rectangle((x, y), w, h, facecolor=color, edgecolor="white", linewidth=1.5)
    rect.set_gid(gid)
    ax.add_patch(rect)
    if label:
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=8)


def tp_shards(hidden: int, inter: int, tp_size: int, *, title: str | None = None) -> Figure:
    """One expert's weights, each slice coloured by the rank that holds it.

    Left, w13 = [w1; w3] (2I x H): w1 and w3 are each cut into ``tp_size`` bands of I / tp rows —
    column-parallel, so rank r holds [w1_r; w3_r]. Right, w2 (H x I): cut into ``tp_size`` bands of I / tp
    columns — row-parallel (the reduction dimension is split, so each rank's product is a partial sum).
    """
    check_int("hidden", hidden, low=1)
    check_int("inter", inter, low=1)
    check_int("tp_size", tp_size, low=1)
    if inter % tp_size:
        raise ValueError(f"inter ({inter}) must be divisible by tp_size ({tp_size})")
    if title is not None:
        check_str("title", title)
    part = inter / tp_size
    colors = rank_colors(tp_size)
    labels = tp_size <= 8
    fig = Figure(figsize=(8.6, 4.4), layout="constrained")
    ax13, ax2 = fig.subplots(1, 2, width_ratios=[1.0, 1.5])
    for half, name in ((0, "w1"), (1, "w3")):  # rows [0, I) gate, [I, 2I) up; drawn top to bottom
        for r in range(tp_size):
            y = 2 * inter - (half * inter + (r + 1) * part)
            _band(ax13, 0, y, hidden, part, colors[r], f"{name} · rank {r}" if labels else None, f"w13-{name}-{r}")
    ax13.axhline(inter, color=GUIDE, linewidth=1.2)
    ax13.set(xlim=(0, hidden), ylim=(0, 2 * inter), xlabel=f"H = {hidden} (input)",
             ylabel=f"2I = {2 * inter} (output rows)")
    ax13.set_yticks([0, inter, 2 * inter], [f"{2 * inter}", f"{inter}", "0"])
    ax13.set_title("w13 = [w1; w3]: split the output rows\n(column-parallel)", fontsize=10)
    for r in range(tp_size):
        _band(ax2, r * part, 0, part, hidden, colors[r], f"rank {r}" if labels else None, f"w2-{r}")
    ax2.set(xlim=(0, inter), ylim=(0, hidden), xlabel=f"I = {inter} (input: the reduction)",
            ylabel=f"H = {hidden} (output)")
    ax2.set_title("w2: split the input columns\n(row-parallel: each rank's product is a partial sum)", fontsize=10)
    for ax in (ax13, ax2):
        ax.tick_params(labelsize=8)
    handles = [Patch(facecolor=colors[r], label=f"rank {r}") for r in range(tp_size)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(tp_size, 8), fontsize=9, frameon=False)
    fig.suptitle(title or f"One expert's weights, tensor parallel over {tp_size} ranks (I / tp = {inter // tp_size})",
                 fontsize=11)
    return fig


def allreduce_traffic(hidden: int, tp_sizes: Sequence[int], *, bytes_per_element: int = 2) -> Figure:
    """Bytes sent per token by a ring all-reduce of the layer output (H values per token), against TP.

    Each rank sends 2 (tp - 1) / tp x H x bytes (reduce-scatter, then all-gather); all ranks together
    send 2 (tp - 1) x H x bytes. The dashed line is the per-rank limit, 2 H x bytes.
    """
    check_int("hidden", hidden, low=1)
    tps = int_list("tp_sizes", tp_sizes, low=1)
    check_int("bytes_per_element", bytes_per_element, low=1)
    tp = np.array(sorted(set(tps)), dtype=float)
    per_rank = 2 * (tp - 1) / tp * hidden * bytes_per_element
    everyone = 2 * (tp - 1) * hidden * bytes_per_element
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(tp, per_rank / 1024, marker="o", color=COMM_COLOR, label="sent by each rank")
    ax.plot(tp, everyone / 1024, marker="s", color="tab:purple", label="sent by all ranks together")
    ax.axhline(2 * hidden * bytes_per_element / 1024, color=GUIDE, linestyle="--", linewidth=1,
               label=f"2 H x {bytes_per_element} B (each rank, tp → ∞)")
    for t, v in zip(tp[tp > 1], per_rank[tp > 1], strict=True):  # tp = 1 sends nothing
        ax.annotate(f"{v / 1024:.1f}", (t, v / 1024), textcoords="offset points", xytext=(0, -12), ha="center",
                    fontsize=8, color=COMM_COLOR)
    ax.set_xticks(tp, [str(int(t)) for t in tp])
    ax.set(xlabel="tensor-parallel size", ylabel="KiB per token",
           title=f"Ring all-reduce of the layer output (H = {hidden}, {bytes_per_element} B per value)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def parallel_bench(runs: Sequence[Mapping], impl: str = "moe_lib") -> Figure:
    """Recorded NCCL runs: per M, a bar per (run, TP) — kernel time with the all-reduce stacked on top.

    Bars are the slowest rank's medians of the phases timed alone; the black line is kernel + all-reduce
    timed together, and the number above a TP > 1 bar is that total's speed-up over the same run's TP = 1.
    ``impl``: which implementation's records (runs before FP8 have only "moe_lib", and no ``impl`` key).
    """
    runs = check_runs(runs, keys=("gpu", "num_gpus", "records"),
                      record_keys=("tp", "M", "kernel_us", "allreduce_us", "total_us"))
    runs = [{**run, "records": [r for r in run["records"] if r.get("impl", "moe_lib") == impl]} for run in runs]
    ms = sorted({rec["M"] for run in runs for rec in run["records"]})
    fig = Figure(figsize=(3.4 * len(ms) + 0.6, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(ms), squeeze=False)[0])
    for ax, m in zip(axes, ms, strict=True):
        ticks, labels, x = [], [], 0.0
        for i, run in enumerate(runs):
            recs = sorted((r for r in run["records"] if r["M"] == m), key=lambda r: r["tp"])
            base = next((r["total_us"] for r in recs if r["tp"] == 1), None)
            for rec in recs:
                ax.bar(x, rec["kernel_us"], color=KERNEL_COLOR, width=0.7)
                if rec["allreduce_us"] > 0:
                    ax.bar(x, rec["allreduce_us"], bottom=rec["kernel_us"], color=COMM_COLOR, width=0.7)
                ax.plot([x - 0.35, x + 0.35], [rec["total_us"]] * 2, color=GUIDE, linewidth=1.5)
                if rec["tp"] > 1 and base:
                    top = max(rec["kernel_us"] + rec["allreduce_us"], rec["total_us"])
                    ax.text(x, top, f"{base / rec['total_us']:.2f}x", ha="center", va="bottom", fontsize=8)
                ticks.append(x)
                labels.append(f"TP{rec['tp']}" + (f"\nrun {i + 1}" if len(runs) > 1 else ""))
                x += 1.0
            x += 0.5  # a gap between runs
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set_title(f"M = {m}", fontsize=10)
        ax.set_ylabel("µs per layer call")
        tallest = max((max(r["kernel_us"] + r["allreduce_us"], r["total_us"])
                       for run in runs for r in run["records"] if r["M"] == m), default=1.0)
        ax.set_ylim(0, 1.15 * tallest or 1.0)
        ax.grid(axis="y", alpha=0.3)
    names = "; ".join(f"{'run ' + str(i + 1) + ': ' if len(runs) > 1 else ''}{run['gpu']} x {run['num_gpus']}"
                      for i, run in enumerate(runs))
    handles = [Patch(color=KERNEL_COLOR, label="kernel alone (routing + fused_experts)"),
               Patch(color=COMM_COLOR, label="all-reduce alone"),
               Line2D([], [], color=GUIDE, linewidth=1.5, label="both, timed together (speed-up from this)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    shape = runs[0].get("shape") or {}
    what = (f"E={shape['num_experts']}, top-{shape['top_k']}, H={shape['hidden']}, I={shape['intermediate']}, "
            f"{shape['dtype']}; " if {"num_experts", "top_k", "hidden", "intermediate", "dtype"} <= set(shape) else "")
    fig.suptitle(f"Tensor parallel: µs per layer call, slowest rank ({what}{names})", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------
# Notebook 09: expert parallel
# ----------------------------------------------------------------------------------------------------
def expert_placement(
    phys_to_log: torch.Tensor,
    ep_size: int,
    *,
    num_logical: int | None = None,
    loads: torch.Tensor | Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """One row per rank, one cell per expert slot, coloured and labelled by the logical expert it holds.

    Args:
        phys_to_log: (P,) logical expert of each physical slot, rank-major (plain EP: ``arange(E)``).
        ep_size: number of ranks; slots are split as in :func:`moe_lib.parallel.expert_ranges`.
        num_logical: E (default: max + 1); fixes the colours.
        loads: optional (P,) rows each slot computes, written under the expert id.
    """
    from ...parallel.experts import expert_ranges

    check_tensor("phys_to_log", phys_to_log, ndim=1, dtypes=INT_DTYPES)
    if phys_to_log.numel() == 0:
        raise ValueError("phys_to_log must not be empty")
    p2l = phys_to_log.cpu().long().tolist()
    if min(p2l) < 0:
        raise ValueError("phys_to_log must hold expert ids >= 0")
    num_logical = max(p2l) + 1 if num_logical is None else check_int("num_logical", num_logical, low=max(p2l) + 1)
    ranges = expert_ranges(len(p2l), ep_size)
    load_list = None if loads is None else int_list("loads", loads, low=0)
    if load_list is not None and len(load_list) != len(p2l):
        raise ValueError(f"loads must hold one value per slot ({len(p2l)}), got {len(load_list)}")
    if title is not None:
        check_str("title", title)
    colors = expert_colors(num_logical)
    width = max(len(r) for r in ranges)
    fig = Figure(figsize=(max(3.6, 1.2 + 0.75 * width), 1.1 + 0.62 * ep_size), layout="constrained")
    ax = fig.add_subplot()
    seen: dict[int, int] = {}
    for rank, slots in enumerate(ranges):
        for col, phys in enumerate(slots):
            e = p2l[phys]
            copy = seen.get(e, 0)
            seen[e] = copy + 1
            rect = Rectangle((col, ep_size - 1 - rank), 1, 1, facecolor=colors[e], edgecolor="white", linewidth=2,
                             hatch="//" if copy else None)
            rect.set_gid(f"slot-{phys}")
            ax.add_patch(rect)
            text = f"e{e}" + (f"\n{load_list[phys]}" if load_list is not None else "")
            ax.text(col + 0.5, ep_size - 0.5 - rank, text, ha="center", va="center", fontsize=8)
    ax.set(xlim=(0, width), ylim=(0, ep_size), aspect="equal")
    ax.set_yticks([ep_size - 0.5 - r for r in range(ep_size)], [f"rank {r}" for r in range(ep_size)])
    ax.set_xticks([c + 0.5 for c in range(width)], [str(c) for c in range(width)])
    ax.set_xlabel("local slot")
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    replicas = len(p2l) - len(set(p2l))
    default = f"{len(p2l)} expert slots on {ep_size} ranks" + (f"\n({replicas} replicas, hatched)" if replicas else "")
    if load_list is not None:
        default += "\ncell: logical expert, rows computed"
    ax.set_title(title or default, fontsize=9)
    return fig


def rank_loads(loads: Mapping[str, Sequence[int] | torch.Tensor], *, title: str | None = None) -> Figure:
    """Grouped bars: (token, slot) rows each rank computes, one colour per placement; the dashed line is the
    balanced load (the mean), and each legend entry gives max / mean — what the slowest rank costs."""
    if not isinstance(loads, Mapping) or len(loads) == 0:
        raise TypeError("loads must be a non-empty dict {placement name: per-rank loads}")
    series = {check_str("loads key", name): int_list(f"loads[{name!r}]", v, low=0) for name, v in loads.items()}
    sizes = {len(v) for v in series.values()}
    if len(sizes) != 1:
        raise ValueError(f"every placement in loads must have the same number of ranks, got {sorted(sizes)}")
    if title is not None:
        check_str("title", title)
    num_ranks = sizes.pop()
    fig = Figure(figsize=(max(4.8, 1.2 + 0.9 * num_ranks * len(series) ** 0.5), 3.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    colors = series_colors(len(series))
    for i, (name, values) in enumerate(series.items()):
        mean = sum(values) / num_ranks
        ratio = max(values) / mean if mean else 1.0
        x = np.arange(num_ranks) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(x, values, width=width, color=colors[i], label=f"{name} (max/mean {ratio:.2f})")
        if num_ranks * len(series) <= 24:
            ax.bar_label(bars, fontsize=7)
    total = sum(next(iter(series.values())))
    ax.axhline(total / num_ranks, color=GUIDE, linestyle="--", linewidth=1, label=f"balanced ({total / num_ranks:g})")
    ax.set_xticks(range(num_ranks), [f"rank {r}" for r in range(num_ranks)])
    ax.set_ylabel("(token, slot) rows computed")
    ax.set_title(title or "Load per rank", fontsize=10)
    ax.margins(y=0.18)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def imbalance_vs_redundancy(
    num_redundant: Sequence[int], imbalance: Mapping[str, Sequence[float]], *, title: str | None = None
) -> Figure:
    """max / mean rank load against the number of redundant experts, one line per batch (calibration, fresh...)."""
    xs = int_list("num_redundant", num_redundant, low=0)
    if not isinstance(imbalance, Mapping) or len(imbalance) == 0:
        raise TypeError("imbalance must be a non-empty dict {batch name: max/mean per num_redundant}")
    series = {check_str("imbalance key", k): _float_list(f"imbalance[{k!r}]", v, length=len(xs))
              for k, v in imbalance.items()}
    if title is not None:
        check_str("title", title)
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for (name, ys), marker in zip(series.items(), "osd^v", strict=False):
        ax.plot(xs, ys, marker=marker, label=name)
    ax.axhline(1.0, color=GUIDE, linestyle="--", linewidth=1, label="perfect balance")
    ax.set_xticks(xs)
    ax.set(xlabel="redundant experts (extra physical slots)", ylabel="max / mean rank load",
           title=title or "EPLB: imbalance against redundancy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


__all__ = [
    "tp_shards",
    "allreduce_traffic",
    "parallel_bench",
    "expert_placement",
    "rank_loads",
    "imbalance_vs_redundancy",
]

"""Figures for the kernel notebooks (05 alignment, 06 fused kernel).

    alignment_layout     the expert-sorted, block-padded rows that moe_align_block_size produces
    padding_waste        the fraction of padded rows against the batch size, for several BLOCK_M
    fused_tile_gather    what one program of the fused kernel reads (A rows, B slices) and writes (C tile)
    tile_program_ids     which program id computes each (row-block, column-block) tile (GROUP_SIZE_M)
    latency_vs_tokens    recorded GPU benchmarks: µs per layer call against M, per implementation
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..._validate import INT_DTYPES, check_int, check_tensor
from .style import (
    GUIDE,
    IMPL_COLORS,
    OTHER,
    PADDING_STYLE,
    PLAIN,
    REMOTE_STYLE,
    UNUSED_STYLE,
    check_runs,
    check_str,
    expert_colors,
    figure_legend,
    int_list,
    log_axes,
    series_colors,
)


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------
def _int_vector(name: str, t) -> np.ndarray:
    """A non-empty 1-D integer tensor -> int64 numpy array."""
    check_tensor(name, t, ndim=1, dtypes=INT_DTYPES)
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.int64).numpy()


def _scalar_int(name: str, value) -> int:
    """An int, or a one-element integer tensor (as the kernels return it)."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, dtypes=INT_DTYPES)
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one element, got shape {tuple(value.shape)}")
        return int(value.item())
    return check_int(name, value)


# ----------------------------------------------------------------------------------------------------
# Notebook 05: alignment
# ----------------------------------------------------------------------------------------------------
def alignment_layout(
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_padded: torch.Tensor | int,
    *,
    block_size: int,
    num_valid: int,
    num_experts: int,
    title: str | None = None,
    blocks_per_row: int | None = None,
    expert_label: str = "expert",
) -> Figure:
    """The aligned rows as strips of slots: one colour per expert, padding hatched grey.

    Slots are laid out left to right, ``blocks_per_row`` blocks of ``block_size`` slots per strip (a long
    layout wraps onto several strips). Thick lines mark the block boundaries and each block is labelled
    with its ``expert_ids`` entry; a slot shows the flat id it holds when the strips are short enough.
    Slots at or past ``num_tokens_post_padded`` are drawn empty (their block label, -1, in grey); blocks
    whose expert id is -1 inside the padded total (experts on another rank) are cross-hatched.

    Args:
        sorted_token_ids: (max_len,) flat ids ``t * top_k + j``; padding slots hold ``num_valid``.
        expert_ids: (cdiv(max_len, block_size),) expert of each block, -1 for none.
        num_tokens_post_padded: the padded total (an int or the kernels' one-element tensor).
        block_size: BLOCK_M.
        num_valid: M * top_k, the number of real rows (and the padding sentinel).
        num_experts: expert ids lie in [0, num_experts); it fixes the colours.
        blocks_per_row: blocks per strip; default: strips of at most ~40 slots, evenly filled.
        expert_label: the legend's name for an expert id ("local expert" when an expert_map was used).
    """
    ids = _int_vector("sorted_token_ids", sorted_token_ids)  # (max_len,)
    blocks = _int_vector("expert_ids", expert_ids)  # (max_blocks,)
    check_int("block_size", block_size, low=1)
    check_int("num_valid", num_valid, low=0)
    check_int("num_experts", num_experts, low=1)
    total = _scalar_int("num_tokens_post_padded", num_tokens_post_padded)
    if title is not None:
        check_str("title", title)
    check_str("expert_label", expert_label)
    max_len = ids.shape[0]
    max_blocks = math.ceil(max_len / block_size)
    if blocks.shape[0] != max_blocks:
        raise ValueError(
            f"expert_ids must hold cdiv(len(sorted_token_ids), block_size) = {max_blocks} blocks, "
            f"got {blocks.shape[0]}"
        )
    if blocks.min() < -1 or blocks.max() >= num_experts:
        raise ValueError(
            f"expert_ids must lie in [-1, {num_experts}) (num_experts), got values in [{blocks.min()}, {blocks.max()}]"
        )
    if ids.min() < 0 or ids.max() > num_valid:
        raise ValueError(
            f"sorted_token_ids must lie in [0, {num_valid}] (num_valid is the padding sentinel), "
            f"got values in [{ids.min()}, {ids.max()}]"
        )
    if not 0 <= total <= max_len or total % block_size:
        raise ValueError(
            f"num_tokens_post_padded must be a multiple of block_size={block_size} in [0, {max_len}], got {total}"
        )
    if blocks_per_row is None:  # at most ~40 slots (or one block) per strip, at most ~12 strips, evenly filled
        widest = max(1, 40 // block_size, math.ceil(max_blocks / 12))
        blocks_per_row = math.ceil(max_blocks / math.ceil(max_blocks / widest))
    check_int("blocks_per_row", blocks_per_row, low=1)

    per_row = blocks_per_row * block_size  # slots per strip
    num_rows = math.ceil(max_len / per_row)
    pitch = 1.8  # vertical distance between strips, in slot heights (room for the block labels)
    slot = np.arange(max_len)  # (max_len,)
    block_of = slot // block_size  # (max_len,)
    live = slot < total
    real = live & (ids < num_valid)
    remote = real & (blocks[block_of] == -1)
    mine = real & ~remote
    padding = live & (ids == num_valid)
    colors = expert_colors(num_experts)

    def rect(i: int) -> Rectangle:
        return Rectangle((i % per_row, (i // per_row) * pitch), 1.0, 1.0)

    width = min(12.0, max(5.0, 0.28 * per_row + 1.5))
    fig = Figure(figsize=(width, 1.3 + 0.62 * num_rows), layout="constrained")
    ax = fig.add_subplot()
    layers = [
        ("experts", mine, {"facecolor": [colors[blocks[block_of[i]]] for i in np.flatnonzero(mine)],
                           "edgecolor": "white"}),
        ("remote", remote, REMOTE_STYLE),
        ("padding", padding, PADDING_STYLE),
        ("unused", ~live, UNUSED_STYLE),
    ]
    for gid, mask, style in layers:
        patches = [rect(i) for i in np.flatnonzero(mask)]
        if patches:
            collection = PatchCollection(patches, linewidth=0.6, match_original=False, **style)
            collection.set_gid(gid)
            ax.add_collection(collection)

    if per_row <= 40:  # the flat id in every real slot
        for i in np.flatnonzero(real):
            ax.text(i % per_row + 0.5, (i // per_row) * pitch + 0.52, str(ids[i]), ha="center", va="center",
                    fontsize=7 if ids[i] < 100 else 5.5)
    # Block boundaries and labels.
    label_size = 8 if block_size * 0.28 >= 0.9 else 6
    for b in range(max_blocks):
        start = b * block_size
        x, y = start % per_row, (start // per_row) * pitch
        ax.plot([x, x], [y - 0.35, y + 1.1], color=GUIDE, linewidth=1.6)
        label = f"e{blocks[b]}" if blocks[b] >= 0 else "-1"
        ax.text(x + min(block_size, per_row) / 2, y - 0.12, label, ha="center", va="bottom", fontsize=label_size,
                color=GUIDE if start < total else "0.6")
    for r in range(num_rows):  # closing line of each strip
        end = min(max_len - r * per_row, per_row)
        ax.plot([end, end], [r * pitch - 0.35, r * pitch + 1.1], color=GUIDE, linewidth=1.6)

    ax.set_xlim(-0.3, per_row + 0.3)
    ax.set_ylim(num_rows * pitch - 0.5, -0.7)
    ax.set_yticks([r * pitch + 0.5 for r in range(num_rows)],
                  [f"{r * per_row}–{min((r + 1) * per_row, max_len) - 1}" for r in range(num_rows)])
    ax.set_ylabel("slots")
    ax.set_xlabel(f"slot within the strip ({blocks_per_row} block{'s' if blocks_per_row > 1 else ''} "
                  f"of BLOCK_M = {block_size} per strip)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title if title is not None else (
        f"Aligned layout: {num_valid} rows padded to {total}, buffer of {max_len} slots"))

    present = sorted({int(e) for e in blocks[: total // block_size] if e >= 0})
    handles = [Patch(facecolor=colors[e], label=f"{expert_label} {e}") for e in present] if len(present) <= 16 else []
    handles.append(Patch(**PADDING_STYLE, label=f"padding (holds {num_valid})"))
    if remote.any():
        handles.append(Patch(**REMOTE_STYLE, label="expert on another rank (-1)"))
    handles.append(Patch(**UNUSED_STYLE, label="past num_tokens_post_padded"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    return fig


def padding_waste(
    num_tokens: Sequence[int],
    wasted: Mapping[int, Sequence[float]],
    *,
    num_experts: int,
    top_k: int,
    title: str | None = None,
) -> Figure:
    """Measured padding fraction (solid) against the batch size M, with the worst case (dashed).

    ``wasted[B][i]`` is the fraction of the padded rows that are padding, ``1 - M k / padded total``, for
    BLOCK_M = B and ``num_tokens[i]`` tokens. The worst case pads every non-empty expert by B - 1 rows:
    ``P / (M k + P)`` with ``P = min(E, M k) (B - 1)``.
    """
    counts = int_list("num_tokens", num_tokens, low=1)
    check_int("num_experts", num_experts, low=1)
    check_int("top_k", top_k, low=1, high=num_experts)
    if not isinstance(wasted, Mapping):
        raise TypeError(f"wasted must be a mapping BLOCK_M -> fractions, got {type(wasted).__name__}")
    if len(wasted) == 0:
        raise ValueError("wasted must hold at least one BLOCK_M")
    if title is not None:
        check_str("title", title)
    series = {}
    for block, values in wasted.items():
        check_int("wasted key (BLOCK_M)", block, low=1)
        values = np.asarray(values, dtype=np.float64)  # (n,)
        if values.shape != (len(counts),):
            raise ValueError(f"wasted[{block}] must hold {len(counts)} fractions (one per M), got shape {values.shape}")
        if not ((values >= 0) & (values < 1)).all():
            raise ValueError(f"wasted[{block}] must hold fractions in [0, 1)")
        series[block] = values

    m = np.array(counts, dtype=np.float64)  # (n,)
    numel = m * top_k
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    colors = series_colors(len(series))
    for color, (block, values) in zip(colors, sorted(series.items()), strict=True):
        pad = np.minimum(num_experts, numel) * (block - 1)
        ax.plot(m, 100 * values, marker="o", markersize=4, color=color, label=f"BLOCK_M = {block}")
        ax.plot(m, 100 * pad / (numel + pad), linestyle="--", linewidth=1, color=color)
    ax.plot([], [], linestyle="--", color=OTHER, label="worst case $P/(Mk+P)$,\n$P = \\min(E, Mk)(B-1)$")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(PLAIN)
    ax.set_ylim(0, 100)
    ax.set_xlabel("tokens per call, M")
    ax.set_ylabel("padding rows (% of padded total)")
    ax.set_title(title if title is not None else f"Padding waste, E = {num_experts}, top-{top_k}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


# ----------------------------------------------------------------------------------------------------
# Notebook 06: the fused kernel
# ----------------------------------------------------------------------------------------------------
def fused_tile_gather(
    flat_ids: torch.Tensor,
    *,
    top_k: int,
    num_tokens: int,
    hidden: int,
    inter: int,
    expert: int,
    col_start: int,
    block_n: int,
) -> Figure:
    """One GEMM1 program's memory traffic: the A rows it gathers, the B rows of its expert, the C tile.

    ``flat_ids`` are the real rows of the program's row block (padding removed). Left: hidden_states
    (M, H) with the gathered rows ``flat_ids // top_k``. Middle: ``w13[expert]`` (2I, H) with the gate rows
    ``[col_start, col_start + block_n)`` and the up rows ``I`` further down. Right: the activation
    (M * top_k, I), with the tile written at rows ``flat_ids`` and columns ``[col_start, col_start + block_n)``.
    """
    rows = _int_vector("flat_ids", flat_ids)  # (n,)
    check_int("top_k", top_k, low=1)
    check_int("num_tokens", num_tokens, low=1)
    check_int("hidden", hidden, low=1)
    check_int("inter", inter, low=1)
    check_int("expert", expert, low=0)
    check_int("block_n", block_n, low=1)
    check_int("col_start", col_start, low=0, high=inter - 1)
    if rows.min() < 0 or rows.max() >= num_tokens * top_k:
        raise ValueError(
            f"flat_ids must lie in [0, {num_tokens * top_k}) (num_tokens * top_k), got [{rows.min()}, {rows.max()}]"
        )
    cols = slice(col_start, min(col_start + block_n, inter))
    a = np.zeros((num_tokens, hidden))  # (M, H)
    a[rows // top_k, :] = 1
    b = np.zeros((2 * inter, hidden))  # (2I, H)
    b[cols, :] = 1
    b[inter + cols.start : inter + cols.stop, :] = 2
    c = np.zeros((num_tokens * top_k, inter))  # (M*k, I)
    c[rows[:, None], np.arange(inter)[cols][None, :]] = 3
    cmap = ListedColormap(["0.93", "tab:blue", "tab:orange", "tab:green"])

    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[hidden, hidden, inter])
    panels = [
        (a, f"A = hidden_states ({num_tokens}, {hidden})\nrows flat_id // top_k", "token", "h"),
        (b, f"B = w13[{expert}] ({2 * inter}, {hidden})\ngate rows and up rows", "row of w13[e]", "h"),
        (c, f"C = act ({num_tokens * top_k}, {inter})\nrows = flat ids", "flat id", "column of act"),
    ]
    for ax, (data, title, ylabel, xlabel) in zip(axes, panels, strict=True):
        ax.imshow(data, cmap=cmap, vmin=0, vmax=3, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
    axes[1].axhline(inter - 0.5, color=GUIDE, linewidth=1, linestyle=":")
    handles = [
        Patch(facecolor="tab:blue", label=f"A rows / gate rows [{cols.start}, {cols.stop})"),
        Patch(facecolor="tab:orange", label=f"up rows [{inter + cols.start}, {inter + cols.stop})"),
        Patch(facecolor="tab:green", label=f"C tile: {rows.shape[0]} rows x {cols.stop - cols.start} columns"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def tile_program_ids(pid_maps: Mapping[str, torch.Tensor], *, title: str | None = None) -> Figure:
    """Heat maps of the program id that computes each tile, one panel per entry of ``pid_maps``.

    Each value is a (num_pid_m, num_pid_n) integer tensor: entry (m, n) is the program id (launch order)
    of the tile at row block m and column block n. Panels share one colour scale.
    """
    if not isinstance(pid_maps, Mapping):
        raise TypeError(f"pid_maps must be a mapping title -> (num_pid_m, num_pid_n) tensor, got "
                        f"{type(pid_maps).__name__}")
    if len(pid_maps) == 0:
        raise ValueError("pid_maps must hold at least one map")
    if title is not None:
        check_str("title", title)
    maps = {}
    for key, grid in pid_maps.items():
        check_str("pid_maps key", key)
        check_tensor(f"pid_maps[{key!r}]", grid, ndim=2, dtypes=INT_DTYPES)
        if grid.numel() == 0:
            raise ValueError(f"pid_maps[{key!r}] must not be empty, got shape {tuple(grid.shape)}")
        maps[key] = grid.detach().to("cpu", torch.int64).numpy()  # (num_pid_m, num_pid_n)
    vmax = max(int(g.max()) for g in maps.values())
    rows = max(g.shape[0] for g in maps.values())
    fig = Figure(figsize=(min(12.0, 1.5 + 3.2 * len(maps)), min(6.0, 1.6 + 0.32 * rows)), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    image = None
    for ax, (key, grid) in zip(axes, maps.items(), strict=True):
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(vmax, 1), aspect="auto", interpolation="nearest")
        if grid.size <= 400:
            for (m, n), pid in np.ndenumerate(grid):
                ax.text(n, m, str(pid), ha="center", va="center", fontsize=7,
                        color="white" if pid < 0.6 * vmax else "black")
        ax.set_title(key)
        ax.set_xlabel("column block pid_n")
        ax.set_ylabel("row block pid_m")
        if grid.shape[1] <= 16:
            ax.set_xticks(range(grid.shape[1]))
        if grid.shape[0] <= 24:
            ax.set_yticks(range(grid.shape[0]))
    colorbar = fig.colorbar(image, ax=list(axes), fraction=0.05, pad=0.02)
    colorbar.set_label("program id (launch order)")
    if title is not None:
        fig.suptitle(title)
    return fig


def latency_vs_tokens(runs: Sequence[Mapping], *, tps: Sequence[int] = (1, 8)) -> Figure:
    """Recorded benchmarks: µs per layer call against M (log-log), one line per implementation.

    One row of panels per run (a ``data/bench/*.json`` result), one column per tensor-parallel degree in
    ``tps``; the dashed line is the run's floor (weight bytes / bandwidth or FLOPs / peak). Records whose
    ``us`` is None (an implementation that failed) are left out.
    """
    runs = check_runs(runs, keys=("gpu", "records"), record_keys=("tp", "M", "impl", "us"))
    tps = int_list("tps", tps, low=1)
    fig = Figure(figsize=(4.2 * len(tps) + 0.6, 3.3 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), len(tps), squeeze=False)
    for row, run in zip(axes, runs, strict=True):
        records = [r for r in run["records"] if r["us"] is not None]
        for ax, tp in zip(row, tps, strict=True):
            mine = [r for r in records if r["tp"] == tp]
            order = list(IMPL_COLORS)
            impls = sorted({r["impl"] for r in mine}, key=lambda i: (order.index(i) if i in order else len(order), i))
            for impl in impls:
                pts = np.array(sorted((r["M"], r["us"]) for r in mine if r["impl"] == impl))  # (n, 2)
                ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=3, label=impl, color=IMPL_COLORS.get(impl))
            floor = np.array(sorted({(r["M"], r["floor_us"]) for r in mine if r.get("floor_us") is not None}))
            if floor.size:
                ax.plot(floor[:, 0], floor[:, 1], linestyle="--", color=GUIDE, linewidth=1, label="floor")
            if not mine:
                ax.text(0.5, 0.5, f"no TP={tp} records", ha="center", va="center", transform=ax.transAxes)
            else:
                log_axes(ax)
            ax.set_xlabel("tokens per call, M")
            ax.set_ylabel("µs per layer call")
            ax.set_title(f"{run['gpu']}, TP = {tp}", fontsize=10)
    figure_legend(fig, axes.flat)
    return fig


__all__ = [
    "alignment_layout",
    "padding_waste",
    "fused_tile_gather",
    "tile_program_ids",
    "latency_vs_tokens",
]

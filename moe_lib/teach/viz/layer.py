"""Figures for notebook 10 (the layer): how checkpoint tensors become each rank's shards, and which experts a
whole model uses along a sequence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..._validate import check_int
from .routing import _check_routing, _dense_weights
from .style import CHOSEN, GUIDE, check_str, rank_colors


# ----------------------------------------------------------------------------------------------------
# Checkpoint tensors -> tensor-parallel shards
# ----------------------------------------------------------------------------------------------------
def shard_layout(intermediate_size: int, tp_size: int) -> Figure:
    """Where one expert's checkpoint rows go on each of ``tp_size`` ranks.

    Left: the checkpoint's ``w1`` and ``w3`` (I rows each; stacked they are Hugging Face's ``gate_up_proj``)
    and ``w2`` (I columns), coloured by the rank that receives each slice. Right: each rank's local ``w13``
    = [its w1 rows; its w3 rows] and its ``w2`` columns — the layout ``moe_lib.parallel.shard`` produces.
    """
    check_int("intermediate_size", intermediate_size, low=1)
    check_int("tp_size", tp_size, low=1, high=64)
    if intermediate_size % tp_size:
        raise ValueError(f"intermediate_size ({intermediate_size}) must be divisible by tp_size ({tp_size})")
    inter, part = intermediate_size, intermediate_size // tp_size
    colors = rank_colors(tp_size)
    fig = Figure(figsize=(8.5, 3.2 + 0.25 * tp_size), layout="constrained")
    ax = fig.add_subplot()
    width, gap = 1.0, 0.9  # width of a column of rows, horizontal gap between columns
    # Rows are drawn top-down: y = -row.
    # -- the checkpoint's w13 = [w1; w3], one colour per receiving rank
    for half, (label, offset) in enumerate((("w1 (gate)", 0), ("w3 (up)", inter))):
        for r in range(tp_size):
            top = offset + r * part
            ax.add_patch(Rectangle((0, -(top + part)), width, part, facecolor=colors[r], edgecolor="white",
                                   alpha=0.55 if half else 0.95, gid=f"w13-{label[:2]}-{r}"))
            if tp_size <= 8:
                ax.text(width / 2, -(top + part / 2), f"{label[:2]}[{r * part}:{(r + 1) * part}]", ha="center",
                        va="center", fontsize=7)
        ax.text(-0.08, -(offset + inter / 2), label, ha="right", va="center", fontsize=9)
    ax.add_patch(Rectangle((0, -2 * inter), width, 2 * inter, fill=False, edgecolor=GUIDE, linewidth=1.2))
    ax.text(width / 2, inter * 0.06, "checkpoint\nw13 = [w1; w3]", ha="center", va="bottom", fontsize=9)
    # -- each rank's local w13 = [w1 rows of r; w3 rows of r]
    x0 = width + gap
    for r in range(tp_size):
        x = x0 + r * (width * 0.8 + 0.25)
        for half in range(2):
            ax.add_patch(Rectangle((x, -(half + 1) * part), width * 0.8, part, facecolor=colors[r],
                                   edgecolor="white", alpha=0.55 if half else 0.95, gid=f"local-w{1 + 2 * half}-{r}"))
            if tp_size <= 8:
                ax.text(x + width * 0.4, -(half + 0.5) * part, f"w{1 + 2 * half}[{r * part}:{(r + 1) * part}]",
                        ha="center", va="center", fontsize=7)
        ax.add_patch(Rectangle((x, -2 * part), width * 0.8, 2 * part, fill=False, edgecolor=GUIDE, linewidth=1.2))
        ax.text(x + width * 0.4, inter * 0.06, f"rank {r}\nw13", ha="center", va="bottom", fontsize=9)
    # -- w2 (H, I): its I columns split across ranks, drawn as a wide block to the right
    x_w2 = x0 + tp_size * (width * 0.8 + 0.25) + gap
    w2_width = 2.0 * width
    strip = w2_width / tp_size  # the drawn width of one rank's columns
    for r in range(tp_size):
        ax.add_patch(Rectangle((x_w2 + r * strip, -inter), strip, inter, facecolor=colors[r], edgecolor="white",
                               gid=f"w2-{r}"))
    ax.add_patch(Rectangle((x_w2, -inter), w2_width, inter, fill=False, edgecolor=GUIDE, linewidth=1.2))
    ax.text(x_w2 + w2_width / 2, inter * 0.06, f"checkpoint w2 (H x I)\nrank r: columns [r*{part}, (r+1)*{part})",
            ha="center", va="bottom", fontsize=9)
    ax.set_aspect("auto")
    ax.set_xlim(-1.2, x_w2 + w2_width + 0.3)
    ax.set_ylim(-2 * inter * 1.03, inter * 0.55)
    ax.set_yticks([0, -inter, -2 * inter], ["0", f"I = {inter}", f"2I = {2 * inter}"])
    ax.set_xticks([])
    ax.set_ylabel("row of w13 (output feature)")
    for r in range(tp_size):
        ax.plot([], [], "s", color=colors[r], label=f"rank {r}")
    ax.legend(loc="lower right", fontsize=8, ncols=min(tp_size, 4))
    ax.set_title(f"One expert's weights at tp_size = {tp_size}: w1 and w3 are cut separately (I/tp = {part})")
    return fig


# ----------------------------------------------------------------------------------------------------
# Expert usage along a sequence, per layer
# ----------------------------------------------------------------------------------------------------
def expert_usage(
    routing: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_experts: int,
    *,
    layer_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One row per layer: routing weight of each expert (rows) at each position (columns), and the share of
    (token, slot) pairs each expert received.

    Args:
        routing: per layer, ``(topk_weights (T, k), topk_ids (T, k))`` for the same T tokens.
        num_experts: E.
        layer_names: one label per layer (default "layer 0", "layer 1", ...).
    """
    if isinstance(routing, (str, bytes)) or not isinstance(routing, Sequence) or len(routing) == 0:
        raise TypeError("routing must be a non-empty sequence of (topk_weights, topk_ids) pairs, one per layer")
    check_int("num_experts", num_experts, low=1)
    layers = []
    for i, pair in enumerate(routing):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"routing[{i}] must be a (topk_weights, topk_ids) pair, got {type(pair).__name__}")
        layers.append(_check_routing(pair[0], pair[1], num_experts))
    lengths = {ids.shape[0] for _, ids in layers}
    if len(lengths) > 1:
        raise ValueError(f"every layer's routing must cover the same tokens, got lengths {sorted(lengths)}")
    if layer_names is None:
        layer_names = [f"layer {i}" for i in range(len(layers))]
    elif isinstance(layer_names, (str, bytes)) or len(layer_names) != len(layers):
        raise ValueError(f"layer_names must hold one name per layer ({len(layers)})")
    names = [check_str(f"layer_names[{i}]", n) for i, n in enumerate(layer_names)]
    if title is not None:
        check_str("title", title)

    num_tokens, top_k = layers[0][1].shape
    fig = Figure(figsize=(9.5, 0.6 + (0.9 + 0.16 * num_experts) * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), 2, width_ratios=[4, 1], squeeze=False)
    image = None
    for (weights, ids), name, (ax_map, ax_share) in zip(layers, names, axes, strict=True):
        dense = _dense_weights(weights, ids, num_experts).T  # (E, T)
        masked = np.ma.masked_equal(dense, 0.0)  # experts not chosen stay blank
        image = ax_map.imshow(masked, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax_map.set_ylabel(f"{name}\nexpert")
        if num_experts <= 16:
            ax_map.set_yticks(range(num_experts))
        share = np.bincount(ids.ravel(), minlength=num_experts) / ids.size  # (E,)
        ax_share.barh(range(num_experts), share, color=CHOSEN, height=0.8)
        ax_share.axvline(1.0 / num_experts, color=GUIDE, linestyle="--", linewidth=1)
        ax_share.set_ylim(num_experts - 0.5, -0.5)
        ax_share.set_yticks([])
        ax_share.set_xlim(0, max(share.max(), 1.0 / num_experts) * 1.15)
    axes[-1, 0].set_xlabel("position in the sequence")
    axes[-1, 1].set_xlabel("share of slots\n(--: balanced)")
    axes[0, 1].set_title("load", fontsize=10)
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.04, pad=0.01, label="routing weight")
    fig.suptitle(title if title is not None else f"Expert usage over {num_tokens} tokens (top_k = {top_k})")
    return fig


__all__ = ["shard_layout", "expert_usage"]

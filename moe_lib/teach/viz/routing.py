"""Figures of routing and what it costs (notebooks 00, 01, 03 and 04, and the routing explorer of the widgets): each
takes tensors or a config."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..._validate import INT_DTYPES, check_int, check_tensor
from ...config import MoEConfig
from ...perf.floors import expected_experts_touched
from .style import CHOSEN, FLOATS, GUIDE, OTHER, check_config, check_str, int_list, is_number


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------
def _check_ids(topk_ids, num_experts: int, name: str = "topk_ids") -> np.ndarray:
    """(M, k) integer expert ids in [0, num_experts) -> an int64 numpy array."""
    check_int("num_experts", num_experts, low=1)
    check_tensor(name, topk_ids, ndim=2, dtypes=INT_DTYPES)
    if topk_ids.shape[0] == 0 or topk_ids.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token and one slot, got {tuple(topk_ids.shape)}")
    ids = topk_ids.detach().to("cpu", torch.int64).numpy()
    if ids.min() < 0 or ids.max() >= num_experts:
        raise ValueError(
            f"{name} must lie in [0, {num_experts}) (num_experts), got values in [{ids.min()}, {ids.max()}]"
        )
    return ids


def _check_routing(topk_weights, topk_ids, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    ids = _check_ids(topk_ids, num_experts)
    check_tensor("topk_weights", topk_weights, ndim=2, dtypes=FLOATS)
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} "
            "must have the same shape"
        )
    return topk_weights.detach().to("cpu", torch.float64).numpy(), ids


# ----------------------------------------------------------------------------------------------------
# Drawing helpers (on a given Axes)
# ----------------------------------------------------------------------------------------------------
def _size_for(num_tokens: int, num_experts: int) -> tuple[float, float]:
    """A figure size that keeps cells readable for small inputs and bounded for large ones."""
    return min(7.0, 2.6 + 0.35 * num_experts), min(4.5, 1.6 + 0.16 * num_tokens)


def _expert_ticks(ax: Axes, num_experts: int) -> None:
    if num_experts <= 16:
        ax.set_xticks(range(num_experts))
    ax.set_xlabel("expert")


def _draw_token_expert_image(
    fig: Figure, ax: Axes, values: np.ndarray, *, cmap: str, vmin: float, vmax: float, cbar_label: str
) -> None:
    num_tokens, num_experts = values.shape  # (M, E)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    _expert_ticks(ax, num_experts)
    ax.set_ylabel("token")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    colorbar.set_label(cbar_label)


def _draw_load(ax: Axes, ids: np.ndarray, num_experts: int, title: str) -> None:
    num_tokens, top_k = ids.shape  # (M, k)
    counts = np.bincount(ids.ravel(), minlength=num_experts)  # (E,)
    bars = ax.bar(range(num_experts), counts, color=CHOSEN, width=0.8)
    if num_experts <= 16:
        ax.bar_label(bars, fontsize=8)
    balanced = num_tokens * top_k / num_experts
    ax.axhline(balanced, color=GUIDE, linestyle="--", linewidth=1, label=f"balanced ({balanced:.3g})")
    ax.set_ylim(0, max(counts.max(), balanced) * 1.18)
    _expert_ticks(ax, num_experts)
    ax.set_ylabel("token slots routed")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)


def _dense_weights(weights: np.ndarray, ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Scatter (M, k) routing weights into an (M, E) matrix; experts not chosen hold 0."""
    dense = np.zeros((ids.shape[0], num_experts))  # (M, E)
    np.add.at(dense, (np.arange(ids.shape[0])[:, None], ids), weights)
    return dense


# ----------------------------------------------------------------------------------------------------
# Public figures
# ----------------------------------------------------------------------------------------------------
def token_expert_heatmap(
    values: torch.Tensor,
    *,
    title: str = "Router logits",
    cbar_label: str = "logit",
    diverging: bool = True,
) -> Figure:
    """An (M, E) tensor as an image: one row per token, one column per expert, with a colorbar.

    ``diverging=True`` centres a red/blue map on 0 (for logits); otherwise a sequential map from 0 (for
    probabilities). NaN and ±Inf cells are left blank and do not set the colour range.
    """
    check_tensor("values", values, ndim=2, dtypes=FLOATS)
    if values.numel() == 0:
        raise ValueError(f"values must not be empty, got shape {tuple(values.shape)}")
    check_str("title", title)
    check_str("cbar_label", cbar_label)
    if not isinstance(diverging, bool):
        raise TypeError(f"diverging must be a bool, got {type(diverging).__name__}")
    data = values.detach().to("cpu", torch.float64).numpy()  # (M, E)
    finite = data[np.isfinite(data)]
    data = np.where(np.isfinite(data), data, np.nan)
    if diverging:
        limit = float(np.abs(finite).max()) if finite.size else 1.0
        limit = limit or 1.0
        cmap, vmin, vmax = "RdBu_r", -limit, limit
    else:
        cmap, vmin = "viridis", 0.0
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig = Figure(figsize=_size_for(*data.shape), layout="constrained")
    ax = fig.add_subplot()
    _draw_token_expert_image(fig, ax, data, cmap=cmap, vmin=vmin, vmax=vmax, cbar_label=cbar_label)
    ax.set_title(title)
    return fig


def routing_heatmap(
    topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_experts: int, *, title: str | None = None
) -> Figure:
    """Which experts each token goes to, and with what weight: an (M, E) image, blank where not routed."""
    weights, ids = _check_routing(topk_weights, topk_ids, num_experts)
    title = check_str("title", title) if title is not None else f"Routing weights (top_k = {ids.shape[1]})"
    dense = _dense_weights(weights, ids, num_experts)  # (M, E)
    fig = Figure(figsize=_size_for(*dense.shape), layout="constrained")
    ax = fig.add_subplot()
    vmax = float(dense.max()) if dense.max() > 0 else 1.0
    _draw_token_expert_image(fig, ax, dense, cmap="Blues", vmin=0.0, vmax=vmax, cbar_label="routing weight")
    ax.set_title(title)
    return fig


def expert_load(topk_ids: torch.Tensor, num_experts: int, *, title: str | None = None) -> Figure:
    """A bar per expert: how many (token, slot) pairs chose it, against a perfectly balanced load."""
    ids = _check_ids(topk_ids, num_experts)
    title = check_str("title", title) if title is not None else (
        f"Expert load: {ids.shape[0]} tokens x top-{ids.shape[1]}"
    )
    fig = Figure(figsize=(min(7.0, 2.6 + 0.35 * num_experts), 3.0), layout="constrained")
    _draw_load(fig.add_subplot(), ids, num_experts, title)
    return fig


def routing_overview(topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> Figure:
    """The routing heatmap (left, with colorbar) and the expert load (right) in one figure."""
    weights, ids = _check_routing(topk_weights, topk_ids, num_experts)
    dense = _dense_weights(weights, ids, num_experts)  # (M, E)
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_map, ax_load = fig.subplots(1, 2, width_ratios=[3, 2])
    vmax = float(dense.max()) if dense.max() > 0 else 1.0
    _draw_token_expert_image(
        fig, ax_map, dense, cmap="Blues", vmin=0.0, vmax=vmax, cbar_label="routing weight"
    )
    ax_map.set_title(f"Routing weights, {ids.shape[0]} tokens")
    _draw_load(ax_load, ids, num_experts, f"Expert load (top_k = {ids.shape[1]})")
    return fig


def token_probabilities(
    probs: torch.Tensor,
    chosen: torch.Tensor | None = None,
    *,
    title: str = "One token's router probabilities",
) -> Figure:
    """A bar per expert for one token's (E,) probabilities; the ``chosen`` expert ids are highlighted."""
    check_tensor("probs", probs, ndim=1, dtypes=FLOATS)
    if probs.numel() == 0:
        raise ValueError("probs must hold at least one expert, got shape (0,)")
    check_str("title", title)
    num_experts = probs.shape[0]
    picked = set()
    if chosen is not None:
        check_tensor("chosen", chosen, ndim=1, dtypes=INT_DTYPES)
        picked = set(_check_ids(chosen[None, :], num_experts, name="chosen").ravel().tolist())
    values = probs.detach().to("cpu", torch.float64).numpy()  # (E,)
    colors = [CHOSEN if e in picked else OTHER for e in range(num_experts)]
    fig = Figure(figsize=(min(7.0, 2.6 + 0.35 * num_experts), 3.0), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(num_experts), values, color=colors, width=0.8)
    if num_experts <= 16:
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    ax.set_ylim(0, max(top, 1e-12) * 1.2)
    _expert_ticks(ax, num_experts)
    ax.set_ylabel("probability")
    ax.set_title(title + (" (orange: chosen)" if picked else ""))
    return fig


def weight_traffic(
    config: MoEConfig, token_counts: Sequence[int], *, ridge_flops_per_byte: float | None = None
) -> Figure:
    """How much expert weight one layer call reads, and the FLOPs it gets per byte, against batch size M.

    Left: weight bytes read (each touched expert's w13 and w2 once), expected under uniform routing.
    Right: arithmetic intensity = expert FLOPs / weight bytes, with an optional machine ridge point.
    """
    config = check_config(config)
    counts = int_list("token_counts", token_counts, low=1)
    if ridge_flops_per_byte is not None:
        if not is_number(ridge_flops_per_byte):
            raise TypeError(f"ridge_flops_per_byte must be a number, got {type(ridge_flops_per_byte).__name__}")
        if not ridge_flops_per_byte > 0:
            raise ValueError(f"ridge_flops_per_byte must be > 0, got {ridge_flops_per_byte}")
    E, k = config.num_experts, config.top_k
    expert_bytes = config.params_per_expert * config.bytes_per_element
    m = np.array(counts, dtype=np.float64)  # (n,)
    touched = np.array([expected_experts_touched(c, E, k) for c in counts])  # (n,)
    bytes_read = touched * expert_bytes  # (n,)
    flops = m * 2 * k * config.params_per_expert  # (n,) expert GEMMs only
    scale, unit = (1e9, "GB") if expert_bytes * E >= 1e8 else (1e6, "MB")

    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    ax_bytes, ax_ai = fig.subplots(1, 2)
    ax_bytes.plot(m, bytes_read / scale, marker="o", color=CHOSEN)
    ax_bytes.axhline(k * expert_bytes / scale, color=GUIDE, linestyle=":", linewidth=1,
                     label=f"{k} experts (one token)")
    ax_bytes.axhline(E * expert_bytes / scale, color=GUIDE, linestyle="--", linewidth=1,
                     label=f"all {E} experts")
    ax_bytes.set_xscale("log", base=2)
    ax_bytes.set_ylim(0, E * expert_bytes / scale * 1.15)
    ax_bytes.set_xlabel("tokens per call, M")
    ax_bytes.set_ylabel(f"expert weights read ({unit})")
    ax_bytes.set_title("Weight bytes per layer call")
    ax_bytes.legend(loc="center right", fontsize=8)

    ax_ai.plot(m, flops / bytes_read, marker="o", color="tab:blue")
    if ridge_flops_per_byte is not None:
        ax_ai.axhline(ridge_flops_per_byte, color=GUIDE, linestyle="--", linewidth=1,
                      label=f"ridge point ({ridge_flops_per_byte:.0f} FLOP/B)")
        ax_ai.legend(loc="upper left", fontsize=8)
    ax_ai.set_xscale("log", base=2)
    ax_ai.set_yscale("log")
    ax_ai.set_xlabel("tokens per call, M")
    ax_ai.set_ylabel("FLOPs per weight byte")
    ax_ai.set_title("Arithmetic intensity")
    return fig


def moe_parameters(config: MoEConfig, *, num_layers: int = 1) -> Figure:
    """Stored versus used: one bar segment per expert held, against the top_k a token actually uses."""
    config = check_config(config)
    check_int("num_layers", num_layers, low=1)
    E, k = config.num_experts, config.top_k
    per_expert = config.params_per_expert * num_layers / 1e9  # billions of parameters
    fig = Figure(figsize=(7.0, 2.4), layout="constrained")
    ax = fig.add_subplot()
    for row, (count, color) in enumerate([(E, OTHER), (k, CHOSEN)]):
        ax.barh([row] * count, [per_expert] * count, left=np.arange(count) * per_expert,
                color=color, edgecolor="white", height=0.6)
        ax.text(count * per_expert, row, f"  {count * per_expert:.2f} B", va="center", fontsize=9)
    ax.set_yticks([0, 1], [f"stored ({E} experts)", f"used per token ({k})"])
    ax.invert_yaxis()
    ax.set_xlim(0, E * per_expert * 1.2)
    ax.set_xlabel("expert parameters (billions)")
    ax.set_title(f"MoE expert parameters, {num_layers} layer{'s' if num_layers > 1 else ''}")
    return fig


__all__ = [
    "token_expert_heatmap",
    "routing_heatmap",
    "expert_load",
    "routing_overview",
    "token_probabilities",
    "weight_traffic",
    "moe_parameters",
]

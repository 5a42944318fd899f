"""Interactive explorers for JupyterLab, built on the static figures of :mod:`moe_lib.teach.viz` (so their
colours are those of :mod:`moe_lib.teach.viz.style`, as in every other figure).

    routing_explorer     tokens, top_k, seed  -> routing heatmap and expert-load histogram
    alignment_explorer   BLOCK_M, tokens, seed -> the padded, expert-sorted layout and its waste
    tp_explorer          tp size, tokens       -> shard shapes, bytes held per rank, bytes the all-reduce moves

Each returns an :class:`Explorer`: a ``VBox`` of controls above an ``Output`` area. Changing a control
redraws at once; the first drawing happens while the explorer is built, so a notebook cell that ends with
``routing_explorer()`` shows its figure when it runs and never waits for anyone. The drawing is written
straight into the Output widget's ``outputs`` (a PNG and a line of text), not through ``display`` and
``clear_output``: that works the same in a kernel, in a plain Python process (the tests) and under nbval,
where the cell's own output stays one deterministic widget view.

Everything is small and runs on the CPU in well under a second: routing uses
:func:`moe_lib.kernels.routing.topk_softmax`, alignment the torch specification
:func:`moe_lib.kernels.align.moe_align_block_size_torch`, and the tensor parallel shards are cut by
:func:`moe_lib.parallel.shard_w13` / :func:`~moe_lib.parallel.shard_w2` from weights on the ``meta`` device
(shapes without memory).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping

import ipywidgets as W
import torch
from matplotlib.figure import Figure

from .._validate import check_int
from ..config import MIXTRAL_8X7B, MoEConfig
from ..kernels.align import moe_align_block_size_torch
from ..kernels.routing import topk_softmax
from ..parallel.shard import shard_w2, shard_w13
from ..testing import randn, seeded
from . import viz
from .viz.style import check_config

#: Resolution of the PNGs the explorers draw (the figures are sized in inches by moe_lib.teach.viz).
DPI = 80


def _png_output(fig: Figure) -> dict:
    """A Jupyter display_data output holding ``fig`` as a PNG (no IPython needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    width, height = fig.get_size_inches()
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
            "text/plain": f"<Figure size {width * 100:g}x{height * 100:g} with {len(fig.axes)} Axes>",
        },
        "metadata": {},
    }


def _text_output(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text if text.endswith("\n") else text + "\n"}


class Explorer(W.VBox):
    """Controls on top, and below them an Output area that ``draw(**values)`` refills on every change.

    ``draw`` returns ``(text, figure)``; the text is shown above the figure. Attributes:

    * ``controls`` — name -> control widget (set ``explorer.controls["top_k"].value = 3`` to drive it);
    * ``output`` — the Output widget; ``text`` — the text shown now; ``figure`` — the last figure drawn.
    """

    def __init__(self, controls: Mapping[str, W.ValueWidget], draw: Callable[..., tuple[str, Figure]], *,
                 title: str):
        self.controls = dict(controls)
        self.output = W.Output(layout=W.Layout(min_height="120px"))
        self._draw = draw
        self.text = ""
        self.figure: Figure | None = None
        header = W.HTML(f"<b>{title}</b>")
        super().__init__([header, W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")),
                          self.output])
        self.add_class("moe-lib-explorer")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.refresh()

    @property
    def values(self) -> dict:
        """The current value of every control, by name."""
        return {name: control.value for name, control in self.controls.items()}

    def _on_change(self, _change) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Redraw from the current control values (called on every change)."""
        text, fig = self._draw(**self.values)
        self.text, self.figure = text, fig
        self.output.outputs = (_text_output(text), _png_output(fig))


def _slider(description: str, value: int, low: int, high: int, step: int = 1) -> W.IntSlider:
    return W.IntSlider(value=value, min=low, max=high, step=step, description=description,
                       continuous_update=False, style={"description_width": "initial"})


# ----------------------------------------------------------------------------------------------------
# Routing (notebook 03)
# ----------------------------------------------------------------------------------------------------
def routing_explorer(*, num_experts: int = 8, num_tokens: int = 32, top_k: int = 2, seed: int = 0) -> Explorer:
    """Route random logits: sliders for tokens, top_k and seed; a routing heatmap and the expert load.

    The logits are N(0, 1), drawn from ``seed``; routing is :func:`moe_lib.kernels.routing.topk_softmax`
    (fp32 softmax, top-k with ties to the lower id, renormalized). The text line gives the busiest and the
    idlest expert against the balanced load M k / E.
    """
    check_int("num_experts", num_experts, low=2, high=64)
    check_int("num_tokens", num_tokens, low=1, high=256)
    check_int("top_k", top_k, low=1, high=num_experts)
    check_int("seed", seed, low=0, high=999)

    def draw(num_tokens: int, top_k: int, seed: int) -> tuple[str, Figure]:
        logits = randn(num_tokens, num_experts, generator=seeded(seed))  # (M, E)
        weights, ids = topk_softmax(logits, top_k)  # (M, k) fp32, (M, k) int32
        load = ids.flatten().bincount(minlength=num_experts)  # (E,)
        balanced = num_tokens * top_k / num_experts
        text = (f"{num_tokens} tokens x top_k = {top_k} = {num_tokens * top_k} rows over {num_experts} experts\n"
                f"busiest expert {int(load.argmax())} with {int(load.max())} rows, idlest {int(load.argmin())} "
                f"with {int(load.min())} (balanced: {balanced:.3g})")
        return text, viz.routing_overview(weights, ids, num_experts)

    controls = {
        "num_tokens": _slider("tokens", num_tokens, 1, 256),
        "top_k": _slider("top_k", top_k, 1, num_experts),
        "seed": _slider("seed", seed, 0, 999),
    }
    return Explorer(controls, draw, title="Routing explorer: top-k routing of random logits")


# ----------------------------------------------------------------------------------------------------
# Alignment (notebook 05)
# ----------------------------------------------------------------------------------------------------
BLOCK_M_CHOICES = (1, 2, 4, 8, 16, 32, 64)


def alignment_explorer(
    *, num_experts: int = 8, top_k: int = 2, num_tokens: int = 12, block_m: int = 8, seed: int = 7
) -> Explorer:
    """Align random routing: BLOCK_M, tokens and seed; the padded layout and how many rows are padding.

    Alignment is the torch specification :func:`moe_lib.kernels.align.moe_align_block_size_torch` (the
    Triton kernel gives identical tensors, notebook 05).
    """
    check_int("num_experts", num_experts, low=2, high=64)
    check_int("top_k", top_k, low=1, high=num_experts)
    check_int("num_tokens", num_tokens, low=1, high=64)
    check_int("seed", seed, low=0, high=999)
    check_int("block_m", block_m)
    if block_m not in BLOCK_M_CHOICES:
        raise ValueError(f"block_m must be one of {BLOCK_M_CHOICES}, got {block_m}")

    def draw(block_m: int, num_tokens: int, seed: int) -> tuple[str, Figure]:
        _, ids = topk_softmax(randn(num_tokens, num_experts, generator=seeded(seed)), top_k)  # (M, k)
        sorted_ids, expert_ids, total = moe_align_block_size_torch(ids, block_m, num_experts)
        rows, padded = num_tokens * top_k, int(total.item())
        text = (f"BLOCK_M = {block_m}: {rows} rows -> {padded} slots in use, {padded - rows} of them padding "
                f"({100 * (padded - rows) / padded:.0f} % of the rows computed)\n"
                f"buffer: {sorted_ids.numel()} slots, the worst case {rows} + {num_experts} x {block_m - 1}")
        fig = viz.alignment_layout(sorted_ids, expert_ids, total, block_size=block_m, num_valid=rows,
                                    num_experts=num_experts)
        return text, fig

    controls = {
        "block_m": W.Dropdown(options=list(BLOCK_M_CHOICES), value=block_m, description="BLOCK_M"),
        "num_tokens": _slider("tokens", num_tokens, 1, 64),
        "seed": _slider("seed", seed, 0, 999),
    }
    return Explorer(controls, draw, title="Alignment explorer: expert-sorted rows padded to BLOCK_M")


# ----------------------------------------------------------------------------------------------------
# Tensor parallel (notebook 08)
# ----------------------------------------------------------------------------------------------------
TOKEN_CHOICES = tuple(2**i for i in range(13))  # 1 ... 4096


def tp_shard_table(config: MoEConfig, tp_size: int, num_tokens: int) -> str:
    """A text table: each rank's w13 / w2 shard shapes and bytes, and the bytes one all-reduce moves.

    The shapes come from cutting full-size weights on the ``meta`` device with
    :func:`moe_lib.parallel.shard_w13` and :func:`moe_lib.parallel.shard_w2`, so they are the library's,
    not a formula's. The all-reduce sums each rank's (M, H) partial output; a ring all-reduce sends
    2 (tp - 1) / tp x M x H values from every rank.
    """
    check_config(config)
    check_int("tp_size", tp_size, low=1)
    check_int("num_tokens", num_tokens, low=1)
    E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
    if I % tp_size:
        raise ValueError(f"tp_size ({tp_size}) must divide the intermediate size {I}")
    w13 = torch.empty(E, 2 * I, H, device="meta", dtype=config.dtype)  # shapes only, no memory
    w2 = torch.empty(E, H, I, device="meta", dtype=config.dtype)
    local13, local2 = shard_w13(w13, tp_size, 0), shard_w2(w2, tp_size, 0)
    bpe = config.bytes_per_element
    rank_bytes = (local13.numel() + local2.numel()) * bpe
    output_bytes = num_tokens * H * bpe
    sent = 2 * (tp_size - 1) / tp_size * output_bytes
    lines = [
        f"tp = {tp_size}: every rank holds all {E} experts, sliced along I = {I} into I/tp = {I // tp_size}",
        f"  w13 {tuple(w13.shape)} -> per rank {tuple(local13.shape)}   [w1 rows of the rank; w3 rows of the rank]",
        f"  w2  {tuple(w2.shape)} -> per rank {tuple(local2.shape)}",
        f"  expert weights per rank: {rank_bytes / 1e9:.2f} GB ({str(config.dtype).replace('torch.', '')})",
        f"  all-reduce of the ({num_tokens}, {H}) partial outputs: "
        + (f"each rank sends {sent / 1e6:.3f} MB (ring: 2 (tp-1)/tp x {output_bytes / 1e6:.3f} MB)"
           if tp_size > 1 else "none (one rank)"),
    ]
    return "\n".join(lines)


def tp_explorer(config: MoEConfig = MIXTRAL_8X7B, *, tp_size: int = 2, num_tokens: int = 16) -> Explorer:
    """Tensor parallel: a tp-size slider and a token slider; the shard shapes, bytes per rank, bytes moved.

    The figure is one expert's w13 and w2, each band coloured by the rank that holds it
    (:func:`moe_lib.teach.viz.parallel.tp_shards`); the text is :func:`tp_shard_table`.
    """
    check_config(config)
    tp_choices = [t for t in (1, 2, 4, 8, 16) if config.intermediate_size % t == 0]
    check_int("tp_size", tp_size)
    if tp_size not in tp_choices:
        raise ValueError(f"tp_size must be one of {tp_choices} (divisors of intermediate_size), got {tp_size}")
    check_int("num_tokens", num_tokens)
    if num_tokens not in TOKEN_CHOICES:
        raise ValueError(f"num_tokens must be a power of two in [1, 4096], got {num_tokens}")

    def draw(tp_size: int, num_tokens: int) -> tuple[str, Figure]:
        text = tp_shard_table(config, tp_size, num_tokens)
        return text, viz.tp_shards(config.hidden_size, config.intermediate_size, tp_size)

    controls = {
        "tp_size": W.SelectionSlider(options=tp_choices, value=tp_size, description="tp size",
                                     continuous_update=False),
        "num_tokens": W.SelectionSlider(options=list(TOKEN_CHOICES), value=num_tokens, description="tokens",
                                        continuous_update=False),
    }
    return Explorer(controls, draw, title="Tensor-parallel explorer: one expert's weights cut across ranks")


__all__ = ["Explorer", "routing_explorer", "alignment_explorer", "tp_explorer", "tp_shard_table", "DPI"]

"""moe_lib.teach.viz.routing: each figure function returns a Figure with the expected axes and artists, draws the same
picture for the same inputs, keeps pyplot's global state untouched, and rejects bad input by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from moe_lib.config import MIXTRAL_8X7B, TINY
from moe_lib.kernels.routing import softmax_fp32, topk_softmax
from moe_lib.teach import viz

SHAPES = [(1, 8, 2), (37, 8, 2), (16, 16, 4), (5, 4, 1)]  # (M, E, top_k)


pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def _routing(gen: torch.Generator, M: int, E: int, k: int):
    logits = torch.randn(M, E, generator=gen) * 2  # (M, E) fresh draw
    weights, ids = topk_softmax(logits, k)  # (M, k), (M, k)
    return logits, weights, ids


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# Structure of each figure
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("M,E,k", SHAPES)
@pytest.mark.parametrize("diverging", [True, False])
def test_token_expert_heatmap(M, E, k, diverging, gen):
    logits, _, _ = _routing(gen, M, E, k)
    fig = viz.token_expert_heatmap(logits, diverging=diverging, title="t", cbar_label="c")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # image + colorbar
    ax = fig.axes[0]
    assert len(ax.images) == 1
    data = ax.images[0].get_array()
    assert data.shape == (M, E)
    np.testing.assert_allclose(np.asarray(data), logits.double().numpy())
    vmin, vmax = ax.images[0].get_clim()
    if diverging:
        assert vmin == -vmax and vmax == pytest.approx(logits.abs().max().item())
    else:
        assert vmin == 0.0
    assert ax.get_title() == "t"


def test_token_expert_heatmap_non_finite_cells_are_blank(gen):
    logits = torch.randn(6, 8, generator=gen)
    logits[0, 3], logits[2, 5], logits[4, 1] = float("nan"), float("inf"), float("-inf")
    fig = viz.token_expert_heatmap(logits)
    image = fig.axes[0].images[0]
    assert np.ma.getmaskarray(np.ma.masked_invalid(image.get_array())).sum() == 3
    vmin, vmax = image.get_clim()
    assert np.isfinite([vmin, vmax]).all()


@pytest.mark.parametrize("M,E,k", SHAPES)
def test_routing_heatmap(M, E, k, gen):
    _, weights, ids = _routing(gen, M, E, k)
    fig = viz.routing_heatmap(weights, ids, E)
    assert len(fig.axes) == 2
    dense = np.asarray(fig.axes[0].images[0].get_array())  # (M, E)
    assert dense.shape == (M, E)
    assert (np.count_nonzero(dense, axis=1) <= k).all()
    np.testing.assert_allclose(dense.sum(axis=1), weights.double().sum(dim=1).numpy(), rtol=1e-12)
    rows = np.arange(M)[:, None]
    np.testing.assert_allclose(dense[rows, ids.long().numpy()], weights.double().numpy())


@pytest.mark.parametrize("M,E,k", SHAPES)
def test_expert_load(M, E, k, gen):
    _, _, ids = _routing(gen, M, E, k)
    fig = viz.expert_load(ids, E)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == E
    assert heights == np.bincount(ids.long().flatten().numpy(), minlength=E).tolist()
    assert sum(heights) == M * k
    assert len(ax.lines) == 1  # the "balanced" guide
    assert ax.lines[0].get_ydata()[0] == pytest.approx(M * k / E)


@pytest.mark.parametrize("M,E,k", SHAPES)
def test_routing_overview(M, E, k, gen):
    _, weights, ids = _routing(gen, M, E, k)
    fig = viz.routing_overview(weights, ids, E)
    assert len(fig.axes) == 3  # heatmap, load, colorbar
    images = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if len(ax.patches) == E]
    assert len(images) == 1 and len(bars) == 1
    assert sum(p.get_height() for p in bars[0].patches) == M * k


@pytest.mark.parametrize("M,E,k", SHAPES)
def test_token_probabilities(M, E, k, gen):
    logits, _, ids = _routing(gen, M, E, k)
    probs = softmax_fp32(logits)[0]  # (E,)
    fig = viz.token_probabilities(probs, ids[0])
    assert len(fig.axes) == 1
    patches = fig.axes[0].patches
    assert len(patches) == E
    np.testing.assert_allclose([p.get_height() for p in patches], probs.double().numpy())
    colours = [p.get_facecolor() for p in patches]
    chosen = set(ids[0].tolist())
    assert len({colours[e] for e in chosen}) == 1
    assert all(colours[e] != colours[next(iter(chosen))] for e in range(E) if e not in chosen)
    assert len(viz.token_probabilities(probs).axes[0].patches) == E  # no chosen ids: fine too


@pytest.mark.parametrize("config", [MIXTRAL_8X7B, TINY])
@pytest.mark.parametrize("ridge", [None, 250.0])
def test_weight_traffic(config, ridge):
    counts = [1, 2, 4, 16, 64, 1024]
    fig = viz.weight_traffic(config, counts, ridge_flops_per_byte=ridge)
    assert len(fig.axes) == 2
    ax_bytes, ax_ai = fig.axes
    assert len(ax_bytes.lines) == 3  # curve, "top_k experts", "all experts"
    assert len(ax_ai.lines) == (1 if ridge is None else 2)
    curve = ax_bytes.lines[0].get_ydata()
    assert len(curve) == len(counts)
    assert (np.diff(curve) >= 0).all()  # more tokens never read fewer weights
    intensity = ax_ai.lines[0].get_ydata()
    assert intensity[0] == pytest.approx(2 / config.bytes_per_element)  # one token: 2 FLOPs per weight read


@pytest.mark.parametrize("config,layers", [(MIXTRAL_8X7B, 32), (TINY, 1)])
def test_moe_parameters(config, layers):
    fig = viz.moe_parameters(config, num_layers=layers)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.patches) == config.num_experts + config.top_k
    widths = sum(p.get_width() for p in ax.patches)
    expected = (config.num_experts + config.top_k) * config.params_per_expert * layers / 1e9
    assert widths == pytest.approx(expected)


def test_same_inputs_draw_the_same_picture(gen):
    _, weights, ids = _routing(gen, 12, 8, 2)
    assert _png(viz.routing_overview(weights, ids, 8)) == _png(viz.routing_overview(weights, ids, 8))


# ----------------------------------------------------------------------------------------------------
# Bad input: a ValueError / TypeError that names the argument
# ----------------------------------------------------------------------------------------------------
W = torch.full((4, 2), 0.5)
IDS = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]], dtype=torch.int32)
BAD = [
    (lambda: viz.token_expert_heatmap([[1.0]]), TypeError, "values"),
    (lambda: viz.token_expert_heatmap(torch.ones(3)), ValueError, "values"),
    (lambda: viz.token_expert_heatmap(torch.ones(0, 8)), ValueError, "values"),
    (lambda: viz.token_expert_heatmap(torch.ones(2, 8, dtype=torch.int64)), TypeError, "values"),
    (lambda: viz.token_expert_heatmap(torch.ones(2, 8), title=3), TypeError, "title"),
    (lambda: viz.token_expert_heatmap(torch.ones(2, 8), diverging="yes"), TypeError, "diverging"),
    (lambda: viz.routing_heatmap(W, IDS, 7), ValueError, "topk_ids"),
    (lambda: viz.routing_heatmap(W, IDS.float(), 8), TypeError, "topk_ids"),
    (lambda: viz.routing_heatmap(W[:3], IDS, 8), ValueError, "topk_weights"),
    (lambda: viz.routing_heatmap(W.numpy(), IDS, 8), TypeError, "topk_weights"),
    (lambda: viz.routing_heatmap(W, IDS, 8.0), TypeError, "num_experts"),
    (lambda: viz.routing_heatmap(W, IDS, 0), ValueError, "num_experts"),
    (lambda: viz.expert_load(IDS - 1, 8), ValueError, "topk_ids"),
    (lambda: viz.expert_load(IDS[0], 8), ValueError, "topk_ids"),
    (lambda: viz.expert_load(IDS, 8, title=5), TypeError, "title"),
    (lambda: viz.routing_overview(W, IDS[:, :1], 8), ValueError, "topk_weights"),
    (lambda: viz.token_probabilities(torch.ones(2, 8)), ValueError, "probs"),
    (lambda: viz.token_probabilities(torch.ones(8), torch.tensor([9])), ValueError, "chosen"),
    (lambda: viz.token_probabilities(torch.ones(8), torch.tensor([1.0])), TypeError, "chosen"),
    (lambda: viz.weight_traffic("mixtral", [1]), TypeError, "config"),
    (lambda: viz.weight_traffic(TINY, 4), TypeError, "token_counts"),
    (lambda: viz.weight_traffic(TINY, []), ValueError, "token_counts"),
    (lambda: viz.weight_traffic(TINY, [1, 0]), ValueError, r"token_counts\[1\]"),
    (lambda: viz.weight_traffic(TINY, [1], ridge_flops_per_byte=-1.0), ValueError, "ridge_flops_per_byte"),
    (lambda: viz.weight_traffic(TINY, [1], ridge_flops_per_byte="x"), TypeError, "ridge_flops_per_byte"),
    (lambda: viz.moe_parameters(TINY, num_layers=0), ValueError, "num_layers"),
    (lambda: viz.moe_parameters(None), TypeError, "config"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()

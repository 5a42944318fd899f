"""moe_lib.teach.viz.style: the colours the notebooks promise — an expert, a rank, an implementation has the same
colour in every figure module — and the drawing and argument rules the modules share."""

from __future__ import annotations

import inspect
import pkgutil
import re

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from moe_lib.kernels.align import moe_align_block_size_torch
from moe_lib.teach import viz
from moe_lib.teach.viz import kernels as vk
from moe_lib.teach.viz import layer as vl
from moe_lib.teach.viz import parallel as vpar
from moe_lib.teach.viz import perf as vperf
from moe_lib.teach.viz import style

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")

FIGURE_MODULES = [m.name for m in pkgutil.iter_modules(viz.__path__) if m.name != "style"]


def _rgb(colour) -> tuple[float, float, float]:
    return tuple(round(float(c), 6) for c in to_rgb(colour))


def _patch(fig: Figure, gid: str):
    (patch,) = [p for ax in fig.axes for p in ax.patches if p.get_gid() == gid]
    return patch


# ----------------------------------------------------------------------------------------------------
# The colour functions
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 8, 9, 10, 16, 18, 19, 64, 128])
def test_expert_colours_are_distinct_and_never_grey(n):
    colours = [_rgb(c) for c in style.expert_colors(n)]
    assert len(colours) == n and len(set(colours)) == n
    assert not any(r == g == b for r, g, b in colours), "grey means padding"


def test_an_expert_keeps_its_colour_while_the_qualitative_map_holds():
    nine = style.expert_colors(9)
    assert all(style.expert_colors(n) == nine[:n] for n in range(1, 10))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64])
def test_rank_colours_are_distinct(n):
    colours = [_rgb(c) for c in style.rank_colors(n)]
    assert len(colours) == n and len(set(colours)) == n


def test_a_rank_keeps_its_colour_and_never_looks_like_an_expert():
    eight = style.rank_colors(8)
    assert all(style.rank_colors(n) == eight[:n] for n in range(1, 9))
    experts = {_rgb(c) for n in range(1, 19) for c in style.expert_colors(n)}
    assert not experts & {_rgb(c) for c in eight}


def test_series_and_tp_colours():
    series = style.series_colors(12)
    assert series[9:] == series[:3] and len({_rgb(c) for c in series[:9]}) == 9
    assert style.series_colors(0) == []
    tps = style.tp_colors([1, 2, 8])
    assert list(tps) == [1, 2, 8] and len(set(tps.values())) == 3


@pytest.mark.parametrize("call,exc,name", [
    (lambda: style.expert_colors(0), ValueError, "num_experts"),
    (lambda: style.rank_colors(2.0), TypeError, "num_ranks"),
    (lambda: style.series_colors(-1), ValueError, "count"),
])
def test_colour_functions_name_a_bad_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


# ----------------------------------------------------------------------------------------------------
# The promise: the same expert / rank / implementation, the same colour, in every figure module
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", FIGURE_MODULES)
def test_no_figure_module_picks_identity_colours_of_its_own(module):
    """Only style looks up colour maps or defines a *_colors function; the figures ask it."""
    source = inspect.getsource(getattr(viz, module))
    assert "colormaps" not in source
    assert not re.search(r"def \w*_colou?rs\(", source)
    assert not re.search(r"\b(tab10|tab20|Set2|turbo)\b", source)


def _alignment_expert_colours(num_experts: int) -> list:
    """alignment_layout with token e routed to expert e, one slot per block: slot e shows expert e."""
    ids = torch.arange(num_experts, dtype=torch.int32)[:, None]  # (E, 1)
    sorted_ids, expert_ids, total = moe_align_block_size_torch(ids, 1, num_experts)
    fig = vk.alignment_layout(sorted_ids, expert_ids, total, block_size=1, num_valid=num_experts,
                              num_experts=num_experts)
    (experts,) = [c for c in fig.axes[0].collections if c.get_gid() == "experts"]
    return list(experts.get_facecolor())


def _placement_expert_colours(num_experts: int) -> list:
    fig = vpar.expert_placement(torch.arange(num_experts), 1, num_logical=num_experts)
    return [_patch(fig, f"slot-{e}").get_facecolor() for e in range(num_experts)]


EXPERT_FIGURES = {"kernels.alignment_layout": _alignment_expert_colours,
                  "parallel.expert_placement": _placement_expert_colours}
RANK_FIGURES = {"layer.shard_layout": lambda tp: vl.shard_layout(2 * tp, tp),
                "parallel.tp_shards": lambda tp: vpar.tp_shards(8, 2 * tp, tp)}


@pytest.mark.parametrize("figure", list(EXPERT_FIGURES))
@pytest.mark.parametrize("num_experts", [4, 8, 16, 32])
def test_an_expert_has_the_same_colour_in_every_figure(figure, num_experts):
    drawn = [_rgb(c) for c in EXPERT_FIGURES[figure](num_experts)]
    assert drawn == [_rgb(c) for c in style.expert_colors(num_experts)]


@pytest.mark.parametrize("figure", list(RANK_FIGURES))
@pytest.mark.parametrize("tp", [1, 2, 8, 16])
def test_a_rank_has_the_same_colour_in_every_figure(figure, tp):
    fig = RANK_FIGURES[figure](tp)
    for r, colour in enumerate(style.rank_colors(tp)):
        for gid in (f"w13-w1-{r}", f"w13-w3-{r}", f"w2-{r}"):
            assert _rgb(_patch(fig, gid).get_facecolor()) == _rgb(colour), gid


def test_the_tp_explorer_draws_the_ranks_in_their_colours():
    widgets = pytest.importorskip("moe_lib.teach.widgets", exc_type=ImportError)  # no ipywidgets on the GPU machine
    explorer = widgets.tp_explorer(tp_size=4)
    assert [_rgb(_patch(explorer.figure, f"w2-{r}").get_facecolor()) for r in range(4)] == \
        [_rgb(c) for c in style.rank_colors(4)]


def test_an_implementation_has_the_same_colour_in_every_figure():
    records = [{"tp": 1, "M": m, "impl": impl, "us": 10.0 * m, "floor_us": 5.0 * m}
               for m in (1, 4) for impl in style.IMPL_COLORS]
    run = {"gpu": "g", "ceilings": {"copy_TBps": 3.0, "matmul_TFLOPs": 800.0}, "records": records}
    for fig in (vk.latency_vs_tokens([run], tps=[1]), vperf.latency_vs_reference(run, tps=[1])):
        lines = {line.get_label(): line.get_color() for line in fig.axes[0].lines}
        assert {impl: _rgb(lines[impl]) for impl in style.IMPL_COLORS} == \
            {impl: _rgb(c) for impl, c in style.IMPL_COLORS.items()}


def test_public_colour_names_are_in_the_viz_namespace():
    for name in style.__all__:
        assert getattr(viz, name) is getattr(style, name)


# ----------------------------------------------------------------------------------------------------
# Shared drawing rules and argument checks
# ----------------------------------------------------------------------------------------------------
def test_log_axes_and_figure_legend():
    fig = Figure()
    left, right = fig.subplots(1, 2)
    for ax, labels in ((left, ["a", "b"]), (right, ["b", "_hidden", "c"])):
        for label in labels:
            ax.plot([1, 10], [1, 100], label=label)
        style.log_axes(ax)
    assert left.get_xscale() == left.get_yscale() == "log"
    assert left.xaxis.get_major_formatter() is style.PLAIN and style.PLAIN(1000.0, 0) == "1000"
    style.figure_legend(fig, [left, right])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]


def test_int_list():
    assert style.int_list("xs", [3, 1], low=1) == [3, 1]
    assert style.int_list("xs", torch.tensor([0, 2]), low=0) == [0, 2]
    assert style.int_list("xs", np.arange(2).tolist(), low=0, distinct=True) == [0, 1]


@pytest.mark.parametrize("call,exc,match", [
    (lambda: style.int_list("xs", 3, low=0), TypeError, "xs"),
    (lambda: style.int_list("xs", [], low=0), ValueError, "xs"),
    (lambda: style.int_list("xs", [1, 0], low=1), ValueError, r"xs\[1\]"),
    (lambda: style.int_list("xs", [1, 1], low=1, distinct=True), ValueError, "repeat"),
    (lambda: style.int_list("xs", torch.tensor([1.0]), low=0), TypeError, "xs"),
    (lambda: style.check_str("title", 3), TypeError, "title"),
    (lambda: style.check_config("mixtral"), TypeError, "config"),
    (lambda: style.check_runs({"gpu": "g"}, keys=("gpu", "records"), record_keys=("M",)), TypeError, "runs"),
    (lambda: style.check_runs([], keys=("gpu", "records"), record_keys=("M",)), ValueError, "runs"),
    (lambda: style.check_runs([3], keys=("gpu", "records"), record_keys=("M",)), TypeError, r"runs\[0\]"),
    (lambda: style.check_runs([{"gpu": "g"}], keys=("gpu", "records"), record_keys=("M",)), ValueError,
     r"runs\[0\] lacks \['records'\]"),
    (lambda: style.check_runs([{"gpu": "g", "records": [{}]}], keys=("gpu", "records"), record_keys=("M",)),
     ValueError, r"runs\[0\]\['records'\]\[0\] must be a dict with M"),
])
def test_bad_arguments_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

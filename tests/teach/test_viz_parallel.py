"""moe_lib.teach.viz.parallel: each figure function returns a Figure that shows what its inputs say, keeps pyplot's
global state untouched, draws the same picture for the same inputs, and rejects bad input by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from moe_lib.parallel import expert_owner, plan_eplb, rank_loads
from moe_lib.teach.viz import parallel as vp
from moe_lib.teach.viz.style import expert_colors, rank_colors

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def _bench_runs(gen: torch.Generator) -> list[dict]:
    runs = []
    for n in (2, 4):
        records = []
        for m in (1, 64, 4096):
            base, kern, comm = (torch.rand(3, generator=gen) * 1000 + 10).tolist()
            records.append({"tp": 1, "M": m, "kernel_us": base, "allreduce_us": 0.0, "total_us": base})
            records.append({"tp": n, "M": m, "kernel_us": kern, "allreduce_us": comm, "total_us": kern + comm})
        runs.append({"gpu": "GPU", "num_gpus": n, "records": records})
    return runs


def _patches(fig: Figure, prefix: str) -> list:
    return [p for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith(prefix)]


@pytest.mark.parametrize("hidden,inter,tp", [(64, 128, 4), (4096, 14336, 8), (8, 6, 1), (32, 48, 3)])
def test_tp_shards(hidden, inter, tp):
    fig = vp.tp_shards(hidden, inter, tp)
    assert isinstance(fig, Figure)
    w1, w3, w2 = _patches(fig, "w13-w1-"), _patches(fig, "w13-w3-"), _patches(fig, "w2-")
    assert len(w1) == len(w3) == len(w2) == tp
    colors = rank_colors(tp)
    for r in range(tp):  # rank r's w1 band sits r bands below the top; its w2 band r bands right of the left
        band = next(p for p in w1 if p.get_gid() == f"w13-w1-{r}")
        assert band.get_y() == pytest.approx(2 * inter - (r + 1) * inter / tp)
        assert band.get_height() == pytest.approx(inter / tp) and band.get_width() == hidden
        col = next(p for p in w2 if p.get_gid() == f"w2-{r}")
        assert col.get_x() == pytest.approx(r * inter / tp) and col.get_height() == hidden
        assert tuple(col.get_facecolor()) == pytest.approx(colors[r])
    assert sum(p.get_height() for p in w1 + w3) == pytest.approx(2 * inter)
    assert fig.legends and len(fig.legends[0].get_texts()) == tp


def test_allreduce_traffic_follows_the_ring_formula():
    fig = vp.allreduce_traffic(4096, [8, 1, 2, 4, 2])
    ax = fig.axes[0]
    per_rank, everyone, limit = ax.lines
    np.testing.assert_array_equal(per_rank.get_xdata(), [1, 2, 4, 8])
    np.testing.assert_allclose(per_rank.get_ydata(), [0, 8, 12, 14])  # KiB: 2 (p-1)/p * 4096 * 2 B
    np.testing.assert_allclose(everyone.get_ydata(), [0, 16, 48, 112])
    assert limit.get_ydata()[0] == 16


def test_parallel_bench(gen):
    runs = _bench_runs(gen)
    fig = vp.parallel_bench(runs)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3  # one panel per M
    for ax, m in zip(fig.axes, (1, 64, 4096), strict=True):
        heights = [p.get_height() for p in ax.patches]
        totals = [line.get_ydata()[0] for line in ax.lines]
        expected, expected_totals = [], []
        for run in runs:
            for rec in sorted((r for r in run["records"] if r["M"] == m), key=lambda r: r["tp"]):
                expected.append(rec["kernel_us"])
                if rec["allreduce_us"] > 0:
                    expected.append(rec["allreduce_us"])
                expected_totals.append(rec["total_us"])
        np.testing.assert_allclose(heights, expected)
        np.testing.assert_allclose(totals, expected_totals)
        speedups = [t.get_text() for t in ax.texts]
        assert speedups == [f"{run['records'][2 * i]['total_us'] / run['records'][2 * i + 1]['total_us']:.2f}x"
                            for run in runs for i in range(3) if run["records"][2 * i]["M"] == m]


def test_expert_placement_and_loads():
    plan = plan_eplb(torch.tensor([90, 50, 10, 10, 10, 10, 10, 10]), 4, 4)
    loads = list(range(12))
    fig = vp.expert_placement(plan.phys_to_log, 4, num_logical=8, loads=loads)
    cells = _patches(fig, "slot-")
    assert len(cells) == 12
    colors = expert_colors(8)
    texts = [t.get_text() for t in fig.axes[0].texts]
    for phys, e in enumerate(plan.phys_to_log.tolist()):
        cell = next(c for c in cells if c.get_gid() == f"slot-{phys}")
        assert tuple(cell.get_facecolor()) == pytest.approx(colors[e])
        assert f"e{e}\n{loads[phys]}" in texts
    hatched = [c for c in cells if c.get_hatch()]
    assert len(hatched) == 4  # every copy after an expert's first
    plain = vp.expert_placement(torch.arange(8), 3)  # 3 + 3 + 2 slots
    assert len(_patches(plain, "slot-")) == 8 and not any(c.get_hatch() for c in _patches(plain, "slot-"))


def test_rank_loads_and_imbalance(gen):
    ids = torch.randint(0, 8, (50, 2), generator=gen)
    before = rank_loads(ids, expert_owner(8, 4), 4)
    after = torch.tensor([25, 25, 25, 25])
    fig = vp.rank_loads({"plain": before, "balanced": after.tolist()})
    ax = fig.axes[0]
    np.testing.assert_array_equal([p.get_height() for p in ax.patches], before.tolist() + [25] * 4)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "balanced (25)"
    assert labels[1] == f"plain (max/mean {before.max().item() / 25:.2f})"
    fig2 = vp.imbalance_vs_redundancy([0, 2, 4], {"calibration": [2.0, 1.3, 1.1], "fresh": [2.1, 1.4, 1.2]})
    lines = fig2.axes[0].lines
    np.testing.assert_allclose(lines[1].get_ydata(), [2.1, 1.4, 1.2])


def test_same_inputs_same_picture(gen):
    runs = _bench_runs(gen)
    plan = plan_eplb(torch.tensor([5, 1, 1, 1]), 2, 2)
    makers = [
        lambda: vp.tp_shards(64, 128, 2),
        lambda: vp.allreduce_traffic(64, [1, 2]),
        lambda: vp.parallel_bench(runs),
        lambda: vp.expert_placement(plan.phys_to_log, 2),
        lambda: vp.rank_loads({"a": [1, 2]}),
        lambda: vp.imbalance_vs_redundancy([0, 1], {"a": [1.5, 1.0]}),
    ]
    for make in makers:
        assert _png(make()) == _png(make())


def test_bad_inputs_are_named(gen):
    with pytest.raises(ValueError, match="tp_size"):
        vp.tp_shards(64, 128, 3)
    with pytest.raises(ValueError, match="tp_size"):
        vp.tp_shards(64, 128, 0)
    with pytest.raises(TypeError, match="hidden"):
        vp.tp_shards(64.0, 128, 2)
    with pytest.raises(ValueError, match="tp_sizes"):
        vp.allreduce_traffic(64, [])
    with pytest.raises(ValueError, match=r"tp_sizes\[1\]"):
        vp.allreduce_traffic(64, [1, 0])
    with pytest.raises(ValueError, match="runs"):
        vp.parallel_bench([])
    with pytest.raises(ValueError, match=r"runs\[0\]\['records'\]\[0\]"):
        vp.parallel_bench([{"gpu": "g", "num_gpus": 2, "records": [{"tp": 1, "M": 1, "us": 3.0}]}])
    with pytest.raises(TypeError, match="runs"):
        vp.parallel_bench(_bench_runs(gen)[0])
    with pytest.raises(ValueError, match="phys_to_log"):
        vp.expert_placement(torch.tensor([0, -1]), 2)
    with pytest.raises(ValueError, match="ep_size"):
        vp.expert_placement(torch.arange(4), 5)
    with pytest.raises(ValueError, match="loads"):
        vp.expert_placement(torch.arange(4), 2, loads=[1, 2])
    with pytest.raises(ValueError, match="num_logical"):
        vp.expert_placement(torch.arange(4), 2, num_logical=3)
    with pytest.raises(ValueError, match="same number of ranks"):
        vp.rank_loads({"a": [1, 2], "b": [1, 2, 3]})
    with pytest.raises(TypeError, match="loads"):
        vp.rank_loads({})
    with pytest.raises(ValueError, match=r"imbalance\['a'\]"):
        vp.imbalance_vs_redundancy([0, 1], {"a": [1.0]})
    with pytest.raises(TypeError, match="title"):
        vp.rank_loads({"a": [1]}, title=3)


def test_parallel_bench_draws_one_implementation_of_a_run_with_several(gen):
    # runs of the FP8-era bench hold records per implementation; the figure draws the asked one only
    runs = _bench_runs(gen)
    fp8 = [{**run, "records": run["records"] + [{**r, "impl": "moe_lib_fp8", "kernel_us": r["kernel_us"] / 2}
                                                for r in run["records"]]} for run in runs]
    heights = [[p.get_height() for p in ax.patches] for ax in vp.parallel_bench(runs).axes if ax.get_title()]
    assert heights == [[p.get_height() for p in ax.patches] for ax in vp.parallel_bench(fp8).axes if ax.get_title()]
    halved = [[p.get_height() for p in ax.patches] for ax in vp.parallel_bench(fp8, "moe_lib_fp8").axes
              if ax.get_title()]
    assert halved != heights and len(halved) == len(heights)

"""moe_lib.teach.viz.quant (notebook 11): each figure function returns a Figure, keeps pyplot's global state
untouched, draws what the data says (the e4m3 grid is torch's, the floors are moe_lib.perf.floors'), draws the same
picture for the same inputs, and rejects bad input by name. The recorded FP8 reference of data/bench/ is drawn too."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from moe_lib.kernels.quant import FP8_MAX, to_e4m3
from moe_lib.perf.floors import floor_us
from moe_lib.teach.viz import quant as vq

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")
DATA = Path(__file__).resolve().parents[2] / "data" / "bench"
CEIL = {"copy_TBps": 4.8, "matmul_TFLOPs": 767.0, "fp8_matmul_TFLOPs": 1200.0}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def _run(gen: torch.Generator, tps=(1, 8), ms=(1, 64, 4096)) -> dict:
    records = [{"tp": tp, "M": m, "impl": impl, "us": 10.0 + 1000 * torch.rand((), generator=gen).item()}
               for tp in tps for m in ms for impl in ("bf16", "fp8")]
    return {"gpu": "GPU A", "records": records}


def test_the_positive_values_are_the_e4m3_grid():
    v = vq.e4m3_positive_values()
    assert v.numel() == 126 and bool((v[1:] > v[:-1]).all())
    assert v.max().item() == FP8_MAX and v.min().item() == 2.0**-9
    assert torch.equal(to_e4m3(v.float()).double(), v)  # every one is representable: rounding leaves it


def test_e4m3_grid_draws_three_panels_and_the_marks():
    fig = vq.e4m3_grid({0.3: 0.3125, 100.0: 96.0})
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert {t.get_text() for t in fig.axes[0].texts} - {""} == {"0.3", "100"}  # (annotate: an empty text)
    step_line = fig.axes[1].lines[0]
    x, y = np.asarray(step_line.get_xdata()), np.asarray(step_line.get_ydata())
    normal = x >= 2.0**-6
    assert np.allclose(y[normal], 2.0 ** (np.floor(np.log2(x[normal])) - 3))  # the step doubles every binade


def test_scale_layouts_count_the_scales():
    fig = vq.scale_layouts(rows=8, cols=16, block=(4, 8))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["per tensor: 1 scale", "per channel: 8 scales", "per block 4 x 8: 4 scales"]


def test_relative_error_histograms_and_the_share_above_the_bound(gen):
    small, large = torch.full((100,), 0.01), torch.cat([torch.full((90,), 0.01), torch.full((10,), 0.5)])
    fig = vq.relative_error_histograms({"a": small, "b": large})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("a: 0.000%") and labels[1].startswith("b: 10.000%")


def test_error_vs_block_size_one_panel_per_measure():
    fig = vq.error_vs_block_size([16, 32, 64], {"rms": {"x": [1.0, 2.0, 3.0]}, "tail": {"x": [0.1, 0.2, 0.3]}},
                                 references={"per tensor": {"rms": 2.5}})
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["rms", "tail"]
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1  # the reference only where it is given


def test_token_errors_and_k_group_scales_and_error_budget(gen):
    assert isinstance(vq.token_errors({"a": torch.rand(8, generator=gen), "b": torch.rand(8, generator=gen)},
                                      highlight=3), Figure)
    fig = vq.k_group_scales(2.0, torch.tensor([1.0, 1.5, 3.0]), group=64)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == [1.0, 1.5, 2.0, 2.0, 2.0, 3.0]
    fig = vq.error_budget({"t": {"w": 0.05, "call": 0.07}, "c": {"w": 0.04, "call": 0.06}})
    assert len(fig.axes[0].patches) == 4


def test_fp8_latency_draws_the_runs_and_both_floors(gen):
    fig = vq.fp8_latency([_run(gen)], ceilings=CEIL, tps=(1, 8))
    for ax, tp in zip(fig.axes, (1, 8), strict=True):
        lines = {line.get_label(): line for line in ax.lines}
        assert {"bf16", "fp8", "bf16 floor", "FP8 floor"} <= set(lines)
        fp8_floor = lines["FP8 floor"].get_ydata()[0]  # M = 1
        assert fp8_floor == pytest.approx(floor_us(1, tp, {"copy_TBps": 4.8, "matmul_TFLOPs": 1200.0},
                                                   bytes_per_weight=1)["floor_us"])
        assert lines["bf16 floor"].get_ydata()[0] == pytest.approx(2 * fp8_floor)  # memory-bound: twice the bytes


def test_the_recorded_fp8_reference_draws():
    ref = json.loads((DATA / "vllm_reference_fp8_H200.json").read_text())
    fig = vq.fp8_latency([ref], ceilings=CEIL, tps=(1, 2, 4, 8))
    assert len(fig.axes) == 4 and all(len(ax.lines) == 5 for ax in fig.axes)  # three paths, two floors


def test_same_inputs_draw_the_same_picture(gen):
    run = _run(gen)
    assert _png(vq.fp8_latency([run], ceilings=CEIL)) == _png(vq.fp8_latency([run], ceilings=CEIL))
    assert _png(vq.e4m3_grid({1.1: 1.125})) == _png(vq.e4m3_grid({1.1: 1.125}))


RUN = {"gpu": "g", "records": [{"tp": 1, "M": 1, "impl": "x", "us": 1.0}]}
BAD = [
    (lambda: vq.e4m3_grid([0.3]), TypeError, "marks"),
    (lambda: vq.e4m3_grid({-1.0: 1.0}), ValueError, "marks"),
    (lambda: vq.scale_layouts(rows=0), ValueError, "rows"),
    (lambda: vq.scale_layouts(block=4), TypeError, "block"),
    (lambda: vq.relative_error_histograms([torch.rand(3)]), TypeError, "errors"),
    (lambda: vq.relative_error_histograms({}), ValueError, "errors"),
    (lambda: vq.relative_error_histograms({"a": torch.tensor([float("nan")])}), ValueError, "errors"),
    (lambda: vq.relative_error_histograms({"a": torch.rand(3)}, bound=0), ValueError, "bound"),
    (lambda: vq.error_vs_block_size([16, 16], {"m": {"a": [1.0, 2.0]}}), ValueError, "block_sizes"),
    (lambda: vq.error_vs_block_size([16, 32], {"m": {"a": [1.0]}}), ValueError, "panels"),
    (lambda: vq.error_vs_block_size([16], {}), TypeError, "panels"),
    (lambda: vq.error_vs_block_size([16], {"m": {"a": [1.0]}}, references={"r": 1.0}), TypeError, "references"),
    (lambda: vq.token_errors({"a": torch.rand(3), "b": torch.rand(4)}), ValueError, "errors"),
    (lambda: vq.token_errors({"a": torch.rand(3)}, highlight=3), ValueError, "highlight"),
    (lambda: vq.k_group_scales(0.0, torch.rand(3), group=4), ValueError, "per_channel"),
    (lambda: vq.k_group_scales(1.0, torch.zeros(3), group=4), ValueError, "per_block"),
    (lambda: vq.k_group_scales(1.0, torch.rand(3), group=0), ValueError, "group"),
    (lambda: vq.error_budget({}), TypeError, "errors"),
    (lambda: vq.error_budget({"a": {"x": 0.1}, "b": {"y": 0.1}}), ValueError, "errors"),
    (lambda: vq.error_budget({"a": {"x": -0.1}}), ValueError, "errors"),
    (lambda: vq.fp8_latency(RUN, ceilings=CEIL), TypeError, "runs"),
    (lambda: vq.fp8_latency([RUN], ceilings={"copy_TBps": 1.0, "matmul_TFLOPs": 1.0}), ValueError,
     "fp8_matmul_TFLOPs"),
    (lambda: vq.fp8_latency([RUN], ceilings=CEIL, tps=[0]), ValueError, r"tps\[0\]"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()

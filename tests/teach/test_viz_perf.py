"""moe_lib.teach.viz.perf: each figure function returns a Figure, keeps pyplot's global state untouched, draws what
the data says (points on the roof where a run sits exactly at its floor, % of floor = floor / µs), draws
the same picture for the same inputs, and rejects bad input by name. The recorded files of data/bench/
that notebook 07 reads are drawn too."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from moe_lib.kernels.configs import load_config_table
from moe_lib.perf.floors import MIXTRAL, floor_us
from moe_lib.teach.viz import perf as vp

DATA = Path(__file__).resolve().parents[2] / "data" / "bench"
CEIL = {"copy_TBps": 3.0, "matmul_TFLOPs": 780.0}
IMPLS = ("moe_lib", "grouped_mm", "loop")


pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def _run(gen: torch.Generator, tps=(1, 8), ms=(1, 4, 64, 1024), slack=None, gpu="GPU A") -> dict:
    """A recorded run: each impl's µs is its floor times a random (or given) slack >= 1."""
    records = []
    for tp in tps:
        for m in ms:
            fl = floor_us(m, tp, CEIL)["floor_us"]
            for impl in IMPLS:
                s = slack if slack is not None else 1.0 + 3.0 * torch.rand((), generator=gen).item()
                records.append({"tp": tp, "M": m, "impl": impl, "us": fl * s, "config": None, "floor_us": fl})
    return {"gpu": gpu, "ceilings": dict(CEIL), "shape": dict(MIXTRAL, dtype="bfloat16"), "records": records}


def _reference(tps=(1, 8), ms=(1, 4, 64, 1024)) -> dict:
    records = [{"tp": tp, "M": m, "impl": "vllm", "us": 2.0 * floor_us(m, tp, CEIL)["floor_us"]}
               for tp in tps for m in ms]
    return {"gpu": "GPU A", "records": records}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def _labels(ax) -> list[str]:
    return [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]


# ----------------------------------------------------------------------------------------------------
# Floors
# ----------------------------------------------------------------------------------------------------
def _compute_wins(m: int, tp: int = 1, ceilings=CEIL) -> bool:
    f = floor_us(m, tp, ceilings)
    return f["compute_us"] >= f["memory_us"]


@pytest.mark.parametrize("ceilings", [CEIL, {"copy_TBps": 4.2, "matmul_TFLOPs": 790.0}, {"copy_TBps": 1.0,
                                                                                          "matmul_TFLOPs": 1.0}])
def test_ridge_tokens_is_the_crossing(ceilings):
    ridge = vp.ridge_tokens(ceilings)
    for tp in (1, 2, 4, 8):  # both floors scale as 1/tp: the crossing does not move
        assert _compute_wins(ridge, tp, ceilings)
        assert ridge == 1 or not _compute_wins(ridge - 1, tp, ceilings)


def test_ridge_tokens_all_experts_touched():
    # Far above M = 16 every expert is touched: the ridge is where M k / E = peak / bandwidth.
    ridge = vp.ridge_tokens(CEIL)
    assert abs(ridge - CEIL["matmul_TFLOPs"] / CEIL["copy_TBps"] * MIXTRAL["num_experts"] / MIXTRAL["top_k"]) <= 1


def test_floor_vs_tokens():
    fig = vp.floor_vs_tokens(CEIL, token_counts=[1, 16, 4096], tps=[1, 2, 8])
    ax_e, ax_t = fig.axes
    assert isinstance(fig, Figure)
    assert len(ax_t.lines) == 2 * 3 + 1  # memory and compute per TP, the ridge
    mem = ax_t.lines[0]  # TP = 1, memory floor: starts at 2 experts' bytes / bandwidth
    assert mem.get_ydata()[0] == pytest.approx(floor_us(1, 1, CEIL)["memory_us"])
    touched = ax_e.lines[0].get_ydata()
    assert touched[0] == pytest.approx(2.0) and touched[-1] == pytest.approx(8.0)


# ----------------------------------------------------------------------------------------------------
# Roofline, latency, fractions
# ----------------------------------------------------------------------------------------------------
def test_roofline_points_at_the_floor_sit_on_the_roof(gen):
    run = _run(gen, slack=1.0)
    fig = vp.roofline(run, tps=(1, 8))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert _labels(ax)[:2] == ["roof (same run)", f"ridge {780.0 / 3.0:.0f} FLOP/B"]
        for line in ax.lines[2:]:
            x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
            np.testing.assert_allclose(y, np.minimum(CEIL["matmul_TFLOPs"], CEIL["copy_TBps"] * x), rtol=1e-9)


def test_roofline_impls_and_reference(gen):
    fig = vp.roofline(_run(gen), tps=(1, 8), reference=_reference(), label_ms=(1,))
    ax = fig.axes[0]
    assert _labels(ax)[2:] == ["moe_lib", "grouped_mm", "loop", vp.REFERENCE_LABEL]
    assert [t.get_text() for t in ax.texts] == ["M=1"]
    x = ax.lines[2].get_xdata()
    assert x[0] == pytest.approx(1.0)  # one token: 2 FLOPs per weight element of bf16 = 1 FLOP per byte
    assert list(x) == sorted(x)


def test_latency_vs_reference(gen):
    run = _run(gen)
    run["records"].append({"tp": 1, "M": 2, "impl": "loop", "us": None, "error": "x"})  # a failed point
    fig = vp.latency_vs_reference(run, _reference(), tps=(1, 8))
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert _labels(ax) == ["moe_lib", "grouped_mm", "loop", vp.REFERENCE_LABEL, "floor"]
    assert all(len(line.get_xdata()) == 4 for line in ax.lines)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == _labels(ax)
    ours = [r["us"] for r in run["records"] if r["tp"] == 1 and r["impl"] == "moe_lib" and r["us"]]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), ours)


def test_latency_without_reference(gen):
    fig = vp.latency_vs_reference(_run(gen), tps=(8,), impls=("moe_lib",))
    assert _labels(fig.axes[0]) == ["moe_lib", "floor"]


def test_floor_fraction(gen):
    a, b = _run(gen, slack=2.0), _run(gen, slack=1.25, gpu="GPU B")
    fig = vp.floor_fraction({"a": a, "b": b}, tps=(1, 8), reference=_reference())
    assert len(fig.axes) == 2
    ax = fig.axes[1]
    assert _labels(ax) == ["a", "b", vp.REFERENCE_LABEL]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 50.0)
    np.testing.assert_allclose(ax.lines[2].get_ydata(), 80.0)
    np.testing.assert_allclose(ax.lines[3].get_ydata(), 50.0)  # the reference takes 2x the first run's floor


def test_time_above_floor(gen):
    run = _run(gen, slack=1.5)
    fig = vp.time_above_floor(run, m=4, tps=(1, 8), reference=_reference())
    ax = fig.axes[0]
    floors, above = ax.containers
    for tp, f_bar, a_bar in zip((1, 8), floors, above, strict=True):
        fl = floor_us(4, tp, CEIL)["floor_us"]
        assert f_bar.get_height() == pytest.approx(fl)
        assert a_bar.get_height() == pytest.approx(0.5 * fl)
    assert "(33% of" in ax.texts[0].get_text()


def test_tile_shapes():
    table = load_config_table(8, 1792, "NVIDIA H100 80GB HBM3")
    default = {1: {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
                   "num_stages": 4}}
    fig = vp.tile_shapes(default, table, title="t")
    assert len(fig.axes) == 3
    n_panel = fig.axes[1]
    assert [len(line.get_xdata()) for line in n_panel.lines] == [1, len(table), len(table)]
    ms = sorted(table)
    assert list(n_panel.lines[2].get_ydata()) == [table[m]["down"]["BLOCK_SIZE_N"] for m in ms]
    assert list(n_panel.lines[1].get_ydata()) == [table[m]["BLOCK_SIZE_N"] for m in ms]


def test_same_inputs_draw_the_same_picture(gen):
    run, ref = _run(gen), _reference()
    for draw in (lambda: vp.roofline(run, tps=(1, 8), reference=ref),
                 lambda: vp.latency_vs_reference(run, ref, tps=(1, 8)),
                 lambda: vp.floor_fraction({"r": run}, tps=(1, 8), reference=ref),
                 lambda: vp.time_above_floor(run, tps=(1, 8)),
                 lambda: vp.floor_vs_tokens(CEIL)):
        assert _png(draw()) == _png(draw())


# ----------------------------------------------------------------------------------------------------
# Clocks and power
# ----------------------------------------------------------------------------------------------------
def _timed_run(gen) -> dict:
    """A run whose records were timed one after another, one second each, from t0_unix = 1000."""
    run = _run(gen, tps=(8,), ms=(64, 4096))
    for i, rec in enumerate(run["records"]):
        rec["t_s"] = float(i + 1)
    return run | {"t0_unix": 1000.0}


def _log(n=41, capped_from=20) -> dict:
    """Samples every 0.1 s from t = 0 to 4 s: 1980 MHz at 300 W, then 1500 MHz at 700 W with the cap bit set."""
    t = [1000.0 + 0.1 * i for i in range(n)]
    capped = [i >= capped_from for i in range(n)]
    return {"unix_s": t, "sm_clock_MHz": [1500.0 if c else 1980.0 for c in capped],
            "power_W": [700.0 if c else 300.0 for c in capped], "temperature_C": [50.0] * n,
            "throttle_reasons": [0x4 if c else 0 for c in capped]}


def test_power_trace_marks_the_capped_samples_and_the_points(gen):
    run = _timed_run(gen)
    fig = vp.power_trace(run, _log())
    ax_clock, ax_power = fig.axes
    assert len(ax_clock.collections[0].get_offsets()) == 21  # samples 20..40 carry the power-cap bit
    assert sorted(ax_power.collections[0].get_offsets()[:, 1]) == [700.0] * 21
    assert list(ax_clock.lines[0].get_xdata()) == pytest.approx([0.1 * i for i in range(41)])
    # moe_lib at M = 4096 is the 4th record: its span runs from t_s 3 to 4 (a Rectangle in newer matplotlib)
    spans = [(p.get_x(), p.get_x() + p.get_width()) if hasattr(p, "get_width")
             else (min(x for x, _ in p.get_xy()), max(x for x, _ in p.get_xy())) for p in ax_clock.patches]
    assert spans == [pytest.approx((3.0, 4.0))]
    assert ax_clock.texts[0].get_text() == "TP 8\nM 4096"
    assert _png(vp.power_trace(run, _log())) == _png(vp.power_trace(run, _log()))


# ----------------------------------------------------------------------------------------------------
# Bad input: a ValueError / TypeError that names the argument
# ----------------------------------------------------------------------------------------------------
_G = torch.Generator().manual_seed(0)
RUN = _run(_G)
REF = _reference()
CFG = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
       "num_stages": 4}


def _with(run: dict, **changes) -> dict:
    return {**run, **changes}


BAD = [
    (lambda: vp.ridge_tokens([3.0, 780.0]), TypeError, "ceilings"),
    (lambda: vp.ridge_tokens({"copy_TBps": 3.0}), ValueError, "matmul_TFLOPs"),
    (lambda: vp.ridge_tokens({"copy_TBps": -1.0, "matmul_TFLOPs": 1.0}), ValueError, "copy_TBps"),
    (lambda: vp.ridge_tokens({"copy_TBps": "3", "matmul_TFLOPs": 1.0}), TypeError, "copy_TBps"),
    (lambda: vp.ridge_tokens(CEIL, shape={"num_experts": 8}), ValueError, "shape"),
    (lambda: vp.floor_vs_tokens(CEIL, token_counts=[]), ValueError, "token_counts"),
    (lambda: vp.floor_vs_tokens(CEIL, token_counts=[0]), ValueError, r"token_counts\[0\]"),
    (lambda: vp.floor_vs_tokens(CEIL, tps=[3]), ValueError, "tps"),
    (lambda: vp.floor_vs_tokens(CEIL, tps=(1, 1)), ValueError, "tps"),
    (lambda: vp.roofline([RUN]), TypeError, "run"),
    (lambda: vp.roofline({"gpu": "g"}), ValueError, "run"),
    (lambda: vp.roofline(_with(RUN, ceilings={"copy_TBps": 1.0})), ValueError, r"run\['ceilings'\]"),
    (lambda: vp.roofline(_with(RUN, records=[{"tp": 1}])), ValueError, r"run\['records'\]\[0\]"),
    (lambda: vp.roofline(_with(RUN, records=[{"tp": 1, "M": 1, "impl": "x", "us": -1.0}])), ValueError,
     r"run\['records'\]\[0\]\['us'\]"),
    (lambda: vp.roofline(_with(RUN, records=[{"tp": 1, "M": 1.5, "impl": "x", "us": 1.0}])), TypeError,
     r"\['M'\]"),
    (lambda: vp.roofline(RUN, tps=(2,)), ValueError, "tps"),
    (lambda: vp.roofline(RUN, impls="moe_lib"), TypeError, "impls"),
    (lambda: vp.roofline(RUN, reference=[1]), TypeError, "reference"),
    (lambda: vp.roofline(RUN, reference={"gpu": "g"}), ValueError, "reference"),
    (lambda: vp.roofline(RUN, label_ms=(0,)), ValueError, r"label_ms\[0\]"),
    (lambda: vp.latency_vs_reference(RUN, {"gpu": "g", "records": [{"tp": 1}]}), ValueError,
     r"reference\['records'\]\[0\]"),
    (lambda: vp.latency_vs_reference(RUN, tps=[]), ValueError, "tps"),
    (lambda: vp.floor_fraction([RUN]), TypeError, "runs"),
    (lambda: vp.floor_fraction({}), ValueError, "runs"),
    (lambda: vp.floor_fraction({1: RUN}), TypeError, "runs key"),
    (lambda: vp.floor_fraction({"a": {"gpu": "g"}}), ValueError, r"runs\['a'\]"),
    (lambda: vp.floor_fraction({"a": RUN}, impl=3), TypeError, "impl"),
    (lambda: vp.time_above_floor(RUN, m=2), ValueError, "m"),
    (lambda: vp.time_above_floor(RUN, m=0), ValueError, "m"),
    (lambda: vp.time_above_floor(RUN, tps=(1, 4)), ValueError, "m"),
    (lambda: vp.tile_shapes([], {1: CFG}), TypeError, "default"),
    (lambda: vp.tile_shapes({1: CFG}, {}), ValueError, "tuned"),
    (lambda: vp.tile_shapes({1: CFG}, {"1": CFG}), TypeError, "tuned key"),
    (lambda: vp.tile_shapes({1: CFG}, {4: {**CFG, "BLOCK_SIZE_N": 48}}), ValueError, r"tuned\[4\]"),
    (lambda: vp.tile_shapes({1: CFG}, {4: {**CFG, "down": {"BLOCK_SIZE_M": 16}}}), ValueError, r"tuned\[4\]"),
    (lambda: vp.tile_shapes({1: CFG}, {1: CFG}, title=1), TypeError, "title"),
    (lambda: vp.power_trace(RUN | {"t0_unix": 0.0}, [1, 2]), TypeError, "log"),
    (lambda: vp.power_trace(RUN | {"t0_unix": 0.0}, {"unix_s": [0, 1]}), ValueError, "log lacks"),
    (lambda: vp.power_trace(RUN | {"t0_unix": 0.0}, _log() | {"power_W": [1.0]}), ValueError, "common length"),
    (lambda: vp.power_trace(RUN | {"t0_unix": 0.0}, _log() | {"power_W": "700"}), TypeError, r"log\['power_W'\]"),
    (lambda: vp.power_trace(RUN, _log()), ValueError, "t0_unix"),
    (lambda: vp.power_trace(RUN | {"t0_unix": 0.0}, _log()), ValueError, "mark_ms"),
    (lambda: vp.power_trace(RUN | {"t0_unix": 0.0}, _log(), mark_ms=[0]), ValueError, r"mark_ms\[0\]"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


# ---- the GPU tools behind the recorded files (run on the device machine) ------------------------------


# ---- between_rows: the lookup between two table rows ------------------------------------------------------
ROWS = [{"tp": tp, "M": m, "below": b, "above": a, "us_below": ub, "us_above": ua, "nearest": b, "nearest_log": a}
        for tp in (1, 8) for m, b, a, ub, ua in ((3, 2, 4, 10.0, 9.0), (640, 512, 768, 20.0, 21.0))]


def test_between_rows_draws_each_rule_per_tp():
    fig = vp.between_rows(ROWS)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["TP = 1", "TP = 8"]
    lines = axes[0].get_lines()
    assert len(lines) == 2
    # M = 3: the row below (difference rule) is 1/9 slower than the row above; M = 640: the ratio rule 5 % slower
    assert list(lines[0].get_ydata()) == pytest.approx([100 / 9, 0.0])
    assert list(lines[1].get_ydata()) == pytest.approx([0.0, 5.0])


@pytest.mark.parametrize("rows,exc,match", [
    ([], TypeError, "rows"),
    ([{"tp": 1}], ValueError, "lacks"),
    ([{**ROWS[0], "us_below": 0}], ValueError, "us_below"),
    ([{**ROWS[0], "nearest": 5}], ValueError, "nearest"),
    (["x"], TypeError, r"rows\[0\]"),
])
def test_between_rows_refuses_bad_rows(rows, exc, match):
    with pytest.raises(exc, match=match):
        vp.between_rows(rows)

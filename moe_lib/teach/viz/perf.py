"""Figures for notebook 07 (performance).

The inputs are the recorded benchmark results of ``data/bench/`` as loaded from JSON: a *run* is a dict
with ``gpu``, ``ceilings`` (``copy_TBps``, ``matmul_TFLOPs``), optionally ``shape``, and ``records`` of
``{"tp", "M", "impl", "us", "floor_us"}`` (``us`` None for a point that failed); a *reference* is a dict
with ``gpu`` and ``records`` of ``{"tp", "M", "us"}`` (vLLM's numbers, timed elsewhere).

    ridge_tokens           the batch size M at which the compute floor overtakes the memory floor
    floor_vs_tokens        experts touched, and the memory / compute floors, against M
    roofline               recorded points on the roofline of their own run's ceilings
    latency_vs_reference   µs per layer call against M, per TP: ours, the peers, the reference, the floor
    floor_fraction         % of the floor reached against M, for several runs (and the reference)
    time_above_floor       at one M: the floor and the time spent above it, per TP
    power_trace            the SM clock and power draw through a bench run, the large-M points shaded
    tile_shapes            BLOCK_SIZE_M / N / K against M: a default heuristic against a tuned table
    between_rows           between two table rows: how much slower each lookup rule's pick was than the faster
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..._validate import check_int
from ...kernels.configs import split_config
from ...perf.bench import IMPLS, M_VALUES, TP_VALUES
from ...perf.floors import MIXTRAL, expected_experts_touched, floor_us
from ...perf.power import POWER_CAP_BIT
from .style import (
    GUIDE,
    IMPL_COLORS,
    OTHER,
    PLAIN,
    REFERENCE_COLOR,
    check_str,
    figure_legend,
    int_list,
    is_number,
    log_axes,
    series_colors,
    tp_colors,
)

#: The legend entry of the reference implementation (vLLM) in every figure.
REFERENCE_LABEL = "vLLM (reference)"
_SHAPE_KEYS = ("num_experts", "top_k", "hidden", "intermediate")
_BLOCK_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K")


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------
def _str_list(name: str, values) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of str, got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} must hold at least one value")
    return [check_str(f"{name}[{i}]", v) for i, v in enumerate(values)]


def _check_ceilings(name: str, ceilings) -> dict[str, float]:
    if not isinstance(ceilings, Mapping):
        raise TypeError(f"{name} must be a dict with copy_TBps and matmul_TFLOPs, got {type(ceilings).__name__}")
    out = {}
    for key in ("copy_TBps", "matmul_TFLOPs"):
        if key not in ceilings:
            raise ValueError(f"{name} lacks {key!r}")
        value = ceilings[key]
        if not is_number(value):
            raise TypeError(f"{name}[{key!r}] must be a number, got {type(value).__name__}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}[{key!r}] must be a finite number > 0, got {value}")
        out[key] = float(value)
    return out


def _check_shape(name: str, shape) -> dict[str, int]:
    if not isinstance(shape, Mapping):
        raise TypeError(f"{name} must be a dict with {', '.join(_SHAPE_KEYS)}, got {type(shape).__name__}")
    missing = [key for key in _SHAPE_KEYS if key not in shape]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    out = {key: check_int(f"{name}[{key!r}]", shape[key], low=1) for key in _SHAPE_KEYS}
    if out["top_k"] > out["num_experts"]:
        raise ValueError(f"{name}: top_k ({out['top_k']}) must be <= num_experts ({out['num_experts']})")
    return out


def _check_records(name: str, records, *, need_impl: bool) -> list[Mapping]:
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"{name} must be a list of dicts, got {type(records).__name__}")
    keys = {"tp", "M", "us"} | ({"impl"} if need_impl else set())
    for j, rec in enumerate(records):
        if not isinstance(rec, Mapping) or not keys <= set(rec):
            raise ValueError(f"{name}[{j}] must be a dict with {', '.join(sorted(keys))}")
        check_int(f"{name}[{j}]['tp']", rec["tp"], low=1)
        check_int(f"{name}[{j}]['M']", rec["M"], low=1)
        us = rec["us"]
        if us is not None and not (is_number(us) and math.isfinite(us) and us > 0):
            raise ValueError(f"{name}[{j}]['us'] must be a number > 0 or None, got {us!r}")
        floor = rec.get("floor_us")
        if floor is not None and not (is_number(floor) and math.isfinite(floor) and floor > 0):
            raise ValueError(f"{name}[{j}]['floor_us'] must be a number > 0 or None, got {floor!r}")
    return list(records)


def _check_run(name: str, run) -> Mapping:
    """A recorded benchmark run (data/bench/<gpu>.json)."""
    if not isinstance(run, Mapping):
        raise TypeError(f"{name} must be a benchmark result (a dict), got {type(run).__name__}")
    missing = [key for key in ("gpu", "ceilings", "records") if key not in run]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    check_str(f"{name}['gpu']", run["gpu"])
    _check_ceilings(f"{name}['ceilings']", run["ceilings"])
    _check_shape(f"{name}['shape']", run.get("shape", MIXTRAL))
    _check_records(f"{name}['records']", run["records"], need_impl=True)
    return run


def _check_reference(name: str, reference) -> Mapping | None:
    if reference is None:
        return None
    if not isinstance(reference, Mapping):
        raise TypeError(f"{name} must be a dict with gpu and records, got {type(reference).__name__}")
    missing = [key for key in ("gpu", "records") if key not in reference]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    check_str(f"{name}['gpu']", reference["gpu"])
    _check_records(f"{name}['records']", reference["records"], need_impl=False)
    return reference


def _check_tps_in(name: str, tps: list[int], run: Mapping, run_name: str) -> None:
    present = {rec["tp"] for rec in run["records"]}
    absent = [tp for tp in tps if tp not in present]
    if absent:
        raise ValueError(f"{name}: {run_name} holds no records for TP {absent} (it has {sorted(present)})")


# ----------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------
def _shape(run: Mapping) -> dict[str, int]:
    return {key: int(v) for key, v in run.get("shape", MIXTRAL).items() if key in _SHAPE_KEYS}


def _series(records: Sequence[Mapping], tp: int, impl: str | None = None) -> np.ndarray:
    """(n, 2) sorted (M, us) of the timed records at this TP (and impl, when given)."""
    pts = sorted((rec["M"], float(rec["us"])) for rec in records
                 if rec["tp"] == tp and rec["us"] is not None and (impl is None or rec.get("impl") == impl))
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _floors(run: Mapping) -> dict[tuple[int, int], float]:
    """(tp, M) -> the run's recorded floor in µs (computed from its ceilings where a record lacks one), at
    every (tp, M) with a timed record."""
    ceilings, shape = run["ceilings"], _shape(run)
    timed = [rec for rec in run["records"] if rec["us"] is not None]
    out = {}
    for rec in timed:
        key = (rec["tp"], rec["M"])
        if rec.get("floor_us") is not None:
            out.setdefault(key, float(rec["floor_us"]))
    for rec in timed:
        key = (rec["tp"], rec["M"])
        if key not in out:
            out[key] = floor_us(rec["M"], rec["tp"], ceilings, shape)["floor_us"]
    return out


def _impl_order(records: Sequence[Mapping], impls: Sequence[str]) -> list[str]:
    present = {rec["impl"] for rec in records if rec["us"] is not None}
    return [impl for impl in impls if impl in present]


def _panels(fig: Figure, count: int, *, ncols: int | None = None, sharey: bool = False) -> list:
    ncols = ncols or (count if count <= 2 else 2)
    nrows = math.ceil(count / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).flatten()
    for ax in axes[count:]:
        ax.set_visible(False)
    return list(axes[:count])


# ----------------------------------------------------------------------------------------------------
# Floors
# ----------------------------------------------------------------------------------------------------
def ridge_tokens(ceilings: Mapping[str, float], *, shape: Mapping[str, int] = MIXTRAL) -> int:
    """The smallest M whose compute floor (FLOPs / matmul rate) is at least its memory floor (weight bytes
    / copy bandwidth). Both floors scale as 1/tp, so the answer is the same for every TP."""
    ceilings = _check_ceilings("ceilings", ceilings)
    shape = _check_shape("shape", shape)

    def compute_wins(m: int) -> bool:
        f = floor_us(m, 1, ceilings, shape)
        return f["compute_us"] >= f["memory_us"]

    hi = 1
    while not compute_wins(hi):
        hi *= 2
        if hi > 1 << 40:
            raise ValueError("ceilings: the compute floor never reaches the memory floor")
    lo = hi // 2  # compute_wins(lo) is False (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if compute_wins(mid) else (mid, hi)
    return hi


def floor_vs_tokens(
    ceilings: Mapping[str, float],
    *,
    token_counts: Sequence[int] = M_VALUES,
    tps: Sequence[int] = TP_VALUES,
    shape: Mapping[str, int] = MIXTRAL,
) -> Figure:
    """Left: the expected number of experts that M uniformly routed tokens touch. Right: per TP, the memory
    floor (touched experts' weight bytes / copy bandwidth, solid) and the compute floor (FLOPs / matmul
    rate, dashed) against M; the floor of a point is the larger of the two. The dotted line marks the
    ridge M (:func:`ridge_tokens`), where the two cross."""
    ceilings = _check_ceilings("ceilings", ceilings)
    shape = _check_shape("shape", shape)
    ms = sorted(int_list("token_counts", token_counts, low=1, distinct=True))
    tps = int_list("tps", tps, low=1, distinct=True)
    for tp in tps:
        if shape["intermediate"] % tp:
            raise ValueError(f"tps: {tp} does not divide shape['intermediate'] = {shape['intermediate']}")
    e, k = shape["num_experts"], shape["top_k"]
    m = np.array(ms, dtype=np.float64)  # (n,)
    fine = np.unique(np.round(np.geomspace(ms[0], ms[-1], 200)).astype(np.int64))  # (f,) for smooth curves

    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    ax_e, ax_t = fig.subplots(1, 2, width_ratios=(1, 1.35))
    touched = np.array([expected_experts_touched(int(x), e, k) for x in fine])  # (f,)
    ax_e.plot(fine, touched, color="tab:blue", label="expected experts touched")
    ax_e.plot(m, [expected_experts_touched(int(x), e, k) for x in ms], "o", color="tab:blue", markersize=3)
    ax_e.axhline(k, color=GUIDE, linestyle=":", linewidth=1, label=f"top_k = {k} (one token)")
    ax_e.axhline(e, color=GUIDE, linestyle="--", linewidth=1, label=f"all E = {e} experts")
    log_axes(ax_e, y_log=False)
    ax_e.set_ylim(0, e * 1.12)
    ax_e.set(xlabel="tokens per call, M", ylabel="experts", title=f"Experts touched (E = {e}, top-{k})")
    ax_e.legend(fontsize=8, loc="center right")

    colors = tp_colors(tps)
    for tp in tps:
        f = [floor_us(int(x), tp, ceilings, shape) for x in fine]
        ax_t.plot(fine, [p["memory_us"] for p in f], color=colors[tp], label=f"TP = {tp}")
        ax_t.plot(fine, [p["compute_us"] for p in f], color=colors[tp], linestyle="--", label="_compute")
    ridge = ridge_tokens(ceilings, shape=shape)
    if ms[0] <= ridge <= ms[-1]:
        ax_t.axvline(ridge, color=GUIDE, linestyle=":", linewidth=1)
        ax_t.text(ridge, 0.02, f" ridge M ≈ {ridge}", transform=ax_t.get_xaxis_transform(), fontsize=8)
    log_axes(ax_t)
    ax_t.set(xlabel="tokens per call, M", ylabel="µs per layer call",
             title=f"Floors: copy {ceilings['copy_TBps']:.2f} TB/s, matmul {ceilings['matmul_TFLOPs']:.0f} TFLOP/s")
    handles, labels = ax_t.get_legend_handles_labels()
    handles += [Line2D([], [], color=OTHER), Line2D([], [], color=OTHER, linestyle="--")]
    labels += ["memory floor (weights / bandwidth)", "compute floor (FLOPs / peak)"]
    ax_t.legend(handles, labels, fontsize=7, loc="upper left", ncol=2)
    return fig


# ----------------------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------------------
def roofline(
    run: Mapping,
    *,
    tps: Sequence[int] = TP_VALUES,
    impls: Sequence[str] = IMPLS,
    reference: Mapping | None = None,
    label_ms: Sequence[int] = (1, 64, 1024, 4096),
) -> Figure:
    """Each recorded point at x = FLOPs per byte of expert weights read, y = achieved TFLOP/s (log-log).

    FLOPs and weight bytes are those of :func:`moe_lib.perf.floors.floor_us` (expected experts touched, read
    once); the roof is min(matmul rate, copy bandwidth x intensity) with both ceilings from the same run.
    A point's height under the roof is its fraction of the floor. One panel per TP; the points of
    ``impls[0]`` are labelled with their M where M is in ``label_ms``; ``reference`` points (timed in another
    run, on the same kind of card) are drawn against this run's roof.
    """
    run = _check_run("run", run)
    tps = int_list("tps", tps, low=1, distinct=True)
    impls = _str_list("impls", impls)
    reference = _check_reference("reference", reference)
    empty = isinstance(label_ms, Sequence) and not isinstance(label_ms, (str, bytes)) and len(label_ms) == 0
    label_ms = set() if empty else set(int_list("label_ms", label_ms, low=1, distinct=True))
    _check_tps_in("tps", tps, run, "run")
    ceilings, shape = _check_ceilings("run['ceilings']", run["ceilings"]), _shape(run)
    peak, bandwidth = ceilings["matmul_TFLOPs"], ceilings["copy_TBps"]

    def point(tp: int, m: int, us: float) -> tuple[float, float]:
        f = floor_us(m, tp, ceilings, shape)
        return f["flops"] / f["weight_bytes"], f["flops"] / us / 1e6

    fig = Figure(figsize=(9.0, 3.2 * math.ceil(len(tps) / 2) + 0.5), layout="constrained")
    axes = _panels(fig, len(tps), sharey=True)
    xs_all = [point(rec["tp"], rec["M"], 1.0)[0] for rec in run["records"]]
    lo, hi = min(xs_all) / 1.6, max(xs_all) * 1.6
    roof_x = np.geomspace(lo, hi, 256)  # (256,)
    ridge = peak / bandwidth
    for ax, tp in zip(axes, tps, strict=True):
        ax.plot(roof_x, np.minimum(peak, bandwidth * roof_x), color=GUIDE, linewidth=1.5, label="roof (same run)")
        ax.axvline(ridge, color=GUIDE, linestyle=":", linewidth=1, label=f"ridge {ridge:.0f} FLOP/B")
        for impl in _impl_order(run["records"], impls):
            pts = _series(run["records"], tp, impl)
            if not len(pts):
                continue
            xy = np.array([point(tp, int(m_), us) for m_, us in pts])  # (n, 2)
            ax.plot(xy[:, 0], xy[:, 1], marker="o", markersize=3.5, linewidth=1, color=IMPL_COLORS.get(impl),
                    label=impl)
            if impl == impls[0]:
                for (m_, _us), (x, y) in zip(pts, xy, strict=True):
                    if int(m_) in label_ms:
                        ax.annotate(f"M={int(m_)}", (x, y), textcoords="offset points", xytext=(-4, 6),
                                    fontsize=7, ha="right", color=IMPL_COLORS.get(impl, GUIDE))
        if reference is not None:
            pts = _series(reference["records"], tp)
            if len(pts):
                xy = np.array([point(tp, int(m_), us) for m_, us in pts])
                ax.plot(xy[:, 0], xy[:, 1], marker="x", markersize=5, linewidth=0.8, linestyle="--",
                        color=REFERENCE_COLOR, label=REFERENCE_LABEL)
        log_axes(ax, x_base=10)
        ax.set_xlim(lo, hi)
        ax.set(xlabel="FLOPs per byte of expert weights", ylabel="TFLOP/s", title=f"TP = {tp}")
    fig.suptitle(f"Roofline, {run['gpu']}: copy {bandwidth:.2f} TB/s, bf16 matmul {peak:.0f} TFLOP/s", fontsize=10)
    figure_legend(fig, axes)
    return fig


# ----------------------------------------------------------------------------------------------------
# Latency and efficiency against M
# ----------------------------------------------------------------------------------------------------
def latency_vs_reference(
    run: Mapping,
    reference: Mapping | None = None,
    *,
    tps: Sequence[int] = TP_VALUES,
    impls: Sequence[str] = IMPLS,
) -> Figure:
    """µs per layer call against M (log-log), one panel per TP: each implementation of ``run``, the
    ``reference`` (vLLM, black), and the run's floor (dashed)."""
    run = _check_run("run", run)
    reference = _check_reference("reference", reference)
    tps = int_list("tps", tps, low=1, distinct=True)
    impls = _str_list("impls", impls)
    _check_tps_in("tps", tps, run, "run")
    floors = _floors(run)
    fig = Figure(figsize=(9.0, 3.1 * math.ceil(len(tps) / 2) + 0.5), layout="constrained")
    axes = _panels(fig, len(tps))
    for ax, tp in zip(axes, tps, strict=True):
        for impl in _impl_order(run["records"], impls):
            pts = _series(run["records"], tp, impl)
            if len(pts):
                ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=3, color=IMPL_COLORS.get(impl), label=impl)
        if reference is not None:
            pts = _series(reference["records"], tp)
            if len(pts):
                ax.plot(pts[:, 0], pts[:, 1], marker="s", markersize=4, color=REFERENCE_COLOR,
                        label=REFERENCE_LABEL)
        floor = np.array(sorted((m_, us) for (t, m_), us in floors.items() if t == tp)).reshape(-1, 2)
        ax.plot(floor[:, 0], floor[:, 1], linestyle="--", color=GUIDE, linewidth=1, label="floor")
        log_axes(ax)
        ax.set(xlabel="tokens per call, M", ylabel="µs per layer call", title=f"TP = {tp}")
    title = f"{run['gpu']}" + (f"; reference: {reference['gpu']}" if reference is not None else "")
    fig.suptitle(f"Whole-layer latency, bf16 Mixtral ({title})", fontsize=10)
    figure_legend(fig, axes)
    return fig


def floor_fraction(
    runs: Mapping[str, Mapping],
    *,
    tps: Sequence[int] = TP_VALUES,
    impl: str = "moe_lib",
    reference: Mapping | None = None,
) -> Figure:
    """% of the floor reached (100 x floor / µs) against M, one panel per TP, one line per labelled run
    (each against its own floor). ``reference`` points are measured against the floor of the first run
    (the same kind of card is assumed). 100 % is the dotted line: the copy ceiling counts bytes read and
    written, so a kernel that mostly reads may cross it slightly."""
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a dict label -> benchmark result, got {type(runs).__name__}")
    if len(runs) == 0:
        raise ValueError("runs must hold at least one benchmark result")
    checked = {}
    for label, run in runs.items():
        check_str("runs key", label)
        checked[label] = _check_run(f"runs[{label!r}]", run)
    reference = _check_reference("reference", reference)
    tps = int_list("tps", tps, low=1, distinct=True)
    check_str("impl", impl)
    first = next(iter(checked))
    _check_tps_in("tps", tps, checked[first], f"runs[{first!r}]")
    colors = series_colors(len(checked))

    fig = Figure(figsize=(min(11.0, 2.6 * len(tps) + 0.8), 3.4), layout="constrained")
    axes = _panels(fig, len(tps), ncols=len(tps), sharey=True)
    top = 100.0
    for ax, tp in zip(axes, tps, strict=True):
        ax.axhline(100, color=GUIDE, linestyle=":", linewidth=1)
        for i, (label, run) in enumerate(checked.items()):
            floors = _floors(run)
            pts = _series(run["records"], tp, impl)
            if not len(pts):
                continue
            pct = [100 * floors[(tp, int(m_))] / us for m_, us in pts]
            top = max(top, *pct)
            ax.plot(pts[:, 0], pct, marker="o", markersize=3, color=colors[i], label=label)
        if reference is not None:
            floors = _floors(checked[first])
            pts = [(m_, us) for m_, us in _series(reference["records"], tp) if (tp, int(m_)) in floors]
            if pts:
                ax.plot([p[0] for p in pts], [100 * floors[(tp, int(m_))] / us for m_, us in pts], marker="s",
                        markersize=3.5, linestyle="--", color=REFERENCE_COLOR, label=REFERENCE_LABEL)
        log_axes(ax, y_log=False)
        ax.set(xlabel="tokens per call, M", title=f"TP = {tp}")
    for ax in axes:
        ax.set_ylim(0, 10 * math.ceil(top * 1.05 / 10))
    axes[0].set_ylabel("% of the floor")
    fig.suptitle(f"Share of the floor reached by {impl}", fontsize=10)
    figure_legend(fig, axes)
    return fig


def time_above_floor(
    run: Mapping,
    *,
    m: int = 1,
    tps: Sequence[int] = TP_VALUES,
    impl: str = "moe_lib",
    reference: Mapping | None = None,
) -> Figure:
    """At one batch size ``m``: per TP, a bar of the floor (grey) with the time ``impl`` spends above it
    stacked on top (labelled in µs and as a share of the call); the reference's time as a black tick."""
    run = _check_run("run", run)
    check_int("m", m, low=1)
    tps = int_list("tps", tps, low=1, distinct=True)
    check_str("impl", impl)
    reference = _check_reference("reference", reference)
    floors = _floors(run)
    ours = {(rec["tp"], rec["M"]): float(rec["us"]) for rec in run["records"]
            if rec["impl"] == impl and rec["us"] is not None}
    absent = [tp for tp in tps if (tp, m) not in ours]
    if absent:
        raise ValueError(f"m: run holds no timed {impl} record at M = {m} for TP {absent}")
    ref = {} if reference is None else {(rec["tp"], rec["M"]): float(rec["us"]) for rec in reference["records"]
                                        if rec["us"] is not None}

    fig = Figure(figsize=(1.6 * len(tps) + 3.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(tps))
    floor = np.array([floors[(tp, m)] for tp in tps])  # (n,)
    total = np.array([ours[(tp, m)] for tp in tps])  # (n,)
    above = np.maximum(total - floor, 0.0)
    ax.bar(x, np.minimum(floor, total), width=0.6, color="0.75", label="floor")
    ax.bar(x, above, bottom=np.minimum(floor, total), width=0.6, color=IMPL_COLORS.get(impl, "tab:blue"),
           label=f"{impl}: time above the floor")
    ref_at = [ref.get((tp, m)) for tp in tps]
    if any(r is not None for r in ref_at):
        pts = [(i, r) for i, r in enumerate(ref_at) if r is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", marker="_", markersize=26,
                markeredgewidth=2, color=REFERENCE_COLOR, label=REFERENCE_LABEL)
    heights = [max(t_, r or 0.0) for t_, r in zip(total, ref_at, strict=True)]
    for i, (f_, t_) in enumerate(zip(floor, total, strict=True)):
        text = f"+{t_ - f_:.1f} µs\n({(t_ - f_) / t_:.0%} of {t_:.0f})" if t_ > f_ else f"{t_ - f_:.1f} µs"
        ax.text(i, heights[i] + 0.02 * max(heights), text, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"TP = {tp}" for tp in tps])
    ax.set_ylim(0, 1.25 * max(heights))
    ax.set_ylabel("µs per layer call")
    ax.set_title(f"M = {m}: the floor and what is paid above it ({run['gpu']})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


# ----------------------------------------------------------------------------------------------------
# Clocks and power
# ----------------------------------------------------------------------------------------------------
_LOG_KEYS = ("unix_s", "sm_clock_MHz", "power_W", "throttle_reasons")


def _check_power_log(name: str, log) -> dict[str, np.ndarray]:
    if not isinstance(log, Mapping):
        raise TypeError(f"{name} must be a dict of columns (perf.power.read_power_log), got {type(log).__name__}")
    missing = [key for key in _LOG_KEYS if key not in log]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    cols = {}
    for key in _LOG_KEYS:
        values = log[key]
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or \
                not all(is_number(v) and math.isfinite(v) for v in values):
            raise TypeError(f"{name}[{key!r}] must be a list of finite numbers")
        cols[key] = np.asarray(values, dtype=np.float64)
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1 or lengths.pop() < 2:
        raise ValueError(f"{name}: the columns must have one common length of at least 2")
    return cols


def power_trace(run: Mapping, log: Mapping, *, impl: str = "moe_lib", mark_ms: Sequence[int] = (4096,)) -> Figure:
    """The card's SM clock (top) and power draw (bottom) through a bench run, from a power log taken during it
    (``bench --power-log``; samples at the power limit in red), with the timed span of each ``impl`` point at
    the batch sizes ``mark_ms`` shaded and labelled by TP. Needs the run's ``t0_unix`` and records' ``t_s``."""
    run = _check_run("run", run)
    cols = _check_power_log("log", log)
    check_str("impl", impl)
    mark_ms = int_list("mark_ms", mark_ms, low=1, distinct=True)
    t0 = run.get("t0_unix")
    if not is_number(t0):
        raise ValueError("run['t0_unix'] must be a number (a bench run recorded with t0_unix and t_s)")
    ends = sorted(float(rec["t_s"]) for rec in run["records"] if is_number(rec.get("t_s")))
    marked = [rec for rec in run["records"] if rec["impl"] == impl and rec["M"] in mark_ms and rec["us"] is not None]
    if not marked or not all(is_number(rec.get("t_s")) for rec in marked):
        raise ValueError(f"mark_ms: run holds no timed {impl} record with t_s at M in {mark_ms}")

    t = cols["unix_s"] - t0
    capped = (cols["throttle_reasons"].astype(np.int64) & POWER_CAP_BIT) != 0
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax_clock, ax_power = fig.subplots(2, 1, sharex=True)
    for ax, key, label in ((ax_clock, "sm_clock_MHz", "SM clock (MHz)"), (ax_power, "power_W", "power draw (W)")):
        ax.plot(t, cols[key], color="0.55", linewidth=1, zorder=2)
        ax.scatter(t[capped], cols[key][capped], s=9, color="tab:red", zorder=3,
                   label="held to the power limit" if ax is ax_clock else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for rec in marked:  # the point's span: from the end of the point timed before it to its own end
            end = float(rec["t_s"])
            start = max([e for e in ends if e < end], default=end - 1.0)
            ax.axvspan(start, end, color=IMPL_COLORS.get(impl, "tab:blue"), alpha=0.15, zorder=1)
            if ax is ax_clock:
                ax.text((start + end) / 2, 1.02, f"TP {rec['tp']}\nM {rec['M']}", transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=7)
    ax_power.set_xlabel("seconds into the run (t_s)")
    ax_clock.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{run['gpu']}: clock and power through the bench run; shaded: {impl} at M in {mark_ms}",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------
# Tuning
# ----------------------------------------------------------------------------------------------------
def _check_table(name: str, table) -> dict[int, tuple[dict, dict]]:
    if not isinstance(table, Mapping):
        raise TypeError(f"{name} must be a dict M -> kernel config, got {type(table).__name__}")
    if len(table) == 0:
        raise ValueError(f"{name} must hold at least one config")
    out = {}
    for m, cfg in table.items():
        check_int(f"{name} key", m, low=1)
        try:
            out[m] = split_config(cfg)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}[{m}]: {exc}") from None
    return dict(sorted(out.items()))


def tile_shapes(default: Mapping[int, Mapping], tuned: Mapping[int, Mapping], *, title: str | None = None) -> Figure:
    """BLOCK_SIZE_M, BLOCK_SIZE_N and BLOCK_SIZE_K against M (one panel each, log-log): the ``default``
    heuristic's configs (grey, dashed) and the ``tuned`` table's, for GEMM1 (x w13) and for GEMM2 (x w2,
    from the config's ``"down"`` overrides). Each argument maps M to a config as ``get_config`` returns it.
    The three lines are nudged a few per cent apart along M so that equal values stay visible."""
    default_cfg = _check_table("default", default)
    tuned_cfg = _check_table("tuned", tuned)
    if title is not None:
        check_str("title", title)
    fig = Figure(figsize=(10.5, 3.3), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    # (label, table, 0 = GEMM1 / 1 = GEMM2, x nudge so that coinciding points stay visible, style)
    lines = [
        ("default heuristic (both GEMMs)", default_cfg, 0, 0.93,
         dict(color=OTHER, linestyle="--", marker="s", markersize=4)),
        ("tuned, GEMM1 (x w13)", tuned_cfg, 0, 1.0, dict(color="tab:blue", marker="o", markersize=4)),
        ("tuned, GEMM2 (x w2)", tuned_cfg, 1, 1.07,
         dict(color="tab:orange", marker="^", markersize=4, linestyle=":")),
    ]
    for ax, key in zip(axes, _BLOCK_KEYS, strict=True):
        values = set()
        for label, table, which, nudge, style in lines:
            ms = list(table)
            ys = [table[m_][which][key] for m_ in ms]
            values.update(ys)
            ax.plot([m_ * nudge for m_ in ms], ys, label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.xaxis.set_major_formatter(PLAIN)
        ax.set_yticks(sorted(values), [str(v) for v in sorted(values)])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set(xlabel="tokens per call, M", ylabel=key, title=key)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    figure_legend(fig, axes, ncol=3)
    return fig


_ROW_KEYS = ("tp", "M", "below", "above", "us_below", "us_above")


def between_rows(rows: Sequence[Mapping], rules: Mapping[str, str] | None = None) -> Figure:
    """Off the grid of a tuned table: for each measured M (``tune --check-lookup`` rows: ``tp``, ``M``, the rows
    ``below`` and ``above`` it and the layer's µs with each), how much slower than the faster of the two the row
    each lookup rule picks is, per TP. ``rules``: the row keys holding each rule's pick -> its legend label."""
    rules = {"nearest": "nearest M (difference)", "nearest_log": "nearest M (ratio)"} if rules is None else rules
    if not isinstance(rules, Mapping) or not rules:
        raise TypeError("rules must be a non-empty dict: row key of a rule's pick -> label")
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        raise TypeError("rows must be a non-empty list of dicts (tune --check-lookup rows)")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [key for key in (*_ROW_KEYS, *rules) if key not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks {missing}")
        for key in ("us_below", "us_above"):
            if not is_number(row[key]) or not row[key] > 0:
                raise ValueError(f"rows[{i}][{key!r}] must be a positive number of µs, got {row[key]!r}")
        for key in rules:
            if row[key] not in (row["below"], row["above"]):
                raise ValueError(f"rows[{i}][{key!r}] must be its row below or above, got {row[key]!r}")
    tps = sorted({row["tp"] for row in rows})
    fig = Figure(figsize=(2.7 * len(tps) + 1.0, 3.2), layout="constrained")
    axes = _panels(fig, len(tps), ncols=len(tps), sharey=True)
    markers = ("o", "x", "s", "^")
    for ax, tp in zip(axes, tps, strict=True):
        mine = sorted((row for row in rows if row["tp"] == tp), key=lambda row: row["M"])
        for (key, label), marker in zip(rules.items(), markers, strict=False):
            slower = [100 * ((row["us_below"] if row[key] == row["below"] else row["us_above"])
                             / min(row["us_below"], row["us_above"]) - 1) for row in mine]
            ax.plot([row["M"] for row in mine], slower, marker=marker, linestyle="none", label=label,
                    fillstyle="none" if marker == "o" else "full")
        log_axes(ax, y_log=False)
        ax.set(title=f"TP = {tp}", xlabel="tokens per call, M")
    axes[0].set_ylabel("% slower than the faster row")
    figure_legend(fig, axes, ncol=len(rules))
    return fig


__all__ = [
    "between_rows",
    "ridge_tokens",
    "floor_vs_tokens",
    "roofline",
    "latency_vs_reference",
    "floor_fraction",
    "time_above_floor",
    "power_trace",
    "tile_shapes",
]

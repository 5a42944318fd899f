"""The recorded GPU runs in data/bench/ that notebook 07 reads: they load, every figure draws them, the vLLM
reference holds its goal as its rule defines it, and every file is described in its folder's README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moe_lib.perf.bench import M_VALUES, TP_VALUES
from moe_lib.perf.floors import floor_us
from moe_lib.perf.power import read_power_log
from moe_lib.teach.viz import perf as vp

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "bench"
HISTORY = DATA / "history"
#: The whole-layer runs of history/ that notebook 07 compares, before and after each production change.
HISTORY_RUNS = ("default_configs_NVIDIA_H200", "before_tma_NVIDIA_H200", "before_ksum_NVIDIA_H200",
                "before_tma_NVIDIA_H100_80GB_HBM3", "before_ksum_NVIDIA_H100_80GB_HBM3", "NVIDIA_H100_80GB_HBM3",
                "before_fine_tables_NVIDIA_H200")
#: The printed tables of history/ that notebook 07 parses (bench --breakdown, and a repeat of bench).
HISTORY_TABLES = ("before_ksum_breakdown_H100.txt", "breakdown_H100.txt", "repeat_NVIDIA_H100_80GB_HBM3.txt",
                  "breakdown_H200.txt")

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _moe_lib_points(run: dict) -> set[tuple[int, int]]:
    return {(r["tp"], r["M"]) for r in run["records"] if r["impl"] == "moe_lib" and r["us"]}


def test_current_run_and_reference_draw():
    run, reference = _load(DATA / "NVIDIA_H200.json"), _load(DATA / "vllm_reference_H200.json")
    assert reference["source"].startswith("measured by the maintainers")
    assert reference["gpu"] == run["gpu"]
    assert {(r["tp"], r["M"]) for r in reference["records"]} <= _moe_lib_points(run)
    assert all(r.get("floor_us") for r in run["records"] if r["impl"] == "moe_lib")
    vp.roofline(run, reference=reference)
    vp.latency_vs_reference(run, reference)
    vp.floor_fraction({"run": run}, reference=reference)
    vp.time_above_floor(run, m=1, reference=reference)


def test_reference_goal_follows_its_rule():
    reference = _load(DATA / "vllm_reference_H200.json")
    terms, vllm = reference["goal_terms"], {(r["tp"], r["M"]): r["us"] for r in reference["records"]}
    goal = {(r["tp"], r["M"]): r["us"] for r in reference["goal_records"]}
    assert set(goal) == set(vllm)
    rates = {"copy_TBps": terms["bandwidth_TBps"], "matmul_TFLOPs": terms["matmul_TFLOPs"]}
    for (tp, m), us in goal.items():
        f = floor_us(m, tp, rates)
        candidates = [terms["vllm_factor"] * vllm[(tp, m)]]
        if m <= terms["bandwidth_max_M"]:
            candidates.append(f["memory_us"] / terms["bandwidth_efficiency"])
        if str(m) in terms["matmul_efficiency"]:
            candidates.append(f["compute_us"] / terms["matmul_efficiency"][str(m)])
        assert min(candidates) == pytest.approx(us, rel=1e-3), (tp, m)


def test_fp8_reference_loads():
    fp8 = _load(DATA / "vllm_reference_fp8_H200.json")
    assert fp8["source"].startswith("measured by the maintainers")
    impls = {r["impl"] for r in fp8["records"]}
    assert impls == {"vllm_bf16", "vllm_fp8_per_tensor", "vllm_fp8_block_128x128"}
    for impl in impls:
        assert {(r["tp"], r["M"]) for r in fp8["records"] if r["impl"] == impl} == \
            {(tp, m) for tp in TP_VALUES for m in (1, 4, 16, 64, 256, 1024, 4096)}


def test_history_runs_draw():
    runs = {name: _load(HISTORY / f"{name}.json") for name in HISTORY_RUNS}
    grid = {(tp, m) for tp in TP_VALUES for m in M_VALUES}
    for run in runs.values():
        assert _moe_lib_points(run) == grid
    vp.floor_fraction(runs)
    h100 = runs["NVIDIA_H100_80GB_HBM3"]
    vp.power_trace(h100, read_power_log(HISTORY / "power_NVIDIA_H100_80GB_HBM3.csv"))


def test_the_lookup_and_clear_measurements_draw():
    vp.between_rows(_load(HISTORY / "lookup_H200.json")["rows"])
    clear = _load(HISTORY / "clear_in_gemm1_H200.json")["repeat_retuned_tables"]
    assert {(r["tp"], r["M"]) for r in clear} == {(tp, m) for tp in TP_VALUES for m in (1, 4, 64, 512, 1024)}


def test_the_fp8_decode_measurement_has_what_notebook_11_reads():
    ab = _load(HISTORY / "fp8_decode_H200" / "ab.json")
    assert ab["gpu"] == "NVIDIA H200"
    variants = {"pdl_on", "new", "pdl_gemms_only"}
    one_token = {(r["tp"], r["scheme"]) for r in ab["rows"] if r["M"] == 1 and variants <= set(r)}
    assert one_token == {(tp, s) for tp in (1, 8) for s in ("tensor", "block")}
    keys = {"quant2_old_absmax", "quant2_new", "old_absmax", "new"}
    assert all(keys <= set(r) for r in ab["rows"] if r["scheme"] == "tensor")


def test_the_fp8_large_m_and_fused_quant_measurements_have_what_notebook_11_reads():
    tiles = _load(HISTORY / "fp8_large_m_H200" / "tiles.json")
    assert tiles["gpu"] == "NVIDIA H200"
    for row in tiles["rows"]:  # a time for each sum, with and without the fp32 adds, on every point
        for acc in (128, 0):
            assert any(k.endswith(f"_acc{acc}") and isinstance(v, float) for k, v in row.items()), (row["tp"], acc)
    log = (HISTORY / "fp8_fused_quant_H200" / "ab_log.txt").read_text().splitlines()
    rows = [line for line in log if line.startswith("{")]
    assert len(rows) >= 8 and all("'separate'" in line and "'fused'" in line for line in rows)
    assert _load(DATA / "fp8_NVIDIA_H200.json")["fp8_accumulate"] is None  # the record ran the default sums


@pytest.mark.parametrize("name", HISTORY_TABLES)
def test_history_tables_have_a_header(name):
    lines = [line.split() for line in (HISTORY / name).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    header = next(row for row in lines if row[:2] == ["tp", "M"])
    assert {"tp", "M"} <= set(header) and ("us" in header or "layer" in header)


@pytest.mark.parametrize("folder", [DATA, HISTORY], ids=["bench", "history"])
def test_every_file_is_described(folder):
    readme = (ROOT / "data" / "README.md" if folder == DATA else HISTORY / "README.md").read_text()
    described = set(re.findall(r"`([^`]+)`", readme))
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "README.md"):
        name = path.name if folder == HISTORY else f"bench/{path.name}"
        assert name in described, f"{path.relative_to(ROOT)} has no row in its README"

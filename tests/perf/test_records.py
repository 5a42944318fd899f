"""The recorded GPU runs in data/bench/ that notebook 06 reads: they load and every figure draws them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_lib.perf.power import read_power_log
from moe_lib.teach.viz import perf as vp

DATA = Path(__file__).resolve().parents[2] / "data" / "bench"

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def test_recorded_files_draw():
    runs = {path.stem: json.loads(path.read_text()) for path in sorted(DATA.glob("NVIDIA_*.json"))}
    reference = json.loads((DATA / "vllm_reference_H100.json").read_text())
    assert reference["source"].startswith("measured by the maintainers")
    tps = sorted({r["tp"] for r in reference["records"]})
    for run in runs.values():
        vp.roofline(run, reference=reference)
        vp.latency_vs_reference(run, reference, tps=tps)
        vp.time_above_floor(run, m=1, reference=reference)
    vp.floor_fraction(runs, reference=reference)
    h100 = runs["NVIDIA_H100_80GB_HBM3"]
    assert reference["gpu"] == h100["gpu"]
    vp.power_trace(h100, read_power_log(DATA / "power_NVIDIA_H100_80GB_HBM3.csv"))
    timed = {(r["tp"], r["M"]) for r in h100["records"] if r["impl"] == "moe_lib" and r["us"]}
    assert {(r["tp"], r["M"]) for r in reference["records"]} <= timed

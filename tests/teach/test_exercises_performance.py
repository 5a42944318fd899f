"""moe_lib.teach.exercises.performance (notebook 07): the checker keeps the contract of exercise_contract.py, and
its reference is the library's floor."""

from __future__ import annotations

import pytest
from exercise_contract import ExerciseContract

from moe_lib.perf.floors import MIXTRAL, floor_us
from moe_lib.teach.exercises import performance


def decode_floor_us(hidden, inter, top_k, tp, bandwidth_tbps):
    return top_k * 3 * hidden * (inter // tp) * 2 / (bandwidth_tbps * 1e12) * 1e6


class TestPerformanceCheckers(ExerciseContract):
    module = performance
    checks = {
        "check_decode_floor": (decode_floor_us, [
            (lambda h, i, k, tp, bw: k * 3 * h * i * 2 / (bw * 1e12) * 1e6, "divide the intermediate size by tp"),
            (lambda h, i, k, tp, bw: k * 2 * h * (i // tp) * 2 / (bw * 1e12) * 1e6, "three matrices"),
            (lambda h, i, k, tp, bw: k * 3 * h * (i // tp) / (bw * 1e12) * 1e6, "2 bytes"),
            (lambda h, i, k, tp, bw: k * 3 * h * (i // tp) * 2 / (bw * 1e9) * 1e6, "1e12 bytes"),
        ]),
    }


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_the_reference_is_the_benchmark_floor_of_one_token(tp):
    """For Mixtral at M = 1 the benchmark's memory floor reads top_k experts, as the exercise does."""
    ceilings = {"copy_TBps": 3.35, "matmul_TFLOPs": 990.0}
    recorded = floor_us(1, tp, ceilings)["memory_us"]
    ours = performance._decode_floor_ref(MIXTRAL["hidden"], MIXTRAL["intermediate"], MIXTRAL["top_k"], tp, 3.35)
    assert ours == pytest.approx(recorded, rel=1e-12)

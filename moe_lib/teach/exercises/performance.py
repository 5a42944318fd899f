"""Notebook 07 (performance): the weight-bandwidth floor of one decode token.

The reference is the library's floor (:func:`moe_lib.perf.floors.floor_us`, the one the benchmark records),
asked for one token that reads exactly its top_k experts.
"""

from __future__ import annotations

from ...perf.floors import floor_us
from ._engine import Case, CheckResult, Mistake, check, compare_number


def _decode_floor_ref(hidden: int, inter: int, top_k: int, tp: int, bandwidth_tbps: float) -> float:
    shape = {"num_experts": top_k, "top_k": top_k, "hidden": hidden, "intermediate": inter}
    ceilings = {"copy_TBps": bandwidth_tbps, "matmul_TFLOPs": 1.0}  # the compute floor is not asked for
    return floor_us(1, tp, ceilings, shape, experts=top_k)["memory_us"]


def check_decode_floor(decode_floor_us) -> CheckResult:
    """``decode_floor_us(hidden, inter, top_k, tp, bandwidth_tbps)``: the weight-bandwidth floor in µs of one
    token (M = 1) on one rank — its top_k experts' bf16 w1, w3 and w2 slices (I/tp wide), read once at
    ``bandwidth_tbps`` TB/s."""
    cases = [
        Case("Mixtral, TP = 1, 2.98 TB/s", (4096, 14336, 2, 1, 2.98)),
        Case("Mixtral, TP = 8, 2.98 TB/s", (4096, 14336, 2, 8, 2.98)),
        Case("Mixtral, TP = 2 on an H200 (4.8 TB/s)", (4096, 14336, 2, 2, 4.8)),
        Case("top-1, TP = 4", (1024, 4096, 1, 4, 3.35)),
        Case("a tiny layer: H = 64, I = 128, top-2", (64, 128, 2, 1, 1.0)),
    ]
    return check(
        "decode floor", decode_floor_us, arg_names=("hidden", "inter", "top_k", "tp", "bandwidth_tbps"),
        cases=cases, reference=_decode_floor_ref,
        compare=lambda got, exp: compare_number(got, exp, tol=1e-3),
        mistakes=[
            Mistake(lambda h, i, k, tp, bw: k * 3 * h * i * 2 / (bw * 1e12) * 1e6,
                    "each rank holds only I/tp of every expert: divide the intermediate size by tp"),
            Mistake(lambda h, i, k, tp, bw: k * 2 * h * (i // tp) * 2 / (bw * 1e12) * 1e6,
                    "an expert has three matrices: w1 and w3 (in w13) and w2, each H x I/tp"),
            Mistake(lambda h, i, k, tp, bw: k * 3 * h * (i // tp) / (bw * 1e12) * 1e6,
                    "bf16 takes 2 bytes per weight: count bytes, not parameters"),
            Mistake(lambda h, i, k, tp, bw: 8 * 3 * h * (i // tp) * 2 / (bw * 1e12) * 1e6,
                    "one token reads only its top_k experts, not all of them"),
            Mistake(lambda h, i, k, tp, bw: k * 3 * h * (i // tp) * 2 / (bw * 1e9) * 1e6,
                    "1 TB/s is 1e12 bytes per second"),
        ],
        hint="top_k * 3 * hidden * (inter / tp) * 2 bytes, divided by bandwidth_tbps * 1e12 bytes/s, times 1e6",
        summary="TP = 1 to 8, top-1 and top-2, two bandwidths",
    )


__all__ = ["check_decode_floor"]

"""moe_lib.teach.puzzles.tensor_parallel (notebook 08): the checker keeps the contract of
puzzle_kernels.PuzzleContract, and its first case is the library's simulated TP layer."""

from __future__ import annotations

import puzzle_kernels as k
import pytest
import torch

from moe_lib import runtime
from moe_lib.teach.puzzles import tensor_parallel

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


class TestTensorParallelPuzzles(k.PuzzleContract):
    module = tensor_parallel
    checks = {
        "check_tp_partial_sum": (k.tp_sum, k.tp_sum_stub, [
            (k.tp_sum_skips_last_rank, "the last rank is missing"),
            (k.tp_sum_in_bf16, "compute in fp32"),
            (k.tp_sum_rank_stride_from_sizes, "rank r's partial starts at r * stride_pr"),
        ]),
    }


def test_the_first_case_sums_to_the_layer():
    """The partials of the first case add up to the whole layer (moe_reference, no parallelism)."""
    case = tensor_parallel._puzzle().cases[0]
    assert case.inputs["partials"].shape[0] == 2
    torch.testing.assert_close(case.expected["out"], case.inputs["partials"].sum(0), rtol=1e-5, atol=1e-6)

"""moe_lib.teach.puzzles.routing (notebook 03): the checkers keep the contract of puzzle_kernels.PuzzleContract."""

from __future__ import annotations

import puzzle_kernels as k
import pytest

from moe_lib import runtime
from moe_lib.teach.puzzles import routing

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


class TestRoutingPuzzles(k.PuzzleContract):
    module = routing
    checks = {
        "check_topk_kernel": (k.topk, k.topk_stub, [
            (k.topk_ties_to_higher, "take the lowest id"),
            (k.topk_not_taken_out, "chosen k times"),
            (k.topk_padding_zero, "padding columns (offs_e >= E) were loaded as 0"),
        ]),
        "check_renormalize_kernel": (k.renormalize, k.renormalize_stub, [
            (k.renormalize_divides_by_zero, "0 / 0 = nan"),
            (k.renormalize_sum_over_tokens, "the sum ran over the tokens (axis 0)"),
            (k.renormalize_no_column_mask, "mask the columns"),
            (k.renormalize_no_row_mask, "mask the rows"),
        ]),
    }

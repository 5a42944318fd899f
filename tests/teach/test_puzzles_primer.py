"""moe_lib.teach.puzzles.primer (notebook 02): the checkers keep the contract of puzzle_kernels.PuzzleContract."""

from __future__ import annotations

import puzzle_kernels as k
import pytest

from moe_lib import runtime
from moe_lib.teach.puzzles import primer

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


class TestPrimerPuzzles(k.PuzzleContract):
    module = primer
    checks = {
        "check_vector_add": (k.vector_add, k.vector_add_stub, [
            (k.vector_add_no_mask, "store with a mask"),
            (k.vector_add_no_program_id, "use tl.program_id(0) to pick each program's block"),
            (k.vector_add_pid_plus_one, "not (tl.program_id(0) + 1) * BLOCK"),
            (k.vector_add_mask_short, "not < size - 1"),
            (k.vector_add_subtracts, "that is x - y"),
        ]),
        "check_row_softmax": (k.row_softmax, k.row_softmax_stub, [
            (k.row_softmax_pad_zero, "other=-float('inf')"),
            (k.row_softmax_no_max, "subtract the row's max"),
            (k.row_softmax_cols_as_stride, "row stride"),
            (k.row_softmax_no_store_mask, "stores landed between the rows of out"),
            (k.row_softmax_sum_in_bf16, "compute in fp32"),
        ]),
    }

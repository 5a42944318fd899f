"""moe_lib.teach.puzzles.alignment (notebook 05): the checkers keep the contract of puzzle_kernels.PuzzleContract,
and their references are the library's alignment."""

from __future__ import annotations

import puzzle_kernels as k
import pytest
import torch

from moe_lib import runtime
from moe_lib.teach.puzzles import alignment

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


class TestAlignmentPuzzles(k.PuzzleContract):
    module = alignment
    checks = {
        "check_expert_histogram": (k.expert_histogram, k.expert_histogram_stub, [
            (k.expert_histogram_unpadded, "round each count up"),
            (k.expert_histogram_inclusive, "inclusive scan"),
            (k.expert_histogram_no_load_mask, "mask=offs < numel"),
            (k.expert_histogram_no_expert_mask, "past the end of counts"),
        ]),
        "check_scatter_sorted": (k.scatter_sorted, k.scatter_sorted_stub, [
            (k.scatter_sorted_pad_zero, "the sentinel numel"),
            (k.scatter_sorted_no_carry, "written twice and others never"),
            (k.scatter_sorted_expert_off_by_one, "e is tl.program_id(0)"),
        ]),
    }


def test_the_first_example_counts_and_offsets():
    """Notebook 05's first routing: experts 0 and 2 get nothing, expert 5 a whole block of 4."""
    counts, offsets, sorted_ids = alignment._aligned(alignment.FIRST_EXAMPLE, 4, 8)
    assert counts.tolist() == [0, 1, 0, 1, 2, 4, 2, 2]
    assert offsets.tolist() == [0, 0, 4, 4, 8, 12, 16, 20, 24]
    assert sorted_ids.numel() == 24 and sorted_ids[:4].tolist() == [11, 12, 12, 12]
    assert torch.equal(counts.long().sum(), torch.tensor(12))

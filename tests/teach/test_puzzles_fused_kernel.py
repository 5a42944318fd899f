"""moe_lib.teach.puzzles.fused_kernel (notebook 06): the checkers keep the contract of
puzzle_kernels.PuzzleContract, and the grouped GEMM's expected rows follow the library's alignment."""

from __future__ import annotations

import puzzle_kernels as k
import pytest
import torch

from moe_lib import runtime
from moe_lib.teach.puzzles import fused_kernel

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


class TestFusedKernelPuzzles(k.PuzzleContract):
    module = fused_kernel
    checks = {
        "check_moe_tile": (k.moe_tile, k.moe_tile_stub, [
            (k.moe_tile_flat_id_as_row, "row = flat id // TOP_K"),
            (k.moe_tile_stores_padding_rows, "store only the rows with flat < num_valid"),
            (k.moe_tile_no_k_mask, "the K tail"),
            (k.moe_tile_dot_in_bf16, "compute in fp32"),
        ]),
        "check_silu_mul_epilogue": (k.silu_mul, k.silu_mul_stub, [
            (k.silu_mul_swapped, "gate and up are swapped"),
            (k.silu_mul_no_column_mask, "mask the columns"),
            (k.silu_mul_i_as_row_stride, "row m of gate_up starts at m * stride_gm"),
            (k.silu_mul_no_upcast, "take fp32"),
        ]),
        "check_grouped_gemm": (k.grouped_gemm, k.grouped_gemm_stub, [
            (k.grouped_gemm_no_weight, "the routing weight is missing"),
            (k.grouped_gemm_expert_from_pid, "expert_ids[pid_m] (not pid_m)"),
            (k.grouped_gemm_no_row_mask, "store only the rows with flat < num_valid"),
        ]),
    }


def test_the_grouped_gemm_rows_are_the_layer_rows():
    """Row f of the expected C is weight_f * a[f // k] @ b[e].T for the expert e of the aligned block that holds f
    (the alignment is the library's): every real flat id sits in a block of an expert."""
    case = fused_kernel._gemm_puzzle().cases[0]
    a, b, w = case.inputs["a"], case.inputs["b"], case.inputs["topk_weights"]
    sorted_ids, expert_ids = case.inputs["sorted_token_ids"], case.inputs["expert_ids"]
    block, top_k = case.scalars["BLOCK_M"], case.scalars["top_k"]
    c = case.expected["c"]
    for blk, expert in enumerate(expert_ids.tolist()):
        for f in sorted_ids[blk * block:(blk + 1) * block].tolist():
            if f < w.numel():
                assert expert >= 0
                torch.testing.assert_close(c[f], w[f] * (a[f // top_k] @ b[expert].T), rtol=1e-5, atol=1e-6)

"""moe_lib.teach.puzzles.fp8 (notebook 11): the checker keeps the contract of puzzle_kernels.PuzzleContract, its
expected products are the dequantized operands' product, and the engine's guards work for e4m3 inputs."""

from __future__ import annotations

import puzzle_kernels as k
import pytest
import torch

from moe_lib import runtime
from moe_lib.kernels.quant import FP8_DTYPE, dequantize_weight
from moe_lib.teach.puzzles import fp8
from moe_lib.teach.puzzles._engine import _place_all, _poison
from moe_lib.testing import rel_err

pytestmark = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


class TestFp8Puzzles(k.PuzzleContract):
    module = fp8
    checks = {
        "check_fp8_matmul_epilogue": (k.fp8_matmul, k.fp8_matmul_stub, [
            (k.fp8_matmul_scales_every_step, "applied at every K step"),
            (k.fp8_matmul_no_b_scale, "b_scale is missing"),
            (k.fp8_matmul_no_a_scale, "a_scale is missing"),
            (k.fp8_matmul_unmasked_scales, "one fp32 scale per column of B"),
            (k.fp8_matmul_no_k_mask, "ks < K masked"),
            (k.fp8_matmul_divides, "dequantizing multiplies"),
        ]),
    }


def test_the_expected_product_is_the_product_of_the_dequantized_operands():
    """c = dequantize(a, per-row scales) @ dequantize(b, per-column scales), with the library's dequantization."""
    for case in fp8._puzzle().cases:
        a, b, sa, sb = fp8._inputs(case)
        assert a.dtype == b.dtype == FP8_DTYPE
        a_deq = dequantize_weight(a[None], sa[None, :, None])[0]  # per channel: one scale per row of A
        b_deq = dequantize_weight(b.T[None], sb[None, :, None])[0].T  # one per column of B
        assert rel_err(case.expected["c"], a_deq.double() @ b_deq.double()) < 1e-6  # fp32 dequantized values


def test_e4m3_inputs_are_guarded_by_the_two_e4m3_nans():
    out, inp = _poison(FP8_DTYPE, output=True), _poison(FP8_DTYPE, output=False)
    assert torch.isnan(out.float()).all() and torch.isnan(inp.float()).all()
    assert out.view(torch.uint8).item() != inp.view(torch.uint8).item()  # 0xFF and 0x7F
    case = fp8._puzzle().cases[1]
    placed = _place_all(case, "cpu")
    a = placed["a"]
    assert torch.equal(a.view.view(torch.uint8), case.inputs["a"].view(torch.uint8))  # the values, bit for bit
    assert torch.isnan(a.buf.float()[: 64]).all()  # the guard before it

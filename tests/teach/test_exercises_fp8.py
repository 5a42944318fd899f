"""moe_lib.teach.exercises.fp8 (notebook 11): the checkers keep the contract of exercise_contract.py, and their
references are the library's e4m3 rounding and per-tensor weight quantization."""

from __future__ import annotations

import pytest
import torch
from exercise_contract import ExerciseContract

from moe_lib.kernels.quant import FP8_MAX, MIN_SCALE, quantize_weight, to_e4m3
from moe_lib.teach.exercises import fp8


def e4m3_round(x, *, mantissa_bits=3, smallest_exponent=-6, top=FP8_MAX, ties_to_even=True, truncate=False):
    """The grid by hand, as a learner writes it; the keywords make the typical mistakes."""
    exponent = (torch.frexp(x.float())[1] - 1).clamp(min=smallest_exponent)  # floor(log2|x|), exactly
    step = torch.pow(2.0, (exponent - mantissa_bits).float())
    steps = x.float() / step
    rounded = torch.round(steps) if ties_to_even else torch.sign(steps) * torch.floor(steps.abs() + 0.5)
    if truncate:
        rounded = torch.trunc(steps)
    return (rounded * step).clamp(-top, top)


def quantize_block(block, *, divisor=FP8_MAX, floor=True, use_abs=True):
    amax = block.abs().max() if use_abs else block.max()
    scale = amax / divisor
    if floor:
        scale = torch.clamp(scale, min=MIN_SCALE)
    return (block / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale.item()


class TestFp8Checkers(ExerciseContract):
    module = fp8
    checks = {
        "check_e4m3_round": (e4m3_round, [
            (lambda x: e4m3_round(x, top=1e30), "must saturate"),
            (lambda x: e4m3_round(x, top=240.0), "not 240"),
            (lambda x: e4m3_round(x, ties_to_even=False), "even neighbour"),
            (lambda x: e4m3_round(x, smallest_exponent=-200), "subnormals"),
            (lambda x: e4m3_round(x, mantissa_bits=2), "3 mantissa bits"),
            (lambda x: e4m3_round(x, truncate=True), "nearest"),
            (lambda x: (torch.round(x * 8) / 8).clamp(-FP8_MAX, FP8_MAX), "integer grid"),
        ]),
        "check_quantize_block": (quantize_block, [
            (lambda b: quantize_block(b, divisor=1.0), "amax / 448"),
            (lambda b: quantize_block(b, use_abs=False), "largest magnitude"),
            (lambda b: quantize_block(b, floor=False), "MIN_SCALE"),
            (lambda b: (to_e4m3(b * (b.abs().max() / FP8_MAX)), (b.abs().max() / FP8_MAX).item()), "dividing"),
            (lambda b: (to_e4m3(b / (b.abs().max() / FP8_MAX)), b.abs().amax(dim=1) / FP8_MAX), "one number"),
        ]),
    }


def test_the_rounding_reference_is_the_fp8_cast_and_the_grid_by_hand_matches_it():
    """Every finite e4m3 value and every midpoint between neighbours: the cast rounds ties to even."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    grid = values[torch.isfinite(values)].unique()  # -448 ... 448
    mids = (grid[1:] + grid[:-1]) / 2
    for x in (grid, mids, torch.linspace(-500, 500, 4001)):
        assert torch.equal(fp8._rounded_ref(x), e4m3_round(x))
        assert torch.equal(fp8._rounded_ref(x), fp8._grid_wrong(x))


@pytest.mark.parametrize("shape", [(2, 4), (16, 16), (1, 3)])
def test_one_block_is_the_per_tensor_quantization_of_that_block(shape):
    block = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    q, scale = fp8._block_ref(block)
    q_lib, s_lib = quantize_weight(block[None], "tensor")
    assert torch.equal(q, q_lib[0].float()) and scale == s_lib.item()
    assert q.abs().max().item() == FP8_MAX  # the block's amax lands on the top of the grid

"""Notebook 11 (FP8 experts): rounding to the e4m3 grid by hand, and quantizing one block of weights.

Both references are the library's: :func:`moe_lib.kernels.quant.to_e4m3` (torch's float8_e4m3fn cast after a
clamp to ±448) and :func:`moe_lib.kernels.quant.quantize_weight` in its per-tensor mode, asked for one block.
"""

from __future__ import annotations

import torch

from ...kernels.quant import FP8_MAX, MIN_SCALE, quantize_weight, to_e4m3
from ...testing import randn, seeded
from ._engine import Case, CheckResult, Mistake, check, compare_number, fmt

#: The numbers notebook 11 rounds by hand in its first section.
NB11_VALUES = torch.tensor([0.3, 100.0, 300.0, 500.0, 0.001, -2.6, 0.0, 17.0, 19.0])
#: The block notebook 11 quantizes by hand in its second section.
NB11_BLOCK = torch.tensor([[0.012, -0.030, 0.004, 0.021], [-0.007, 0.016, -0.025, 0.009]])


# ----------------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------------
def _grid_values(got, expected: torch.Tensor, what: str) -> str | None:
    """A floating tensor of expected's shape holding the same values (any float dtype: fp32 or e4m3)."""
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a torch.Tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{what}: shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    if not got.dtype.is_floating_point:
        return f"{what}: dtype {got.dtype} instead of a floating-point tensor"
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    if (torch.isnan(g) & ~torch.isnan(e)).any():
        return f"{what}: the result contains NaN"
    differ = (g != e) & ~(torch.isnan(g) & torch.isnan(e))
    if differ.any():
        i = int(torch.nonzero(differ.flatten())[0])
        return (f"{what}: {int(differ.sum())} of {e.numel()} values differ, first at flat index {i}: "
                f"{g.flatten()[i].item():.6g} instead of {e.flatten()[i].item():.6g}")
    return None


def _compare_rounded(got, expected: torch.Tensor) -> str | None:
    return _grid_values(got, expected, "values")


def _compare_block(got, expected: tuple) -> str | None:
    """(q, scale): q the block's e4m3 values (any float dtype), scale one number within 1e-6."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (q, scale), got {fmt(got)}"
    q, scale = got
    if isinstance(scale, torch.Tensor) and scale.numel() != 1:
        return (f"scale must be one number for the whole block, got a tensor of shape {tuple(scale.shape)} "
                f"(one amax over every value of the block, not per row or column)")
    diff = compare_number(scale, expected[1], tol=1e-6)
    if diff is not None:
        return f"scale: {diff}"
    return _grid_values(q, expected[0], "q")


# ----------------------------------------------------------------------------------------------------
# Exercise 1: round to the e4m3 grid
# ----------------------------------------------------------------------------------------------------
def _rounded_ref(x: torch.Tensor) -> torch.Tensor:
    return to_e4m3(x).float()


def _grid_wrong(x: torch.Tensor, *, mantissa_bits: int = 3, min_exponent: int | None = -6, top: float | None = FP8_MAX,
                rounding: str = "even") -> torch.Tensor:
    """Rounding on a binary grid with the given mantissa bits, smallest exponent and largest value; the
    keywords make the typical mistakes."""
    x = x.double()
    _, exp = torch.frexp(x)  # x = f * 2**exp with 0.5 <= |f| < 1, so floor(log2|x|) = exp - 1
    e = exp - 1
    if min_exponent is not None:
        e = e.clamp(min=min_exponent)
    step = torch.pow(2.0, (e - mantissa_bits).double())
    steps = x.abs() / step
    if rounding == "even":
        r = torch.round(steps)
    elif rounding == "away":
        r = torch.floor(steps + 0.5)
    else:  # "down": truncation toward zero
        r = torch.floor(steps)
    out = torch.sign(x) * r * step
    if top is not None:
        out = out.clamp(-top, top)
    return out.float()


def _ties_and_edges() -> torch.Tensor:
    return torch.tensor([1.0625, 1.1875, 17.0, 19.0, 2.0**-10, 3 * 2.0**-10, 0.015, 2.0**-9, 1e-5,
                         -0.0, 1.0, 1.999, 7.5, 240.0, 250.0])


def _saturation() -> torch.Tensor:
    return torch.tensor([448.0, 449.0, 460.0, 464.0, 470.0, 480.0, 1e6, -300.0, -1e9])


def check_e4m3_round(e4m3_round) -> CheckResult:
    """``e4m3_round(x)``: every value of the fp32 tensor ``x`` rounded to the nearest float8_e4m3fn value (ties
    to the even neighbour, saturating at ±448), returned as a tensor of x's shape (fp32, or e4m3)."""
    gen = seeded(1101)
    cases = [
        Case("notebook 11's numbers", (NB11_VALUES.clone(),)),
        Case("ties, binade edges, subnormals", (_ties_and_edges(),)),
        Case("saturation at ±448", (_saturation(),)),
        *[Case(f"random N(0, {s:g}), {n} values", (randn(n, generator=gen, scale=s),))
          for s, n in ((1.0, 64), (100.0, 64), (0.01, 64), (3e-3, 32))],
        Case("a 2-D tensor", (randn(4, 6, generator=gen, scale=20.0),)),
    ]
    return check(
        "round to e4m3", e4m3_round, arg_names=("x",), cases=cases, reference=_rounded_ref,
        compare=_compare_rounded,
        mistakes=[
            Mistake(lambda x: _grid_wrong(x, top=None), "values above 448 must saturate: e4m3fn has no infinity, "
                    "clamp the result to [-448, 448]"),
            Mistake(lambda x: _grid_wrong(x, top=240.0), "float8_e4m3fn uses the exponent field 1111 for numbers "
                    "too (only 1111.111 is NaN): its largest value is 1.75 * 2**8 = 448, not 240"),
            Mistake(lambda x: _grid_wrong(x, rounding="away"), "a tie (exactly halfway between two grid values) "
                    "goes to the even neighbour, the one whose last mantissa bit is 0: torch.round does that, "
                    "floor(v + 0.5) does not"),
            Mistake(lambda x: _grid_wrong(x, rounding="down"), "that truncates toward zero: round to the nearest "
                    "grid value (torch.round of x / step)"),
            Mistake(lambda x: _grid_wrong(x, min_exponent=None), "below 2**-6 the grid stops getting finer: the "
                    "subnormals all have the step 2**-9 — clamp the exponent at -6 before computing the step"),
            Mistake(lambda x: _grid_wrong(x, mantissa_bits=2), "e4m3 keeps 3 mantissa bits: the step in "
                    "[2**e, 2**(e+1)) is 2**(e - 3), 8 values per binade (2 bits is e5m2's grid)"),
            Mistake(lambda x: _grid_wrong(x, mantissa_bits=4), "e4m3 keeps 3 mantissa bits: the step in "
                    "[2**e, 2**(e+1)) is 2**(e - 3), 8 values per binade, not 16"),
            Mistake(lambda x: (torch.round(x.double() * 8) / 8).clamp(-FP8_MAX, FP8_MAX).float(), "one step for "
                    "every value is an integer grid: in a floating-point format the step grows with the magnitude, "
                    "2**(e - 3) in the binade [2**e, 2**(e+1))"),
        ],
        hint="e = floor(log2|x|) (torch.frexp(x)[1] - 1 is exact), clamped to >= -6; step = 2**(e - 3); "
             "torch.round(x / step) * step (ties to even); clamp to [-448, 448]",
        summary="ties to even, subnormals, saturation",
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 2: quantize one block
# ----------------------------------------------------------------------------------------------------
def _block_ref(block: torch.Tensor) -> tuple[torch.Tensor, float]:
    q, scale = quantize_weight(block[None].float(), "tensor")
    return q[0].float(), float(scale[0])


def _block_wrong(block: torch.Tensor, *, amax: str = "abs", divisor: float = FP8_MAX, floor: bool = True,
                 multiply: bool = False, invert: bool = False) -> tuple[torch.Tensor, float]:
    x = block.float()
    peak = x.abs().max() if amax == "abs" else x.max()
    scale = peak / divisor
    if floor:
        scale = scale.clamp(min=MIN_SCALE)
    if invert:
        scale = 1.0 / scale
    q = to_e4m3(x * scale if multiply else x / scale).float()
    return q, float(scale)


def _random_block(gen: torch.Generator, rows: int, cols: int, std: float, outlier: float | None = None):
    block = randn(rows, cols, generator=gen, scale=std)
    if outlier is not None:
        block[rows // 2, cols // 3] = outlier
    return block


def check_quantize_block(quantize_block) -> CheckResult:
    """``quantize_block(block)``: one block of weights (a 2-D fp32 tensor) -> ``(q, scale)``: the block's fp32
    scale ``max(amax / 448, MIN_SCALE)`` with ``amax`` the largest |value| of the block and ``MIN_SCALE`` =
    1 / (448 * 512), and ``q`` the block divided by it, rounded to e4m3 (a tensor of the block's shape, e4m3 or
    fp32). ``q * scale`` is the block read back."""
    gen = seeded(1102)
    negative_peak = _random_block(gen, 4, 4, 0.5)
    negative_peak[1, 2] = -3.0
    cases = [
        Case("notebook 11's block", (NB11_BLOCK.clone(),)),
        Case("the largest magnitude is negative", (negative_peak,)),
        Case("an all-zero block", (torch.zeros(2, 8),)),
        Case("one outlier in N(0, 0.02)", (_random_block(gen, 8, 8, 0.02, outlier=0.5),)),
        *[Case(f"random {r} x {c}, N(0, {s:g})", (_random_block(gen, r, c, s),))
          for r, c, s in ((4, 8, 1.0), (16, 16, 0.02), (1, 32, 300.0))],
    ]
    return check(
        "quantize one block", quantize_block, arg_names=("block",), cases=cases, reference=_block_ref,
        compare=_compare_block,
        mistakes=[
            Mistake(lambda b: _block_wrong(b, divisor=1.0), "the scale maps the block's amax onto 448, the largest "
                    "e4m3 value: scale = amax / 448 (with scale = amax every q lies in [-1, 1], where e4m3 is "
                    "coarse)"),
            Mistake(lambda b: _block_wrong(b, invert=True, multiply=True), "that scale is the reciprocal: "
                    "scale = amax / 448 and q = block / scale, so that q * scale gives the block back"),
            Mistake(lambda b: _block_wrong(b, multiply=True), "quantize by dividing, q = block / scale (and read back "
                    "by multiplying, q * scale)"),
            Mistake(lambda b: _block_wrong(b, amax="max"), "amax is the largest magnitude, block.abs().max(): a "
                    "large negative value must fit too"),
            Mistake(lambda b: _block_wrong(b, floor=False), "an all-zero block has amax 0: keep the scale at least "
                    "MIN_SCALE = 1 / (448 * 512), or 0 / 0 gives NaN"),
        ],
        hint="amax = block.abs().max(); scale = max(amax / 448, 1 / (448 * 512)); q = (block / scale) clamped to "
             "±448 and cast with .to(torch.float8_e4m3fn) (or your e4m3_round); return (q, scale)",
        summary="a negative peak, an all-zero block, an outlier",
    )


__all__ = ["check_e4m3_round", "check_quantize_block"]

"""Notebook 11 (FP8 experts): dequantize in an epilogue — an e4m3 product whose per-row and per-column scales
are applied once, after the K loop.

The operands are rounded to e4m3 by the library (:func:`moe_lib.kernels.quant.to_e4m3`); the expected product
is the definition, ``(a * a_scale[:, None]) @ (b * b_scale[None, :])``, computed in fp64 from the exact e4m3
values.
"""

from __future__ import annotations

import functools

import torch
import triton

from ...kernels.quant import to_e4m3
from ...testing import randn, seeded
from ._engine import KernelCase, Puzzle, PuzzleResult, ValueMistake, check_kernel


def _launch(t):
    m, k = t.a.shape
    n = t.b.shape[1]
    return ((triton.cdiv(m, t.BLOCK_M), triton.cdiv(n, t.BLOCK_N)),
            (t.a, t.b, t.c, t.a_scale, t.b_scale, m, n, k, t.a.stride(0), t.a.stride(1), t.b.stride(0),
             t.b.stride(1), t.c.stride(0), t.c.stride(1)),
            {"BLOCK_M": t.BLOCK_M, "BLOCK_N": t.BLOCK_N, "BLOCK_K": t.BLOCK_K})


def _product(a, b, a_scale, b_scale) -> torch.Tensor:
    """(M, N) fp64: the dequantized operands' product."""
    return (a.double() * a_scale.double()[:, None]) @ (b.double() * b_scale.double()[None, :])


def _case(label: str, gen: torch.Generator, m: int, n: int, k: int, blocks: tuple[int, int, int],
          scale_spread: float = 1.0, extremes: bool = False) -> KernelCase:
    a = to_e4m3(randn(m, k, generator=gen, scale=60.0))
    b = to_e4m3(randn(k, n, generator=gen, scale=60.0))
    if extremes:  # the top of the grid and the subnormals
        a = to_e4m3(torch.where(torch.rand(m, k, generator=gen) < 0.3, 448.0 * torch.sign(a.float()),
                                a.float() * 2.0**-12))
    a_scale = (0.01 * torch.exp(scale_spread * randn(m, generator=gen))).float()
    b_scale = (0.01 * torch.exp(scale_spread * randn(n, generator=gen))).float()
    block_m, block_n, block_k = blocks
    return KernelCase(label, {"a": a, "b": b, "a_scale": a_scale, "b_scale": b_scale},
                      {"c": _product(a, b, a_scale, b_scale).float()},
                      scalars={"M": m, "N": n, "K": k, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k},
                      pads={"a": (0, 3), "b": (0, 5), "c": (0, 4)})


def _inputs(case: KernelCase):
    return case.inputs["a"], case.inputs["b"], case.inputs["a_scale"], case.inputs["b_scale"]


def _only_a_scale(case: KernelCase) -> torch.Tensor:
    a, b, sa, sb = _inputs(case)
    return _product(a, b, sa, torch.ones_like(sb))


def _only_b_scale(case: KernelCase) -> torch.Tensor:
    a, b, sa, sb = _inputs(case)
    return _product(a, b, torch.ones_like(sa), sb)


def _no_scales(case: KernelCase) -> torch.Tensor:
    a, b, sa, sb = _inputs(case)
    return _product(a, b, torch.ones_like(sa), torch.ones_like(sb))


def _divided(case: KernelCase) -> torch.Tensor:
    a, b, sa, sb = _inputs(case)
    return _product(a, b, 1.0 / sa.double(), 1.0 / sb.double())


def _rescaled_every_step(case: KernelCase) -> torch.Tensor:
    """``acc = (acc + a_k @ b_k) * scale`` at every K step: the first steps' sums are scaled again and again."""
    a, b, sa, sb = _inputs(case)
    scale = sa.double()[:, None] * sb.double()[None, :]
    step = case.scalars["BLOCK_K"]
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    for k0 in range(0, a.shape[1], step):
        acc = (acc + a.double()[:, k0:k0 + step] @ b.double()[k0:k0 + step]) * scale
    return acc


@functools.cache
def _puzzle() -> Puzzle:
    gen = seeded(1103)
    cases = [
        _case("M = 8, N = 12, K = 32: two K steps, BLOCK 4 x 8 x 16", gen, 8, 12, 32, (4, 8, 16)),
        _case("M = 7, N = 10, K = 40: ragged rows, columns and K", gen, 7, 10, 40, (4, 8, 16)),
        _case("scales from 1e-5 to 10 (one per row, one per column)", gen, 6, 9, 48, (4, 8, 16), scale_spread=3.0),
        _case("one K step: K = 16", gen, 5, 11, 16, (4, 8, 16)),
        _case("e4m3's extremes: ±448 and subnormals", gen, 6, 8, 32, (4, 8, 16), extremes=True),
        _case("random: M = 12, N = 24, K = 64, BLOCK 8 x 16 x 16", gen, 12, 24, 64, (8, 16, 16)),
    ]
    return Puzzle(
        "FP8 scales in the epilogue", "fp8_matmul_kernel", cases, _launch,
        mistakes=[
            ValueMistake(_rescaled_every_step, "the scales were applied at every K step (acc = (acc + a @ b) * "
                         "scale inside the loop), so the first steps are scaled again and again: accumulate the "
                         "raw e4m3 products over the whole K loop, then multiply by a_scale and b_scale once"),
            ValueMistake(_no_scales, "no scale was applied: the e4m3 values are the weights divided by their scales "
                         "— multiply the accumulator by a_scale[rows][:, None] * b_scale[cols][None, :]"),
            ValueMistake(_only_a_scale, "b_scale is missing: each column n of C is multiplied by b_scale[n] too"),
            ValueMistake(_only_b_scale, "a_scale is missing: each row m of C is multiplied by a_scale[m] too"),
            ValueMistake(_divided, "dequantizing multiplies: x = q * scale (quantizing divided by it)"),
        ],
        hint="rows, cols = this program's tile; acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32); for each K block: "
             "a = A[rows, ks] and b = B[ks, cols] (masked, other=0.0), both .to(tl.float32), acc = tl.dot(a, b, "
             "acc); after the loop: acc * a_scale[rows][:, None] * b_scale[cols][None, :], stored with mask rows < "
             "M and cols < N",
        summary="two or more K steps, ragged tails, scales over six decades, ±448 and subnormals",
        read_hints={
            "a": "A is (M, K): rows * stride_am + ks * stride_ak, with rows < M and ks < K masked",
            "b": "B is (K, N): ks * stride_bk + cols * stride_bn, with ks < K and cols < N masked",
            "a_scale": "a_scale holds one fp32 scale per row of A (M values): load it at the tile's rows, "
                       "a_scale_ptr + rows, with mask rows < M",
            "b_scale": "b_scale holds one fp32 scale per column of B (N values): load it at the tile's columns, "
                       "b_scale_ptr + cols, with mask cols < N",
        },
        write_hints={"c": "C is (M, N): mask the store with rows < M and cols < N"},
    )


def check_fp8_matmul_epilogue(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """C = dequant(A) @ dequant(B) for e4m3 operands with one fp32 scale per row of A and one per column of B,
    the scales applied once, in the epilogue — one (BLOCK_M, BLOCK_N) tile of C per program::

        @triton.jit
        def fp8_matmul_kernel(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K,
                              stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr): ...

        fp8_matmul_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))](
            a, b, c, a_scale, b_scale, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            c.stride(0), c.stride(1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)

    ``a`` (M, K) and ``b`` (K, N) hold float8_e4m3fn values, ``a_scale`` (M,) and ``b_scale`` (N,) fp32, ``c``
    (M, N) fp32: ``c[m, n] = a_scale[m] * b_scale[n] * sum_k a[m, k] * b[k, n]``. Accumulate the raw products
    in fp32 over the K loop (upcast the e4m3 tiles to fp32 before ``tl.dot``: the interpreter computes low
    precision wrongly) and scale once after it. Mask the M, N and K tails."""
    return check_kernel(_puzzle(), kernel, time_limit=time_limit)


__all__ = ["check_fp8_matmul_epilogue"]

"""FP8 (e4m3) quantization: the weight helpers a learner calls, and the activation kernels a call runs.

float8_e4m3fn holds 4 exponent and 3 mantissa bits: 448 is its largest value, 2**-9 its smallest step. A
tensor is stored as ``q = round(x / scale)`` in e4m3 and read back as ``q * scale``. The scale layouts are
vLLM's (``fused_experts(..., use_fp8_w8a8=True)``):

    weights   per tensor   (E,)                          one scale per expert
              per channel  (E, N, 1)                     one per output row
              per block    (E, ceil(N/bn), ceil(K/bk))   one per bn x bk tile, block_shape = [bn, bk]
    activations            a scalar (per tensor), (M, 1) per token, or (M, ceil(K/bk)) per token group

Rounding is to nearest, ties to even, saturating at ±448. The Triton interpreter casts fp32 to fp8 wrongly
(measured here: -127.95 becomes -64), so under it the kernels round on the e4m3 grid in fp32 first and only
then cast — an exact cast, since the value is representable (the ``ROUND_IN_FP32`` switch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import runtime
from .._alloc import empty
from .._validate import FP8_DTYPE, check_block_shape
from ..runtime import pdl_start

#: The largest e4m3 value: every quantized value saturates to ±FP8_MAX.
FP8_MAX = 448.0
#: A scale never falls below this (an all-zero tensor still gets a finite, positive scale).
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


# ----------------------------------------------------------------------------------------------------
# torch: the specification and the weight helpers
# ----------------------------------------------------------------------------------------------------
def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to e4m3 (nearest, ties to even), saturating at ±448."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _scale_of(amax: torch.Tensor) -> torch.Tensor:
    return (amax.float() / FP8_MAX).clamp(min=MIN_SCALE)


def quantize_weight(w: torch.Tensor, mode: str = "tensor", block_shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, N, K) weights -> (e4m3 weights, fp32 scales) with ``mode`` "tensor" (E,), "channel" (E, N, 1) or
    "block" (E, ceil(N/bn), ceil(K/bk)) with ``block_shape=[bn, bk]``."""
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or not w.is_floating_point():
        raise ValueError(f"w must be a floating (E, N, K) tensor, got {getattr(w, 'shape', type(w).__name__)}")
    w = w.float()
    if mode == "tensor":
        scale = _scale_of(w.abs().amax(dim=(1, 2)))  # (E,)
        return to_e4m3(w / scale[:, None, None]), scale
    if mode == "channel":
        scale = _scale_of(w.abs().amax(dim=2, keepdim=True))  # (E, N, 1)
        return to_e4m3(w / scale), scale
    if mode == "block":
        bn, bk = check_block_shape(block_shape)
        e, n, k = w.shape
        padded = torch.zeros(e, triton.cdiv(n, bn) * bn, triton.cdiv(k, bk) * bk, dtype=w.dtype, device=w.device)
        padded[:, :n, :k] = w
        tiles = padded.view(e, padded.shape[1] // bn, bn, padded.shape[2] // bk, bk)
        scale = _scale_of(tiles.abs().amax(dim=(2, 4)))  # (E, N/bn, K/bk)
        return to_e4m3(w / expand_block_scale(scale, n, k, bn, bk)), scale
    raise ValueError(f"mode must be 'tensor', 'channel' or 'block', got {mode!r}")


def expand_block_scale(scale: torch.Tensor, n: int, k: int, bn: int, bk: int) -> torch.Tensor:
    """(E, ceil(N/bn), ceil(K/bk)) block scales -> (E, N, K), one per element."""
    return scale.repeat_interleave(bn, dim=1)[:, :n].repeat_interleave(bk, dim=2)[:, :, :k]


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, block_shape=None) -> torch.Tensor:
    """fp32 weights back from e4m3 ones and their scales (the layout is read from the scales' shape)."""
    e, n, k = q.shape
    if block_shape is not None:
        bn, bk = check_block_shape(block_shape)
        return q.float() * expand_block_scale(scale.float(), n, k, bn, bk)
    if scale.dim() == 1:
        return q.float() * scale.float()[:, None, None]
    return q.float() * scale.float()  # (E, N, 1)


def merge_w13_scales(w1: torch.Tensor, w1_scale: torch.Tensor, w3: torch.Tensor,
                     w3_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 w1 (E, I, H) and w3 with one scale each (E,) -> the fused w13 (E, 2I, H) with ONE scale
    per expert: both halves requantized to the larger of their two scales (as vLLM does on load)."""
    scale = torch.maximum(w1_scale.float(), w3_scale.float())  # (E,)
    halves = [to_e4m3(q.float() * s.float()[:, None, None] / scale[:, None, None]) for q, s in
              ((w1, w1_scale), (w3, w3_scale))]
    return torch.cat(halves, dim=1), scale


def quantize_activation_torch(x: torch.Tensor, group: int | None = None, *, per_token: bool = False,
                              scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification of :func:`quantize_activation`: (M, K) -> (e4m3, scales): one scale for the tensor
    (given = static, else dynamic), per token (``per_token``), or per token group of ``group`` columns."""
    x = x.float()
    m, k = x.shape
    if scale is not None:
        s = scale.float().reshape(1, 1)
    elif group is not None:
        g = triton.cdiv(k, group)
        padded = torch.zeros(m, g * group, device=x.device)
        padded[:, :k] = x.abs()
        s = _scale_of(padded.view(m, g, group).amax(dim=2))  # (M, G)
        return to_e4m3(x / s.repeat_interleave(group, dim=1)[:, :k]), s
    elif per_token:
        s = _scale_of(x.abs().amax(dim=1, keepdim=True))  # (M, 1)
    else:
        s = _scale_of(x.abs().amax() if x.numel() else x.new_zeros(())).reshape(1, 1)
    return to_e4m3(x / s), s if (per_token and scale is None) else s.reshape(())


# ----------------------------------------------------------------------------------------------------
# Triton: activation quantization
# ----------------------------------------------------------------------------------------------------
@triton.jit
def round_e4m3(x):
    """x (fp32, already within ±448) rounded to the e4m3 grid in fp32: nearest, ties to even. The step is
    2**(e - 3) for x in [2**e, 2**(e+1)), e >= -6 (below 2**-6 the subnormal step 2**-9)."""
    bits = x.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127  # floor(log2|x|), exactly
    exponent = tl.maximum(exponent, -6)
    step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2**(exponent - 3), exactly
    q = tl.abs(x) / step  # exact: a power-of-two scaling; at most 16
    r = tl.floor(q + 0.5)
    r = tl.where((r - q == 0.5) & (r % 2 == 1), r - 1.0, r)  # a tie goes to the even neighbour
    return tl.where(bits < 0, -r, r) * step  # the sign bit: -0.0 stays -0.0


@triton.jit
def quantize_kernel(
    # Pointers: x (M, K) in, q (M, K) e4m3 out, scales (fp32): read (static) or written (dynamic), and the
    # per-program maxima of absmax_kernel (SCALE_MODE 2)
    x_ptr, q_ptr, scale_ptr, partial_ptr,
    # Sizes: num_partial = programs of absmax_kernel
    M, K, num_partial,
    # Strides
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sg,
    # Meta-parameters
    SCALE_MODE: tl.constexpr,  # 0 read one scale; 1 compute one per (row, GROUP columns) and store it;
    #                            2 one for the tensor from absmax_kernel's maxima; 3 one for the tensor, which
    #                            this one program covers whole
    GROUP: tl.constexpr,  # columns per program (a power of two; SCALE_MODE 1: the group size)
    ROUND_IN_FP32: tl.constexpr,  # the interpreter casts fp32 -> fp8 wrongly: round on the grid first
    BLOCK_M: tl.constexpr,
    PARTIAL_BLOCK: tl.constexpr,  # SCALE_MODE 2: maxima read at a time (ABSMAX_PARTIALS)
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    pid_g = tl.program_id(axis=1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_k = pid_g * GROUP + tl.arange(0, GROUP)
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if SCALE_MODE == 1:
        amax = tl.max(tl.abs(x), axis=1)  # (BLOCK_M,)
        scale = tl.maximum(amax / 448.0, 1.0 / (448.0 * 512.0))
        tl.store(scale_ptr + offs_m * stride_sm + pid_g * stride_sg, scale, mask=offs_m < M)
        y = x / scale[:, None]
    else:
        if SCALE_MODE == 0:
            scale = tl.load(scale_ptr)
        else:
            if SCALE_MODE == 2:  # every program reduces the (few) maxima itself: no extra launch
                amax = 0.0
                for start in range(0, num_partial, PARTIAL_BLOCK):
                    offs_p = start + tl.arange(0, PARTIAL_BLOCK)
                    amax = tl.maximum(amax, tl.max(tl.load(partial_ptr + offs_p, mask=offs_p < num_partial,
                                                           other=0.0), axis=0))
            else:
                amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
            scale = tl.maximum(amax / 448.0, 1.0 / (448.0 * 512.0))
            if (pid_m == 0) & (pid_g == 0):
                tl.store(scale_ptr, scale)
        y = x / scale
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    if ROUND_IN_FP32:
        y = round_e4m3(y)
    tl.store(q_ptr + offs_m[:, None] * stride_qm + offs_k[None, :] * stride_qk, y.to(q_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def absmax_kernel(
    x_ptr, partial_ptr,  # x (M, K); partial (row blocks, column splits) fp32: each program's largest |x|
    M, K, stride_xm, stride_xk,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    # Program (pid_m, pid_s) of a (row blocks, splits) grid reads column tiles pid_s, pid_s + splits, ... of its
    # rows: a few rows of a wide tensor (act at small M) are split over many programs, not looped over in one.
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    pid_s = tl.program_id(axis=1)
    splits = tl.num_programs(axis=1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(pid_s, tl.cdiv(K, BLOCK_K), splits):
        offs_k = k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
    tl.store(partial_ptr + pid_m * splits + pid_s, tl.max(amax, axis=0))


def _block_rows(width: int) -> int:
    # ~4K values per program on a GPU, large programs in the interpreter (each is a numpy round trip)
    return max(1, (65536 if runtime.INTERPRET else 4096) // width)


#: A dynamic per-tensor scale is computed by the quantizing program itself when one program holds the whole
#: tensor (decode: one launch instead of two); past this many values, absmax_kernel runs first.
ONE_PROGRAM_VALUES = 16384
#: absmax_kernel writes at most this many maxima (or one per row block), which quantize_kernel reads in one step.
ABSMAX_PARTIALS = 1024


def quantize_activation(x: torch.Tensor, group: int | None = None, *, per_token: bool = False,
                        scale: torch.Tensor | None = None, use_pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (e4m3 (M, K), fp32 scales), on the device, no host sync: with a given ``scale`` (a
    one-element tensor: static), dynamically per tensor (a scalar), per token (``per_token``: (M, 1)) or per
    token group of ``group`` columns ((M, ceil(K/group))). Same results as :func:`quantize_activation_torch`.
    ``use_pdl``: programmatic dependent launch (a plan's decision, :mod:`moe_lib.kernels.experts`)."""
    m, k = x.shape
    q = empty(m, k, dtype=FP8_DTYPE, device=x.device)
    args = dict(ROUND_IN_FP32=runtime.INTERPRET, USE_PDL=use_pdl, launch_pdl=use_pdl, PARTIAL_BLOCK=ABSMAX_PARTIALS)
    if scale is None and (group is not None or per_token):
        width = triton.next_power_of_2(k) if group is None else group
        groups = 1 if group is None else triton.cdiv(k, group)
        scales = empty(m, groups, dtype=torch.float32, device=x.device)
        block_m = min(_block_rows(width), triton.next_power_of_2(max(m, 1)))
        if m:
            with runtime.quiet_interpreter():
                quantize_kernel[(triton.cdiv(m, block_m), groups)](
                    x, q, scales, scales, m, k, 0, x.stride(0), x.stride(1), q.stride(0), q.stride(1),
                    scales.stride(0), scales.stride(1), SCALE_MODE=1, GROUP=width, BLOCK_M=block_m, **args)
        return q, scales
    width = min(triton.next_power_of_2(max(k, 1)), 4096 if runtime.INTERPRET else 1024)
    block_m = min(_block_rows(width), triton.next_power_of_2(max(m, 1)))
    if scale is not None:
        mode, out_scale, partial = 0, scale.reshape(()).to(torch.float32), scale
    else:
        out_scale = empty(1, dtype=torch.float32, device=x.device)
        whole = triton.next_power_of_2(max(m, 1)) * triton.next_power_of_2(max(k, 1))
        if m == 0 or whole <= ONE_PROGRAM_VALUES * (256 if runtime.INTERPRET else 1):  # (big in the interpreter)
            mode, partial = 3, out_scale
            width, block_m = triton.next_power_of_2(max(k, 1)), triton.next_power_of_2(max(m, 1))
        else:  # the largest |x| per program first; the quantizing programs reduce those maxima
            mode = 2
            # Split the columns while the maxima stay within one read of the quantizing programs. Measured on
            # the H200 (TP 1, act of 14336 columns, M = 1 to 64): 8.3-10.3 us looped in one program, 3.7-5.4 split.
            row_blocks = triton.cdiv(m, block_m)
            splits = max(1, min(triton.cdiv(k, width), ABSMAX_PARTIALS // row_blocks))
            partial = empty(row_blocks, splits, dtype=torch.float32, device=x.device)
            with runtime.quiet_interpreter():
                absmax_kernel[(row_blocks, splits)](x, partial, m, k, x.stride(0), x.stride(1),
                                                    BLOCK_M=block_m, BLOCK_K=width, USE_PDL=use_pdl,
                                                    launch_pdl=use_pdl)
        if m == 0:  # nothing to scale: the smallest scale, as for an all-zero tensor
            out_scale.fill_(MIN_SCALE)
    if m:
        with runtime.quiet_interpreter():
            quantize_kernel[(triton.cdiv(m, block_m), triton.cdiv(k, width))](
                x, q, out_scale, partial, m, k, partial.numel(), x.stride(0), x.stride(1), q.stride(0),
                q.stride(1), 0, 0, SCALE_MODE=mode, GROUP=width, BLOCK_M=block_m,
                num_warps=8 if mode == 3 else 4, **args)
    return q, out_scale.reshape(())


__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "MIN_SCALE",
    "to_e4m3",
    "quantize_weight",
    "dequantize_weight",
    "expand_block_scale",
    "merge_w13_scales",
    "quantize_activation_torch",
    "quantize_activation",
    "quantize_kernel",
    "absmax_kernel",
    "ONE_PROGRAM_VALUES",
    "round_e4m3",
]

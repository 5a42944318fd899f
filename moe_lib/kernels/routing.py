"""Top-k routing: router logits -> (topk_weights fp32 (M, k), topk_ids int32 (M, k)).

The semantics, exactly as the layer we reproduce (vLLM's ``topk_softmax``) has them:

1. softmax over the E experts **in fp32**, max-subtracted;
2. probabilities that are NaN or Inf become 0 (a row with a NaN logit routes with weight 0);
3. the k largest, in descending order; ties go to the lower expert id;
4. if ``renormalize``: divide by the fp32 sum of the k chosen probabilities (by 1 if that sum is <= 0).

``topk_softmax`` is the readable torch version (the specification). ``topk_softmax_triton`` does the
same in one Triton kernel: each program loads a block of rows once and does softmax, top-k and the
renormalization in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import runtime
from .._alloc import empty
from .._validate import FLOAT_DTYPES, check_int, check_kernel_device, check_tensor
from ..runtime import pdl_start


def _check_routing_args(router_logits, top_k: int, renormalize: bool) -> None:
    check_tensor("router_logits", router_logits, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_int("top_k", top_k, low=1)
    num_experts = router_logits.shape[1]
    if num_experts == 0:
        raise ValueError("router_logits must have at least one expert column, got shape (M, 0)")
    if top_k > num_experts:
        raise ValueError(f"top_k ({top_k}) must be <= the number of experts ({num_experts}) in router_logits")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")


def softmax_fp32(router_logits: torch.Tensor) -> torch.Tensor:
    """Steps 1-2: fp32 max-subtracted softmax with NaN/Inf probabilities set to 0. (M, E) float32."""
    logits = router_logits.float()
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    num = shifted.exp()
    probs = num / num.sum(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(probs), probs, torch.zeros_like(probs))


def topk_softmax(
    router_logits: torch.Tensor, top_k: int, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, E) logits -> ``(topk_weights float32 (M, k), topk_ids int32 (M, k))``, in torch."""
    _check_routing_args(router_logits, top_k, renormalize)
    probs = softmax_fp32(router_logits)  # (M, E)
    # A stable descending sort keeps equal probabilities in expert-id order: ties go to the lower id.
    # (torch.topk makes no such promise.)
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    topk_weights = sorted_probs[:, :top_k].contiguous()  # (M, k)
    topk_ids = sorted_ids[:, :top_k].to(torch.int32).contiguous()  # (M, k)
    if renormalize:
        total = topk_weights.sum(dim=-1, keepdim=True)  # (M, 1)
        topk_weights = topk_weights / torch.where(total > 0, total, torch.ones_like(total))
    return topk_weights, topk_ids


# ----------------------------------------------------------------------------------------------------
# The Triton kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def topk_softmax_kernel(
    # Pointers to the input (M, E) and the two (M, TOP_K) outputs
    logits_ptr, weights_ptr, ids_ptr,
    # Sizes
    M, E,
    # Strides of the logits (the outputs are contiguous)
    stride_lm, stride_le,
    # Meta-parameters
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """One program routes BLOCK_M rows: load them once, softmax, pick TOP_K, renormalize, store."""
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows
    offs_e = tl.arange(0, BLOCK_E)  # (BLOCK_E,) experts, padded to a power of two
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,) top-k slots, padded to a power of two
    mask_m = offs_m < M
    mask_e = offs_e < E

    # -- softmax in fp32. Padding columns read -inf so they contribute exp(-inf) = 0 to the sum.
    ptrs = logits_ptr + offs_m[:, None].to(tl.int64) * stride_lm + offs_e[None, :] * stride_le
    x = tl.load(ptrs, mask=mask_m[:, None] & mask_e[None, :], other=float("-inf")).to(tl.float32)
    row_max = tl.max(x, axis=1)  # (BLOCK_M,)
    num = tl.exp(x - row_max[:, None])
    p = num / tl.sum(num, axis=1)[:, None]  # (BLOCK_M, BLOCK_E)
    # NaN (p != p) or Inf probabilities become 0; padding columns become -1 so they are never picked.
    p = tl.where((p == p) & (p < float("inf")), p, 0.0)
    p = tl.where(mask_e[None, :], p, -1.0)

    # -- top-k by repeated arg-max: the largest value, and among equal values the lowest expert id.
    topk_w = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    topk_i = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int32)
    for j in range(TOP_K):
        best = tl.max(p, axis=1)  # (BLOCK_M,)
        best_id = tl.min(tl.where(p == best[:, None], offs_e[None, :], BLOCK_E), axis=1)  # (BLOCK_M,)
        topk_w = tl.where(offs_k[None, :] == j, best[:, None], topk_w)
        topk_i = tl.where(offs_k[None, :] == j, best_id[:, None], topk_i)
        p = tl.where(offs_e[None, :] == best_id[:, None], -2.0, p)  # taken: below every real value

    # -- renormalize by the sum of the chosen (unused slots hold 0); a sum <= 0 divides by 1.
    if RENORMALIZE:
        total = tl.sum(topk_w, axis=1)  # (BLOCK_M,)
        topk_w = topk_w / tl.where(total > 0.0, total, 1.0)[:, None]

    out_offs = offs_m[:, None].to(tl.int64) * TOP_K + offs_k[None, :]
    out_mask = mask_m[:, None] & (offs_k[None, :] < TOP_K)
    tl.store(weights_ptr + out_offs, topk_w, mask=out_mask)
    tl.store(ids_ptr + out_offs, topk_i, mask=out_mask)


def _routing_block_m(num_tokens: int, block_e: int) -> int:
    # Interpreter: each program costs a numpy round-trip, so few big programs. GPU: ~2K fp32 values
    # per program keeps registers low and the grid wide.
    budget = 16384 if runtime.INTERPRET else 2048
    return max(1, min(triton.next_power_of_2(max(num_tokens, 1)), budget // block_e))


def topk_softmax_triton(
    router_logits: torch.Tensor, top_k: int, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract and results as :func:`topk_softmax`, computed by one Triton kernel."""
    _check_routing_args(router_logits, top_k, renormalize)
    check_kernel_device("router_logits", router_logits)
    num_tokens, num_experts = router_logits.shape
    device = router_logits.device
    topk_weights = empty(num_tokens, top_k, dtype=torch.float32, device=device)  # (M, k)
    topk_ids = empty(num_tokens, top_k, dtype=torch.int32, device=device)  # (M, k)
    if num_tokens == 0:
        return topk_weights, topk_ids
    block_e = triton.next_power_of_2(num_experts)
    block_m = _routing_block_m(num_tokens, block_e)
    grid = (triton.cdiv(num_tokens, block_m),)
    use_pdl = runtime.pdl(device, num_tokens * top_k)
    with runtime.quiet_interpreter():
        topk_softmax_kernel[grid](
            router_logits, topk_weights, topk_ids,
            num_tokens, num_experts,
            router_logits.stride(0), router_logits.stride(1),
            TOP_K=top_k, RENORMALIZE=renormalize,
            BLOCK_M=block_m, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(top_k),
            USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4,
        )
    return topk_weights, topk_ids


__all__ = ["softmax_fp32", "topk_softmax", "topk_softmax_triton", "topk_softmax_kernel"]

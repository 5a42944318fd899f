"""The MoE layer as a plain loop over experts: the specification every fast path is checked against.

For each expert e, gather the tokens routed to it, run its SwiGLU MLP

    y = w2[e] @ (silu(w1[e] @ x) * (w3[e] @ x))        with w13[e] = [w1[e]; w3[e]]  (2I, H)

and add ``routing weight * y`` into those tokens' output rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import FLOAT_DTYPES, check_moe_args


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(..., 2I) -> (..., I): ``silu(gate) * up`` where gate is the first half and up the second."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up must have an even last dim, got shape {tuple(gate_up.shape)}")
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def moe_reference(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: torch.Tensor | None = None,
    fp64: bool = False,
) -> torch.Tensor:
    """The MoE expert computation, one expert at a time.

    Args:
        hidden_states: (M, H) tokens.
        w13: (E, 2I, H) fused gate/up weights; rows [0, I) are w1 (gate), rows [I, 2I) are w3 (up).
        w2: (E, H, I) down weights.
        topk_weights: (M, k) routing weights (fp32 from routing).
        topk_ids: (M, k) expert ids (int32 or int64).
        expert_map: optional (E_global,) map from a global expert id to this rank's local id, or -1
            for experts held elsewhere (they contribute nothing here). ``topk_ids`` are then global ids.
        fp64: compute in float64 and return float64 (the oracle); otherwise compute and return in the
            dtype of ``hidden_states``.

    Returns:
        (M, H): for each token, the routing-weighted sum of its experts' outputs.
    """
    num_tokens, hidden, _, num_local, _ = check_moe_args(
        hidden_states, w13, w2, topk_weights, topk_ids, expert_map, dtypes=FLOAT_DTYPES + (torch.float64,)
    )
    dtype = torch.float64 if fp64 else hidden_states.dtype
    x = hidden_states.to(dtype)
    local_ids = topk_ids.long() if expert_map is None else expert_map.long()[topk_ids.long()]  # (M, k)
    out = torch.zeros(num_tokens, hidden, dtype=dtype, device=hidden_states.device)  # (M, H)
    for e in range(num_local):
        token, slot = torch.nonzero(local_ids == e, as_tuple=True)  # which tokens chose e, in which slot
        if token.numel() == 0:
            continue
        gate_up = x[token] @ w13[e].to(dtype).T  # (n, 2I)
        act = silu_and_mul(gate_up)  # (n, I)
        y = act @ w2[e].to(dtype).T  # (n, H)
        out.index_add_(0, token, y * topk_weights[token, slot].to(dtype)[:, None])
    return out


def moe_reference_fp8(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w1_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    block_shape: list[int] | None = None,
    per_channel_quant: bool = False,
) -> torch.Tensor:
    """The FP8 w8a8 layer in float64: the loop over the dequantized e4m3 weights, with both activation
    quantizations emulated exactly as the kernels make them (x before GEMM1; the activation, rounded to x's
    dtype, before GEMM2), so that a fast FP8 path can be held to a tight tolerance. Scales as in
    ``fused_experts(..., use_fp8_w8a8=True)``; returns (M, H) float64."""
    from .kernels.quant import dequantize_weight, quantize_activation_torch

    num_tokens, top_k = topk_ids.shape
    group = None if block_shape is None else block_shape[1]

    def quantized(a: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        q, s = quantize_activation_torch(a, group, per_token=per_channel_quant, scale=scale)
        if group is not None:
            s = s.repeat_interleave(group, dim=1)[:, : a.shape[1]]
        return q.double() * s.double()

    w13_d = dequantize_weight(w13, w1_scale, block_shape).double()  # (E, 2I, H)
    w2_d = dequantize_weight(w2, w2_scale, block_shape).double()  # (E, H, I)
    x = quantized(hidden_states, a1_scale)  # (M, H)
    ids = topk_ids.long().reshape(-1)  # (M * k,) by flat id t * k + j
    rows_of = [torch.nonzero(ids == e).flatten() for e in range(w13.shape[0])]  # flat ids per expert
    act = torch.zeros(ids.numel(), w2.shape[2], dtype=torch.float64, device=x.device)  # (M * k, I)
    for e, rows in enumerate(rows_of):
        act[rows] = silu_and_mul(x[rows // top_k] @ w13_d[e].T)
    act = quantized(act.to(hidden_states.dtype), a2_scale)  # stored in x's dtype, then quantized
    y = torch.zeros(ids.numel(), w2.shape[1], dtype=torch.float64, device=x.device)  # (M * k, H)
    for e, rows in enumerate(rows_of):
        y[rows] = act[rows] @ w2_d[e].T
    y = y * topk_weights.reshape(-1, 1).double()
    return y.view(num_tokens, top_k, w2.shape[1]).sum(dim=1)


__all__ = ["silu_and_mul", "moe_reference", "moe_reference_fp8", "check_moe_args"]

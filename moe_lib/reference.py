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


__all__ = ["silu_and_mul", "moe_reference", "check_moe_args"]

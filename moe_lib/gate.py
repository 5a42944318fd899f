"""The router ("gate"): one linear map H -> E, no bias, replicated on every tensor-parallel rank.

Its output, the router logits, is in the activation dtype; routing (moe_lib.routing) turns them into
fp32 probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import FLOAT_DTYPES, check_int, check_tensor

#: Hugging Face's Mixtral config: ``initializer_range = 0.02``; its router weight is drawn N(0, 0.02^2).
INITIALIZER_RANGE = 0.02


class MoEGate(nn.Module):
    """``logits = x @ weight.T`` with ``weight`` of shape (num_experts, hidden_size).

    Replicated: every rank holds the whole (small: E x H) weight and computes all E logits, so each rank
    routes every token identically without communication.
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_int("hidden_size", hidden_size, low=1)
        check_int("num_experts", num_experts, low=1)
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        # Draw on the CPU in fp32 so a seed gives the same router on every machine and dtype.
        w = torch.empty(num_experts, hidden_size).normal_(0.0, INITIALIZER_RANGE, generator=generator)
        self.weight = nn.Parameter(w.to(device=device, dtype=dtype or torch.get_default_dtype()))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., E) router logits, in the dtype of the weight."""
        check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES + (torch.float64,),
                     device=self.weight.device)
        if hidden_states.dim() == 0 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must have last dim hidden_size={self.hidden_size}, "
                f"got shape {tuple(hidden_states.shape)}"
            )
        return nn.functional.linear(hidden_states.to(self.weight.dtype), self.weight)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_experts={self.num_experts}, bias=False"


__all__ = ["MoEGate", "INITIALIZER_RANGE"]

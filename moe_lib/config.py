"""Shapes of an MoE layer, with Mixtral 8x7B's numbers and a small preset that runs quickly on a CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class MoEConfig:
    """One MoE layer: ``num_experts`` SwiGLU experts of width ``intermediate_size``, ``top_k`` per token."""

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        for name in ("num_experts", "top_k", "hidden_size", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"MoEConfig.{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"MoEConfig.{name} must be >= 1, got {value}")
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEConfig.top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        if self.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"MoEConfig.dtype must be a floating dtype, got {self.dtype}")

    # --- sizes -----------------------------------------------------------------------------------
    @property
    def params_per_expert(self) -> int:
        """w1 and w3 (I x H each) plus w2 (H x I)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def gate_params(self) -> int:
        return self.num_experts * self.hidden_size

    @property
    def total_params(self) -> int:
        """Every parameter of the layer: all experts and the router."""
        return self.num_experts * self.params_per_expert + self.gate_params

    @property
    def active_params(self) -> int:
        """Parameters one token touches: its top_k experts and the router."""
        return self.top_k * self.params_per_expert + self.gate_params

    @property
    def bytes_per_element(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    @property
    def weight_bytes(self) -> int:
        """Bytes of the whole layer's weights in ``dtype``."""
        return self.total_params * self.bytes_per_element

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of the expert GEMMs one token needs (the router's H x E is included)."""
        return 2 * self.active_params

    def replace(self, **changes) -> MoEConfig:
        fields = {k: getattr(self, k) for k in ("num_experts", "top_k", "hidden_size", "intermediate_size", "dtype")}
        fields.update(changes)
        return MoEConfig(**fields)


#: Mixtral 8x7B: every one of its 32 decoder layers has this MoE block.
MIXTRAL_8X7B = MoEConfig(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336, dtype=torch.bfloat16)
#: Mixtral 8x7B has this many decoder layers, each with one MoE block.
MIXTRAL_8X7B_LAYERS = 32

#: Same structure, sizes small enough for the CPU interpreter to run in a blink (fp32: the interpreter
#: computes bf16 wrongly, see moe_lib.runtime).
TINY = MoEConfig(num_experts=8, top_k=2, hidden_size=64, intermediate_size=128, dtype=torch.float32)

__all__ = ["MoEConfig", "MIXTRAL_8X7B", "MIXTRAL_8X7B_LAYERS", "TINY"]

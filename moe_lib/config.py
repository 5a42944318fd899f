"""Shapes of an MoE layer, with Mixtral 8x7B's numbers and a small preset that runs quickly on a CPU; how its
experts are quantized (:class:`QuantConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validate import check_block_shape

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


@dataclass(frozen=True)
class QuantConfig:
    """FP8 (e4m3) experts, as an FP8 checkpoint's ``quantization_config`` describes them (same field names;
    parsed from and written to ``config.json`` by :mod:`moe_lib.checkpoint`).

    - ``quant_method``: "fp8", the only one (weights float8_e4m3fn with fp32 scales);
    - ``activation_scheme``: "dynamic" (each call quantizes the activations with scales of its own) or "static"
      (one calibrated scale per GEMM, read from the checkpoint's ``input_scale``);
    - ``weight_block_size``: None for one scale per expert and weight (per tensor), or ``(bn, bk)``, two
      powers of two, for one scale per bn x bk tile (block-wise, DeepSeek style; activations then dynamic per
      token and group of bk columns, so "static" is refused).

    The router, attention and everything outside the experts stay in the model's dtype.
    """

    quant_method: str = "fp8"
    activation_scheme: str = "dynamic"
    weight_block_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.quant_method != "fp8":
            raise ValueError(f"QuantConfig.quant_method must be 'fp8', got {self.quant_method!r}")
        if self.activation_scheme not in ("dynamic", "static"):
            raise ValueError(
                f"QuantConfig.activation_scheme must be 'dynamic' or 'static', got {self.activation_scheme!r}"
            )
        if self.weight_block_size is not None:
            try:
                block = check_block_shape(self.weight_block_size)
            except ValueError:
                raise ValueError(f"QuantConfig.weight_block_size must be None or [bn, bk], two positive powers of "
                                 f"two, got {self.weight_block_size!r}") from None
            object.__setattr__(self, "weight_block_size", block)  # a list from JSON becomes a (hashable) tuple
            if self.activation_scheme == "static":
                raise ValueError("QuantConfig: activation_scheme='static' does not go with weight_block_size "
                                 "(block-wise weights quantize activations per token group, always dynamically)")

    @property
    def static(self) -> bool:
        """Static activation scales (one per GEMM, from the checkpoint)."""
        return self.activation_scheme == "static"

    @property
    def block_shape(self) -> list[int] | None:
        """``weight_block_size`` as fused_experts' ``block_shape`` takes it."""
        return None if self.weight_block_size is None else list(self.weight_block_size)


__all__ = ["MoEConfig", "QuantConfig", "MIXTRAL_8X7B", "MIXTRAL_8X7B_LAYERS", "TINY"]

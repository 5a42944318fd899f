"""How fast a layer call could be: the bytes it must read over the copy bandwidth and its FLOPs over the
matmul rate. Pure arithmetic (no GPU needed): the benchmark stores each point's floor, notebooks redo it."""

from __future__ import annotations

from .._validate import check_int
from ..config import MIXTRAL_8X7B, MoEConfig

#: Mixtral 8x7B's layer as the benchmark records it (``"shape"`` of a run), from config.MIXTRAL_8X7B.
MIXTRAL = {"num_experts": MIXTRAL_8X7B.num_experts, "top_k": MIXTRAL_8X7B.top_k,
           "hidden": MIXTRAL_8X7B.hidden_size, "intermediate": MIXTRAL_8X7B.intermediate_size}


def shape_record(config: MoEConfig) -> dict[str, int]:
    """The ``shape`` dict of a benchmark record for a layer config."""
    return {"num_experts": config.num_experts, "top_k": config.top_k, "hidden": config.hidden_size,
            "intermediate": config.intermediate_size}


def expected_experts_touched(num_tokens: int, num_experts: int, top_k: int) -> float:
    """Expected number of distinct experts hit by ``num_tokens`` tokens routed uniformly at random.

    One token misses a given expert with probability 1 - k/E, so M independent tokens all miss it with
    probability (1 - k/E)^M."""
    check_int("num_tokens", num_tokens, low=0)
    check_int("num_experts", num_experts, low=1)
    check_int("top_k", top_k, low=1, high=num_experts)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** num_tokens)


def floor_us(m: int, tp: int, ceilings: dict[str, float], shape: dict = MIXTRAL, experts: float | None = None,
             bytes_per_weight: int = 2) -> dict[str, float]:
    """Bytes over bandwidth (the touched experts' weights, once) and FLOPs over the matmul rate, for M tokens
    on one of tp ranks. ``experts``: how many distinct experts the routing touched (default: the expectation
    for uniform routing); ``ceilings``: ``copy_TBps`` and ``matmul_TFLOPs``."""
    e, k, h, n = shape["num_experts"], shape["top_k"], shape["hidden"], shape["intermediate"] // tp
    bytes_per_expert = 3 * h * n * bytes_per_weight  # w1, w3, w2
    weight_bytes = (expected_experts_touched(m, e, k) if experts is None else experts) * bytes_per_expert
    flops = 2 * m * k * 3 * h * n
    mem = weight_bytes / (ceilings["copy_TBps"] * 1e12) * 1e6
    mma = flops / (ceilings["matmul_TFLOPs"] * 1e12) * 1e6
    return {"weight_bytes": weight_bytes, "flops": flops, "memory_us": mem, "compute_us": mma,
            "floor_us": max(mem, mma)}


__all__ = ["MIXTRAL", "shape_record", "expected_experts_touched", "floor_us"]

"""Triton kernels of the fused-MoE path (they run unchanged in the interpreter and on a GPU)."""

from .align import moe_align_block_size, moe_align_block_size_torch
from .fused_moe import fused_experts, fused_moe, get_config

__all__ = ["moe_align_block_size", "moe_align_block_size_torch", "fused_experts", "fused_moe", "get_config"]

"""Every Triton kernel of the fused-MoE path and the one plan that decides how a call runs them.

    routing.py    fp32 softmax top-k (the router's choice)      align.py      sort by expert, pad to BLOCK_M
    fused_moe.py  the grouped GEMM, gather and k-sum kernels    configs.py    tuned tables (vLLM's names)
    experts.py    the plan; fused_experts / fused_moe run it

They run unchanged in the Triton interpreter (CPU) and compiled on a GPU.
"""

from .align import moe_align_block_size, moe_align_block_size_torch
from .configs import get_config
from .experts import fused_experts, fused_moe, make_plan, plan_call
from .routing import topk_softmax, topk_softmax_triton

__all__ = ["moe_align_block_size", "moe_align_block_size_torch", "fused_experts", "fused_moe", "get_config",
           "make_plan", "plan_call", "topk_softmax", "topk_softmax_triton"]

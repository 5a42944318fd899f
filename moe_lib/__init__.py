"""moe_lib: the Mixtral MoE layer as vLLM runs it, rebuilt to be read, tested and timed.

``runtime`` is imported first on purpose: without CUDA it switches Triton to its interpreter before any
module below defines a ``@triton.jit`` kernel. The model side (``MixtralMoE``, ``MoEGate``) is imported on first
use, so that ``python -m moe_lib.checkpoint`` and friends run their module once, without a runpy warning.
"""

import importlib

from . import runtime  # noqa: I001  (must come first)
from .config import MIXTRAL_8X7B, TINY, MoEConfig
from .kernels.routing import topk_softmax, topk_softmax_triton
from .reference import moe_reference, silu_and_mul
from .testing import assert_close, rel_err, verdict

_LAZY = {"MoEGate": "gate", "MixtralMoE": "layer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'moe_lib' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "runtime",
    "MoEConfig",
    "MIXTRAL_8X7B",
    "TINY",
    "MoEGate",
    "MixtralMoE",
    "topk_softmax",
    "topk_softmax_triton",
    "moe_reference",
    "silu_and_mul",
    "rel_err",
    "assert_close",
    "verdict",
]

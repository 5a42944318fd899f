"""The public kernels as PyTorch custom operators: ``torch.ops.moe_lib.*``.

    torch.ops.moe_lib.topk_softmax(router_logits, top_k, renormalize)              -> (weights, ids)
    torch.ops.moe_lib.moe_align_block_size(topk_ids, block_size, num_experts, expert_map, num_local, check_ids)
                                                                                 -> (sorted ids, expert ids, total)
    torch.ops.moe_lib.fused_experts(x, w13, w2, topk_weights, topk_ids, expert_map, config, check_ids,
                                    <FP8 keywords>) -> out
    torch.ops.moe_lib.fused_moe(x, w13, w2, router_logits, top_k, renormalize, expert_map, config, check_ids,
                                <FP8 keywords>) -> out

(the FP8 keywords are fused_experts': use_fp8_w8a8, per_channel_quant, w1_scale, w2_scale, a1_scale, a2_scale,
block_shape, check_scales.)

Each runs exactly the Python function of the same name (so the same bits), and has a fake implementation
that computes the output's shape and dtype from the inputs' — with every check that needs no tensor values —
so that ``torch.compile`` (dynamic shapes included) traces through a call without running it. ``config`` is
the JSON text of a config dict (:func:`moe_lib.kernels.experts.config_json`), since an operator takes no dicts.
:func:`~moe_lib.kernels.experts.fused_experts`, :func:`~moe_lib.kernels.experts.fused_moe` and
:class:`moe_lib.layer.MixtralMoE` call these operators by themselves while they are being compiled, and the
plain functions otherwise (an operator call costs some microseconds of dispatch in eager mode).

Why ``torch.library.custom_op`` and not ``triton_op``: a ``triton_op`` lets Inductor trace into the Triton
launches, which only works when everything around them is traceable torch code. Ours is not, on purpose: the
plan decides tiles and layouts on the host from the concrete M (a symbolic M would make each M a recompile or
force one config), the ids are checked on the host, tensor descriptors (TMA) are built on the host, and the
CPU runs the kernels in the Triton interpreter, which Inductor cannot call. An opaque ``custom_op`` keeps one
code path for eager, compiled and CUDA-graph runs — the same bits everywhere — at the price that Inductor
cannot fuse into our kernels (there is nothing around them worth fusing: the gate's matmul is outside).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from .._validate import check_bool, check_experts_args, check_has_data, check_router_logits
from .align import _check_align_args, align_sizes, moe_align_block_size
from .routing import _check_routing_args, topk_softmax_triton

NAMESPACE = "moe_lib"
#: What fused_experts / fused_moe run: the eager functions of moe_lib.kernels.experts, which imports this module
#: (to call the ops while it is compiled) and so hands them over with :func:`implement` instead.
_EAGER: dict[str, Callable] = {}


def implement(name: str, fn: Callable) -> None:
    """Set the eager function that the op ``name`` runs (done once, by moe_lib.kernels.experts)."""
    if name not in ("fused_experts", "fused_moe"):
        raise ValueError(f"no op {name!r} takes its implementation from outside this module")
    _EAGER[name] = fn


def _config(config: str | None) -> dict | None:
    if config is None:
        return None
    try:
        return json.loads(config)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config must be the JSON text of a config dict, got {config!r} ({exc})") from None


# ----------------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{NAMESPACE}::topk_softmax", mutates_args=(),
                         schema="(Tensor router_logits, int top_k, bool renormalize=True) -> (Tensor, Tensor)")
def topk_softmax(router_logits, top_k, renormalize=True):
    return topk_softmax_triton(router_logits, top_k, renormalize)


@topk_softmax.register_fake
def _(router_logits, top_k, renormalize=True):
    _check_routing_args(router_logits, top_k, renormalize)
    check_has_data("router_logits", router_logits)
    m = router_logits.shape[0]
    return (router_logits.new_empty(m, top_k, dtype=torch.float32),
            router_logits.new_empty(m, top_k, dtype=torch.int32))


# ----------------------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op(
    f"{NAMESPACE}::moe_align_block_size", mutates_args=(),
    schema="(Tensor topk_ids, int block_size, int num_experts, Tensor? expert_map=None, int? num_local=None, "
           "bool check_ids=True) -> (Tensor, Tensor, Tensor)")
def align(topk_ids, block_size, num_experts, expert_map=None, num_local=None, check_ids=True):
    return moe_align_block_size(topk_ids, block_size, num_experts, expert_map, num_local=num_local,
                                check_ids=check_ids)


@align.register_fake
def _(topk_ids, block_size, num_experts, expert_map=None, num_local=None, check_ids=True):
    _check_align_args(topk_ids, block_size, num_experts, expert_map, num_local, False)
    check_bool("check_ids", check_ids)
    max_len, max_blocks = align_sizes(topk_ids.numel(), block_size, num_experts)
    new = topk_ids.new_empty
    return (new(max_len, dtype=torch.int32), new(max_blocks, dtype=torch.int32), new(1, dtype=torch.int32))


# ----------------------------------------------------------------------------------------------------
# The experts, and routing + experts
# ----------------------------------------------------------------------------------------------------
#: The FP8 part of both schemas (fused_experts' keywords, vLLM's names).
_FP8_SCHEMA = ("bool use_fp8_w8a8=False, bool per_channel_quant=False, Tensor? w1_scale=None, Tensor? w2_scale=None, "
               "Tensor? a1_scale=None, Tensor? a2_scale=None, int[]? block_shape=None, bool check_scales=True")


def _fp8(use_fp8_w8a8, per_channel_quant, w1_scale, w2_scale, a1_scale, a2_scale, block_shape) -> dict:
    return dict(use_fp8_w8a8=use_fp8_w8a8, per_channel_quant=per_channel_quant, w1_scale=w1_scale,
                w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale,
                block_shape=None if block_shape is None else list(block_shape))


@torch.library.custom_op(
    f"{NAMESPACE}::fused_experts", mutates_args=(),
    schema="(Tensor hidden_states, Tensor w13, Tensor w2, Tensor topk_weights, Tensor topk_ids, "
           f"Tensor? expert_map=None, str? config=None, bool check_ids=True, {_FP8_SCHEMA}) -> Tensor")
def fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, expert_map=None, config=None, check_ids=True,
                  use_fp8_w8a8=False, per_channel_quant=False, w1_scale=None, w2_scale=None, a1_scale=None,
                  a2_scale=None, block_shape=None, check_scales=True):
    fp8 = _fp8(use_fp8_w8a8, per_channel_quant, w1_scale, w2_scale, a1_scale, a2_scale, block_shape)
    return _EAGER["fused_experts"](hidden_states, w13, w2, topk_weights, topk_ids, expert_map, _config(config),
                                   check_ids, check_scales=check_scales, **fp8)


@fused_experts.register_fake
def _(hidden_states, w13, w2, topk_weights, topk_ids, expert_map=None, config=None, check_ids=True,
      use_fp8_w8a8=False, per_channel_quant=False, w1_scale=None, w2_scale=None, a1_scale=None, a2_scale=None,
      block_shape=None, check_scales=True):
    fp8 = _fp8(use_fp8_w8a8, per_channel_quant, w1_scale, w2_scale, a1_scale, a2_scale, block_shape)
    check_experts_args(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, check_ids, fp8)
    check_bool("check_scales", check_scales)
    return hidden_states.new_empty(hidden_states.shape)


@torch.library.custom_op(
    f"{NAMESPACE}::fused_moe", mutates_args=(),
    schema="(Tensor hidden_states, Tensor w13, Tensor w2, Tensor router_logits, int top_k, bool renormalize=True, "
           f"Tensor? expert_map=None, str? config=None, bool check_ids=True, {_FP8_SCHEMA}) -> Tensor")
def fused_moe(hidden_states, w13, w2, router_logits, top_k, renormalize=True, expert_map=None, config=None,
              check_ids=True, use_fp8_w8a8=False, per_channel_quant=False, w1_scale=None, w2_scale=None,
              a1_scale=None, a2_scale=None, block_shape=None, check_scales=True):
    fp8 = _fp8(use_fp8_w8a8, per_channel_quant, w1_scale, w2_scale, a1_scale, a2_scale, block_shape)
    return _EAGER["fused_moe"](hidden_states, w13, w2, router_logits, top_k, renormalize, expert_map=expert_map,
                               config=_config(config), check_ids=check_ids, check_scales=check_scales, **fp8)


@fused_moe.register_fake
def _(hidden_states, w13, w2, router_logits, top_k, renormalize=True, expert_map=None, config=None,
      check_ids=True, use_fp8_w8a8=False, per_channel_quant=False, w1_scale=None, w2_scale=None, a1_scale=None,
      a2_scale=None, block_shape=None, check_scales=True):
    check_router_logits(router_logits, hidden_states, w13, expert_map)
    _check_routing_args(router_logits, top_k, renormalize)
    m = router_logits.shape[0]
    fp8 = _fp8(use_fp8_w8a8, per_channel_quant, w1_scale, w2_scale, a1_scale, a2_scale, block_shape)
    check_experts_args(hidden_states, w13, w2, router_logits.new_empty(m, top_k, dtype=torch.float32),
                       router_logits.new_empty(m, top_k, dtype=torch.int32), expert_map, check_ids, fp8)
    check_bool("check_scales", check_scales)
    return hidden_states.new_empty(hidden_states.shape)


#: name -> the operator, for tests and documentation
OPS = {"topk_softmax": topk_softmax, "moe_align_block_size": align, "fused_experts": fused_experts,
       "fused_moe": fused_moe}

__all__ = ["NAMESPACE", "OPS", "implement", "topk_softmax", "align", "fused_experts", "fused_moe"]

"""A transformers Mixtral with moe_lib's layers: every ``MixtralSparseMoeBlock`` swapped for a
:class:`moe_lib.layer.MixtralMoE`, and the routing those layers chose recorded.

    load_mixtral        one call: transformers loads the checkpoint (strictly), every MoE block becomes a MixtralMoE;
                        FP8 checkpoints too (transformers loads all but the experts, the MixtralMoE layers read those)
    moe_blocks          the (name, module) of every MixtralSparseMoeBlock in a model
    replace_moe_blocks  swap them for MixtralMoE layers loaded from a checkpoint or from the blocks themselves
    record_routing      collect each layer's (topk_weights, topk_ids) while a block of code runs
    register_experts_implementation
                        moe_lib's fused experts as transformers' ``experts_implementation="moe_lib"``: the
                        model keeps its own blocks and router; only the expert computation runs here

The two ways differ in the router: a swapped block routes with moe_lib's fp32 top-k (vLLM's, ties to the lower
id), a registered implementation with transformers' own (``torch.topk``). Both give the golden greedy tokens of
the tiny model (tests/test_model.py).

The layer is :mod:`moe_lib.layer`; the names of the weights are parsed by :mod:`moe_lib.checkpoint`. The whole
tiny model on real tensor-parallel processes is :mod:`moe_lib.parallel.golden`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ._validate import check_tensor
from .checkpoint import (
    TINY_MIXTRAL,
    iter_moe_weights,
    layer_index,
    load_hf_model,
    load_hf_model_except_experts,
    open_checkpoint,
    read_quant_config,
)
from .kernels.experts import fused_experts
from .layer import MixtralMoE

#: The name under which moe_lib registers its experts with transformers.
EXPERTS_IMPLEMENTATION = "moe_lib"


def moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every Hugging Face ``MixtralSparseMoeBlock`` in ``model``, in order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ == "MixtralSparseMoeBlock"]


def replace_moe_blocks(
    model: nn.Module,
    checkpoint: str | Path | None = None,
    *,
    tp_size: int | None = None,
    tp_rank: int | None = None,
    reduce_results: bool = True,
    tp_group=None,
) -> list[MixtralMoE]:
    """Swap every ``MixtralSparseMoeBlock`` of a transformers Mixtral model for a :class:`MixtralMoE`.

    Each new layer loads its weights from ``checkpoint`` (a safetensors file or directory, read one layer at
    a time by :mod:`moe_lib.checkpoint`), or, when it is None, from the block it replaces (transformers 5.x
    names). Sizes come from ``model.config``; the dtype and device from the block's router weight; FP8 experts
    (``quant_config``) from the checkpoint's config.json (:func:`moe_lib.checkpoint.read_quant_config`).
    Returns the new layers in order. The blocks are replaced only after every layer has loaded.
    """
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError("model has no MixtralSparseMoeBlock to replace")
    cfg = model.config
    source = open_checkpoint(checkpoint) if checkpoint is not None else None
    quant = read_quant_config(source) if source is not None else None
    layers = []
    for name, block in blocks:
        weight = block.gate.weight
        layer = MixtralMoE(
            cfg.num_local_experts, cfg.num_experts_per_tok, cfg.hidden_size, cfg.intermediate_size,
            params_dtype=weight.dtype, tp_size=tp_size, tp_rank=tp_rank, reduce_results=reduce_results,
            tp_group=tp_group, device=weight.device, quant_config=quant,
        )
        if source is not None:
            index = layer_index(name)
            if index is None:
                raise ValueError(f"cannot tell the layer index of MoE block {name!r} (expected ...layers.<i>.<name>)")
            layer.load_weights(iter_moe_weights(source, index))
        else:
            layer.load_weights((f"{name}.{key}", t) for key, t in block.state_dict().items())
        layers.append(layer)
    for (name, _), layer in zip(blocks, layers, strict=True):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return layers


def load_mixtral(
    checkpoint_dir: str | Path = TINY_MIXTRAL,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    **replace_options,
) -> nn.Module:
    """A transformers Mixtral whose MoE blocks are moe_lib's, in one call.

    transformers loads the checkpoint (:func:`moe_lib.checkpoint.load_hf_model`: safetensors only, ``strict``
    by default), the model moves to ``device``/``dtype``, and :func:`replace_moe_blocks` swaps every MoE block
    for a :class:`MixtralMoE` loaded from the block itself (nothing is read twice). ``replace_options``:
    replace_moe_blocks' tensor-parallel keywords. Returns the model, in eval mode.

    An FP8 checkpoint (config.json with a ``quantization_config``, e.g. data/tiny_mixtral_fp8): transformers
    cannot read its experts, so it loads everything else
    (:func:`moe_lib.checkpoint.load_hf_model_except_experts`, ``strict`` likewise) and the FP8 MixtralMoE
    layers read their experts from the checkpoint; ``dtype`` is that of the activations and of every
    non-expert weight.
    """
    fp8 = read_quant_config(checkpoint_dir) is not None
    model = (load_hf_model_except_experts if fp8 else load_hf_model)(checkpoint_dir, strict=strict)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    replace_moe_blocks(model, checkpoint_dir if fp8 else None, **replace_options)
    return model


def hf_experts_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                       top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' experts module (``MixtralExperts``: ``gate_up_proj`` (E, 2I, H) = [w1; w3] and
    ``down_proj`` (E, H, I), SiLU) computed by :func:`~moe_lib.kernels.experts.fused_experts`.

    The ids come from the model's own router; an id of E (transformers' mark for an expert on another rank) is
    dropped like every out-of-range id, without a host check (so the call captures in a CUDA graph).
    Inference only: the kernels have no backward, so a call that would need one raises instead of returning
    an output without gradients.
    """
    layout = {k: getattr(experts, k, v) for k, v in (("has_bias", False), ("has_gate", True), ("is_transposed", False),
                                                     ("is_concatenated", True), ("has_post_expert_norm", False))}
    act = getattr(getattr(experts, "config", None), "hidden_act", "silu")
    if layout != {"has_bias": False, "has_gate": True, "is_transposed": False, "is_concatenated": True,
                  "has_post_expert_norm": False} or act not in ("silu", "swish"):
        raise NotImplementedError(
            f"experts_implementation={EXPERTS_IMPLEMENTATION!r} computes Mixtral's experts (gated SiLU, [w1; w3] "
            f"concatenated, no bias); {type(experts).__name__} has {layout}, hidden_act={act!r}"
        )
    check_tensor("hidden_states", hidden_states, ndim=2)
    w13, w2 = experts.gate_up_proj, experts.down_proj
    if torch.is_grad_enabled() and any(t.requires_grad for t in (hidden_states, w13, w2, top_k_weights)):
        raise RuntimeError(
            f"experts_implementation={EXPERTS_IMPLEMENTATION!r} is for inference (the kernels have no backward): "
            "run the model under torch.no_grad() or torch.inference_mode()"
        )
    return fused_experts(hidden_states, w13, w2, top_k_weights, top_k_index, check_ids=False)


def register_experts_implementation() -> bool:
    """Make ``experts_implementation="moe_lib"`` a choice of transformers (5.x: its ``ExpertsInterface``):

        register_experts_implementation()
        model = MixtralForCausalLM.from_pretrained(path, experts_implementation="moe_lib")
        # or: model.set_experts_implementation("moe_lib")

    Idempotent. Returns False (and registers nothing) when the installed transformers has no such interface.
    """
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError:
        return False
    ExpertsInterface.register(EXPERTS_IMPLEMENTATION, hf_experts_forward)
    return True


@contextlib.contextmanager
def record_routing(layers: Sequence[MixtralMoE]) -> Iterator[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Within the block, every forward of ``layers[l]`` appends its (topk_weights, topk_ids) to ``log[l]``.

    These are the very routing decisions the layer used (not recomputed), one (M, k) pair per call.
    """
    layers = list(layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, MixtralMoE):
            raise TypeError(f"layers[{i}] must be a MixtralMoE, got {type(layer).__name__}")
    log: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in layers]
    previous = [layer._routing_log for layer in layers]
    for layer, entries in zip(layers, log, strict=True):
        layer._routing_log = entries
    try:
        yield log
    finally:
        for layer, prev in zip(layers, previous, strict=True):
            layer._routing_log = prev


__all__ = ["load_mixtral", "moe_blocks", "replace_moe_blocks", "record_routing", "register_experts_implementation",
           "hf_experts_forward", "EXPERTS_IMPLEMENTATION"]

"""A transformers Mixtral with moe_lib's layers: every ``MixtralSparseMoeBlock`` swapped for a
:class:`moe_lib.layer.MixtralMoE`, and the routing those layers chose recorded.

    moe_blocks          the (name, module) of every MixtralSparseMoeBlock in a model
    replace_moe_blocks  swap them for MixtralMoE layers loaded from a checkpoint or from the blocks themselves
    record_routing      collect each layer's (topk_weights, topk_ids) while a block of code runs

The layer is :mod:`moe_lib.layer`; the names of the weights are parsed by :mod:`moe_lib.checkpoint`. The whole
tiny model on real tensor-parallel processes is :mod:`moe_lib.parallel.golden`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .checkpoint import iter_moe_weights, layer_index, open_checkpoint
from .layer import MixtralMoE


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
    names). Sizes come from ``model.config``; the dtype and device from the block's router weight.
    Returns the new layers in order. The blocks are replaced only after every layer has loaded.
    """
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError("model has no MixtralSparseMoeBlock to replace")
    cfg = model.config
    source = open_checkpoint(checkpoint) if checkpoint is not None else None
    layers = []
    for name, block in blocks:
        weight = block.gate.weight
        layer = MixtralMoE(
            cfg.num_local_experts, cfg.num_experts_per_tok, cfg.hidden_size, cfg.intermediate_size,
            params_dtype=weight.dtype, tp_size=tp_size, tp_rank=tp_rank, reduce_results=reduce_results,
            tp_group=tp_group, device=weight.device,
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


__all__ = ["moe_blocks", "replace_moe_blocks", "record_routing"]

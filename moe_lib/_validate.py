"""Argument checks shared by every public function: a bad input raises a ValueError/TypeError that
names the argument, before any kernel sees it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int32, torch.int64)


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Type, rank, dtype and device of one tensor argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    return t


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """``t.shape[dim] == expected``, where ``what`` says where the expected size comes from."""
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {t.shape[dim]} in dim {dim} (shape {tuple(t.shape)}) but {what} is {expected}"
        )


def value_range(t: torch.Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor with one device sync (one kernel, one copy to the host)."""
    lo, hi = torch.aminmax(t)
    return tuple(int(v) for v in torch.stack([lo, hi]).tolist())


def check_routing(
    topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_tokens: int, num_experts: int, device: torch.device,
    *, check_ids: bool = True,
) -> int:
    """The (M, top_k) pair that routing produces; returns top_k. Ids must lie in [0, num_experts) (checked on
    the host unless ``check_ids`` is False)."""
    check_tensor("topk_weights", topk_weights, ndim=2, dtypes=(torch.float32,) + FLOAT_DTYPES[1:], device=device)
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=INT_DTYPES, device=device)
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} must have the same shape"
        )
    check_dim("topk_ids", topk_ids, 0, num_tokens, "the number of tokens in hidden_states")
    if check_ids and topk_ids.numel():
        lo, hi = value_range(topk_ids)
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"topk_ids must lie in [0, {num_experts}) (num_experts), got values in [{lo}, {hi}]")
    return topk_ids.shape[1]


def check_moe_args(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None = None,
    *,
    dtypes=FLOAT_DTYPES,
    check_ids: bool = True,
) -> tuple[int, int, int, int, int]:
    """Validate an expert computation's inputs; returns (M, H, I, E_local, top_k). ``check_ids=False`` skips
    only the value ranges of topk_ids and expert_map (the one check that syncs with the device)."""
    if not isinstance(check_ids, bool):
        raise TypeError(f"check_ids must be a bool, got {type(check_ids).__name__}")
    check_tensor("hidden_states", hidden_states, ndim=2, dtypes=dtypes)
    device = hidden_states.device
    check_tensor("w13", w13, ndim=3, dtypes=dtypes, device=device)
    check_tensor("w2", w2, ndim=3, dtypes=dtypes, device=device)
    num_tokens, hidden = hidden_states.shape
    num_local, two_i, _ = w13.shape
    check_dim("w13", w13, 2, hidden, "hidden_size (hidden_states.shape[1])")
    if two_i % 2:
        raise ValueError(f"w13 must have an even dim 1 (2 * intermediate_size), got shape {tuple(w13.shape)}")
    inter = two_i // 2
    check_dim("w2", w2, 0, num_local, "the number of experts in w13")
    check_dim("w2", w2, 1, hidden, "hidden_size (hidden_states.shape[1])")
    check_dim("w2", w2, 2, inter, "intermediate_size (w13.shape[1] // 2)")
    num_global = num_local
    if expert_map is not None:
        check_tensor("expert_map", expert_map, ndim=1, dtypes=INT_DTYPES, device=device)
        num_global = expert_map.shape[0]
        if check_ids and expert_map.numel():
            lo, hi = value_range(expert_map)
            if lo < -1 or hi >= num_local:
                raise ValueError(
                    f"expert_map must map to -1 or a local expert id in [0, {num_local}), got values in [{lo}, {hi}]"
                )
    top_k = check_routing(topk_weights, topk_ids, num_tokens, num_global, device, check_ids=check_ids)
    return num_tokens, hidden, inter, num_local, top_k


def check_kernel_device(name: str, t: torch.Tensor) -> None:
    """Compiled Triton kernels need CUDA tensors; the interpreter (no GPU) takes CPU tensors."""
    from . import runtime

    if not runtime.INTERPRET and t.device.type != "cuda":
        raise ValueError(f"{name} is on {t.device}; Triton kernels on this GPU machine need CUDA tensors")

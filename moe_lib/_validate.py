"""Argument checks shared by every public function: a bad input raises a ValueError/TypeError that
names the argument, before any kernel sees it.

What is checked when (the ids' *values* are the only check that reads tensor data):

- types, ranks, shapes, dtypes and devices: always, on the host, from metadata (no device sync);
- meta tensors (shape only, no data) are refused by every function that computes (:func:`check_has_data`);
- the values of ``topk_ids`` (in [0, E)) and ``expert_map`` (in [-1, local experts)): on the host with one
  device sync, unless the caller passed ``check_ids=False`` — or a CUDA graph is being captured on the
  current stream, where a sync is impossible (:func:`ids_checkable`). Unchecked values are never trusted:
  the kernels drop an out-of-range id (its slot adds nothing) and treat an out-of-range map value as -1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_DTYPE = torch.float8_e4m3fn
INT_DTYPES = (torch.int32, torch.int64)


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_has_data(name: str, t: torch.Tensor) -> torch.Tensor:
    """A tensor with memory behind it: a meta tensor (shape only) cannot be computed on or checked."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without data); pass a tensor on a real device")
    return t


def check_bool(name: str, value) -> bool:
    """A real bool (not 0/1, not None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


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


def ids_checkable(device: torch.device) -> bool:
    """Whether the ids' values can be read on the host now: not while a CUDA graph is captured on the current
    stream (a copy to the host is illegal there; the kernels' own masking then stands in for the check)."""
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_id_values(
    topk_ids: torch.Tensor, num_experts: int, expert_map: torch.Tensor | None = None, num_local: int | None = None,
    *, check_ids: bool = True,
) -> bool:
    """The values: ids in [0, num_experts), expert_map values in [-1, num_local) (default num_experts). Checked
    on the host (one device sync each) when ``check_ids`` and :func:`ids_checkable`; returns whether they were."""
    if not (check_ids and ids_checkable(topk_ids.device)):
        return False
    if expert_map is not None and expert_map.numel():
        num_local = num_experts if num_local is None else num_local
        lo, hi = value_range(expert_map)
        if lo < -1 or hi >= num_local:
            raise ValueError(
                f"expert_map must map to -1 or a local expert id in [0, {num_local}), got values in [{lo}, {hi}]"
            )
    if topk_ids.numel():
        lo, hi = value_range(topk_ids)
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"topk_ids must lie in [0, {num_experts}) (num_experts), got values in [{lo}, {hi}]")
    return True


def check_routing(
    topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_tokens: int, num_experts: int, device: torch.device,
    *, check_ids: bool = True,
) -> int:
    """The (M, top_k) pair that routing produces; returns top_k. Ids must lie in [0, num_experts) (checked on
    the host unless ``check_ids`` is False, see :func:`check_id_values`); the shapes are always checked."""
    check_tensor("topk_weights", topk_weights, ndim=2, dtypes=(torch.float32,) + FLOAT_DTYPES[1:], device=device)
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=INT_DTYPES, device=device)
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} must have the same shape"
        )
    check_dim("topk_ids", topk_ids, 0, num_tokens, "the number of tokens in hidden_states")
    check_id_values(topk_ids, num_experts, check_ids=check_ids)
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
    weight_dtypes=None,
    check_ids: bool = True,
) -> tuple[int, int, int, int, int]:
    """Validate an expert computation's inputs; returns (M, H, I, E_local, top_k). ``check_ids=False`` skips
    only the value ranges of topk_ids and expert_map (the one check that syncs with the device); so does a
    CUDA graph capture (:func:`ids_checkable`). ``weight_dtypes``: those of w13 and w2 (default ``dtypes``)."""
    check_bool("check_ids", check_ids)
    check_tensor("hidden_states", hidden_states, ndim=2, dtypes=dtypes)
    check_has_data("hidden_states", hidden_states)  # the others must share its device
    device = hidden_states.device
    weight_dtypes = dtypes if weight_dtypes is None else weight_dtypes
    check_tensor("w13", w13, ndim=3, dtypes=weight_dtypes, device=device)
    check_tensor("w2", w2, ndim=3, dtypes=weight_dtypes, device=device)
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
    top_k = check_routing(topk_weights, topk_ids, num_tokens, num_global, device, check_ids=False)
    check_id_values(topk_ids, num_global, expert_map, num_local, check_ids=check_ids)
    return num_tokens, hidden, inter, num_local, top_k


def check_experts_args(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, check_ids: bool,
                       fp8: dict | None = None) -> str | None:
    """Every check of a fused-experts call that reads no tensor values: :func:`check_moe_args` without the id
    values, one dtype for tokens and weights (or e4m3 weights and their scales, :func:`check_fp8_args`, when
    ``fp8`` holds fused_experts' FP8 keywords), a device the kernels run on (also the custom op's fake).
    Returns the FP8 weight-scale layout ("tensor", "channel", "block") or None."""
    fp8 = fp8 or {}
    use_fp8 = fp8.get("use_fp8_w8a8", False)
    check_bool("use_fp8_w8a8", use_fp8)
    if not use_fp8 and isinstance(w13, torch.Tensor) and w13.dtype == FP8_DTYPE:
        raise TypeError("w13 is float8_e4m3fn: pass use_fp8_w8a8=True with w1_scale and w2_scale")
    check_moe_args(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, check_ids=False,
                   weight_dtypes=(FP8_DTYPE,) if use_fp8 else None)
    check_bool("check_ids", check_ids)
    if not use_fp8 and not (hidden_states.dtype == w13.dtype == w2.dtype):
        raise TypeError(
            f"hidden_states ({hidden_states.dtype}), w13 ({w13.dtype}) and w2 ({w2.dtype}) must share a dtype"
        )
    mode = check_fp8_args(w13, w2, **fp8)
    check_kernel_device("hidden_states", hidden_states)
    return mode


#: The FP8 keywords of fused_experts, with their defaults (vLLM's names).
FP8_KEYWORDS = dict(use_fp8_w8a8=False, per_channel_quant=False, w1_scale=None, w2_scale=None, a1_scale=None,
                    a2_scale=None, block_shape=None)


def check_block_shape(block_shape) -> tuple[int, int]:
    """``[bn, bk]``: two positive powers of two (the scale blocks of FP8 weights)."""
    if (not isinstance(block_shape, (list, tuple)) or len(block_shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and not v & (v - 1)
                       for v in block_shape)):
        raise ValueError(f"block_shape must be [bn, bk], two positive powers of two, got {block_shape!r}")
    return int(block_shape[0]), int(block_shape[1])


def check_fp8_args(w13, w2, *, use_fp8_w8a8=False, per_channel_quant=False, w1_scale=None, w2_scale=None,
                   a1_scale=None, a2_scale=None, block_shape=None) -> str | None:
    """The FP8 keywords against the (already checked) weights, from metadata only; returns the weight-scale
    layout: "tensor" (E,), "channel" (E, N, 1) with ``per_channel_quant`` or "block" (E, ceil(N/bn),
    ceil(K/bk)) with ``block_shape=[bn, bk]``; None without ``use_fp8_w8a8``. Scale values: :func:`check_fp8_values`."""
    check_bool("use_fp8_w8a8", use_fp8_w8a8)
    check_bool("per_channel_quant", per_channel_quant)
    given = {k: v for k, v in dict(w1_scale=w1_scale, w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale,
                                   block_shape=block_shape).items() if v is not None}
    if not use_fp8_w8a8:
        if given or per_channel_quant:
            names = ", ".join(list(given) + (["per_channel_quant"] if per_channel_quant else []))
            raise ValueError(f"{names} given without use_fp8_w8a8=True")
        return None
    device = w13.device
    for name in ("w1_scale", "w2_scale"):
        if name not in given:
            raise ValueError(f"use_fp8_w8a8=True needs {name} (the weights' fp32 scales)")
    if block_shape is not None:
        bn, bk = check_block_shape(block_shape)
        if per_channel_quant:
            raise ValueError("per_channel_quant and block_shape exclude each other: pick one scale layout")
        mode = "block"
    else:
        mode = "channel" if per_channel_quant else "tensor"
    num_local, two_i, hidden = w13.shape
    for name, scale, w in (("w1_scale", w1_scale, w13), ("w2_scale", w2_scale, w2)):
        _, n, k = w.shape
        want = {"tensor": (num_local,), "channel": (num_local, n, 1),
                "block": (num_local, -(-n // bn), -(-k // bk)) if mode == "block" else None}[mode]
        check_tensor(name, scale, dtypes=(torch.float32,), device=device)
        if tuple(scale.shape) != want:
            raise ValueError(f"{name} must have shape {want} for {mode}-wise scales of "
                             f"{'w13' if name == 'w1_scale' else 'w2'} {tuple(w.shape)}, got {tuple(scale.shape)}")
    for name, scale in (("a1_scale", a1_scale), ("a2_scale", a2_scale)):
        if scale is None:
            continue
        if mode == "block":
            raise ValueError(f"{name}: static activation scales do not go with block_shape (per token group "
                             "scales are always dynamic); pass None")
        check_tensor(name, scale, dtypes=(torch.float32,), device=device)
        if scale.numel() != 1:
            raise ValueError(f"{name} must hold one static scale (one element), got shape {tuple(scale.shape)}")
    return mode


def check_fp8_values(**scales) -> None:
    """Every given scale is finite and positive (one device sync for all of them)."""
    named = [(k, v) for k, v in scales.items() if v is not None and v.numel()]
    if not named:
        return
    lows = torch.stack([torch.where(v.isfinite(), v, -1.0).amin() for _, v in named]).tolist()
    bad = [k for (k, _), low in zip(named, lows, strict=True) if not low > 0]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be finite and > 0 everywhere")


def check_router_logits(router_logits, hidden_states, w13, expert_map=None) -> None:
    """(M, E) logits for an MoE layer: one row per token of hidden_states, one column per expert (E: w13's
    experts, or the global experts of expert_map), on hidden_states' device."""
    check_tensor("hidden_states", hidden_states, ndim=2)
    check_tensor("w13", w13, ndim=3)
    check_tensor("router_logits", router_logits, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,),
                 device=hidden_states.device)
    if expert_map is not None:
        check_tensor("expert_map", expert_map, ndim=1, dtypes=INT_DTYPES)
    num_experts, what = (w13.shape[0], "the number of experts in w13") if expert_map is None else (
        expert_map.shape[0], "the number of global experts (expert_map's length)")
    check_dim("router_logits", router_logits, 0, hidden_states.shape[0], "the number of tokens in hidden_states")
    check_dim("router_logits", router_logits, 1, num_experts, what)


def check_kernel_device(name: str, t: torch.Tensor) -> None:
    """Compiled Triton kernels need CUDA tensors; the interpreter (no GPU) takes CPU tensors; nothing takes a
    meta tensor."""
    from . import runtime

    check_has_data(name, t)
    if not runtime.INTERPRET and t.device.type != "cuda":
        raise ValueError(f"{name} is on {t.device}; Triton kernels on this GPU machine need CUDA tensors")

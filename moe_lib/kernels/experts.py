"""The experts of an MoE layer for routed tokens: ONE plan decides how a call runs, then its steps run.

    make_plan(shapes, dtype, target, config, ...)  ->  Plan        pure: every decision, no tensors touched
    plan.bind(x, w13, w2, topk_weights, topk_ids)   ->  BoundPlan   buffers allocated, one closure per step
    bound.run()                                     ->  (M, H)      the steps in order

:func:`fused_experts` is exactly that. The benchmark's breakdown times ``bound.steps`` one by one and the tuner
searches configs through ``make_plan``, so all three run the same decisions — and because a plan is computed
from shapes and a :class:`~moe_lib.runtime.Target`, CPU tests check every GPU decision too.

The steps, for M tokens routed to top_k experts each::

    clear    out (M, H) = 0                                  only when GEMM2 adds into it ("atomic" k-sum) and
                                                             GEMM1 does not clear it itself (its default)
    align    topk_ids (M, k) -> sorted_token_ids, expert_ids, num_tokens_post_padded
             (one token: its k experts are distinct, slot j simply gets block j: no kernel, "decode" layout)
    gather   a1 (EM, H) = x in sorted order                  only with the TMA layout
    quant1   x -> e4m3 and its scales                        only FP8 (use_fp8_w8a8)
    gemm1    act = silu(x @ w1[e].T) * (x @ w3[e].T)         (M*k, I), or (EM, I) in sorted order with TMA
    quant2   act -> e4m3 and its scales                      only FP8
    gemm2    weight * act @ w2[e].T  -> out (top_k 1: "direct"; top_k 2: "atomic" add) or partial (M*k, H)
    sum_k    out = sum over k of partial                     only for the "pass" k-sum (top_k >= 3)

No decision changes a bit of the result: each is a different schedule of the same arithmetic.

Batch invariance is a promise, not an accident: a token's output row is bitwise the same whether it is computed
alone or inside a batch of any size, with any tuned config, and on every repeated call
(``tests/kernels/test_batch_invariance.py`` holds it on the CPU and the GPU). Every row's arithmetic depends on
its own token, its experts and K only: tiles, layouts and waves move rows around but never split or reorder a
row's reduction over K, and the k-sum adds a token's own slots in slot order (or two terms into zero). A future
speed-up that would break this (split-K, a reduction across tokens, more than two atomic terms) may only come as
a :func:`make_plan` keyword that is off by default.

The entry points capture in a CUDA graph and compile: the default ``check_ids=True`` reads the ids on the host
only when that is possible (never during a capture, see :func:`moe_lib._validate.ids_checkable`), and under
``torch.compile`` they run as the custom ops of :mod:`moe_lib.kernels.ops`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace

import torch
import triton

from .. import runtime
from .._alloc import empty
from .._validate import (
    FP8_KEYWORDS,
    check_bool,
    check_experts_args,
    check_fp8_values,
    check_id_values,
    check_router_logits,
    ids_checkable,
)
from ..runtime import Target
from . import ops
from .align import align_launch, align_sizes
from .configs import get_config, load_config_table, nearest_row, split_config
from .fused_moe import gather_sorted_rows, invoke_fused_moe_kernel, moe_sum, tma_usable
from .quant import quantize_activation
from .routing import topk_softmax_triton

#: Every step a plan can have, in the order they run.
STEPS = ("clear", "align", "gather", "quant1", "gemm1", "quant2", "gemm2", "sum_k")
#: How the sum over each token's k expert outputs is made.
K_SUMS = ("direct", "atomic", "pass")
#: A split last wave saves at most half a wave: measured on an H100 it paid from one wave up to about this many
#: (past that it gained under 2 %; the bench runs before and after it are in data/bench/history/).
SPLIT_TAIL_MAX_WAVES = 24
#: FP8 on Hopper: the tensor core sums e4m3 products in a short accumulator; Triton's default (None) lets it run
#: over the whole K loop, as vLLM does. Measured on the H200: against the fp64 layer with the activation
#: quantizations emulated, whole-K sums are off by 1.2-2.6e-2 at M >= 300 (an fp32 add after every 128 products:
#: 3.8-4.7e-3; data/bench/history/fp8_accumulate_H200/) — but against the exact bf16 layer both are 6.6e-2 (what
#: e4m3 itself costs), and with the best tiles tried for each the fp32 adds take 14-25 % longer at M = 1024-4096
#: (data/bench/history/fp8_large_m_H200/tiles.json). So None, vLLM's arithmetic; 128 (one K tile) is the accurate
#: sum the tight GPU tests pin and the bench's ``--fp8-accumulate 128`` measures.
FP8_ACCUMULATE: int | None = None
#: GEMM1 clears the output GEMM2 adds into, instead of a clear launch of its own, for calls of at most this many
#: (token, slot) rows. Measured on the H200 (data/bench/history/clear_in_gemm1_H200.json): 1-2 µs less per call
#: at M = 2 to 256 at every TP size (a launch saved); at M = 1024 GEMM1 grew by more than the 3.5 µs clear.
CLEAR_IN_GEMM1_MAX_ROWS = 512


@dataclass(frozen=True)
class GemmStep:
    """One launch of :func:`~moe_lib.kernels.fused_moe.fused_moe_kernel`, as the plan decided it."""

    config: dict  # the six tile keys (configs.CONFIG_KEYS)
    n: int  # columns of C
    a_rows_div: int  # flat id -> A row
    c_rows_div: int  # flat id -> C row (top_k: add into the token's row)
    gated: bool
    mul_routed_weight: bool
    tma: bool
    c_sorted: bool
    split_tail: bool
    scales: int = 0  # FP8: fused_moe_kernel's SCALES (1 per tensor, 2 per channel / token, 3 per block)
    group_n: int = 1  # FP8 per block: the weight scale's block
    group_k: int = 1
    fp8_acc: int | None = None  # FP8: products summed in the tensor core between fp32 adds
    clears_out: bool = False  # GEMM1: its programs first zero the output GEMM2 adds into

    def launch_args(self) -> dict:
        return dict(a_rows_div=self.a_rows_div, c_rows_div=self.c_rows_div, gated=self.gated,
                    mul_routed_weight=self.mul_routed_weight, config=self.config, tma=self.tma,
                    c_sorted=self.c_sorted, split_tail=self.split_tail, scales=self.scales, group_n=self.group_n,
                    group_k=self.group_k, fp8_acc=self.fp8_acc)


@dataclass(frozen=True)
class Fp8:
    """The FP8 w8a8 part of a plan (vLLM's ``use_fp8_w8a8``): e4m3 weights with fp32 scales, activations
    quantized to e4m3 before each GEMM, x and the output in their own dtype.

    weights       activations (a given a*_scale is static: one value; else computed per call)
    "tensor"      one scale per tensor
    "channel"     one per token (static: one value)
    "block"       one per token and group of block_shape[1] columns (never static)
    """

    weights: str  # "tensor", "channel" or "block"
    block_shape: tuple[int, int] | None = None
    static_a1: bool = False
    static_a2: bool = False
    accumulate: int | None = None  # fp8_acc of both GEMMs (see GemmStep)

    @property
    def scales(self) -> int:
        return {"tensor": 1, "channel": 2, "block": 3}[self.weights]

    def quantize_kwargs(self) -> dict:
        """How :func:`~moe_lib.kernels.quant.quantize_activation` quantizes a dynamic activation."""
        if self.weights == "block":
            return {"group": self.block_shape[1]}
        return {"per_token": self.weights == "channel"}


@dataclass(frozen=True)
class Plan:
    """Every decision of one fused-experts call. Built by :func:`make_plan`; run with :meth:`bind`."""

    num_tokens: int
    hidden: int
    inter: int
    top_k: int
    num_experts: int  # ids are in [0, num_experts) (global ids when there is an expert_map)
    num_local: int  # experts in w13 / w2
    dtype: torch.dtype
    target: Target
    config: dict  # the whole config (validated), as given or looked up
    layout: str  # "empty" (M = 0), "decode" (one token, no kernel) or "align"
    tma: bool  # tokens copied into sorted order, tiles read through tensor descriptors
    k_sum: str  # one of K_SUMS
    pdl: bool  # programmatic dependent launch for every kernel of the call
    sorted_len: int  # EM: length of sorted_token_ids
    gemm1: GemmStep | None
    gemm2: GemmStep | None
    steps: tuple[str, ...]
    buffers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> shape, in dtype
    fp8: Fp8 | None = None
    zeroed: tuple[str, ...] = ()  # buffers that start as zeros (rows no kernel writes are read)

    @property
    def block_m(self) -> int:
        return self.config["BLOCK_SIZE_M"]

    def describe(self) -> str:
        """One line per decision, for notebooks and error messages."""
        if self.layout == "empty":
            return "no tokens: nothing to run"
        lines = [f"steps    : {' -> '.join(self.steps)}",
                 f"layout   : {self.layout}, BLOCK_SIZE_M {self.block_m}, {self.sorted_len} sorted rows"
                 + (", TMA (sorted copy, tensor descriptors)" if self.tma else ""),
                 f"k-sum    : {self.k_sum}" + (" (GEMM1 clears the output first)" if self.gemm1.clears_out else ""),
                 f"PDL      : {self.pdl}"]
        if self.fp8 is not None:
            f = self.fp8
            acts = "".join(f", a{i} {'static' if s else 'dynamic'}" for i, s in ((1, f.static_a1), (2, f.static_a2)))
            lines.append(f"FP8      : e4m3 weights, {f.weights}-wise scales"
                         + (f" {list(f.block_shape)}" if f.block_shape else "") + acts
                         + (f", fp32 add every {f.accumulate} products" if f.accumulate else ""))
        for name, g in (("gemm1", self.gemm1), ("gemm2", self.gemm2)):
            c = g.config
            lines.append(f"{name}    : N={g.n} tiles {c['BLOCK_SIZE_M']}x{c['BLOCK_SIZE_N']}x{c['BLOCK_SIZE_K']}, "
                         f"group {c['GROUP_SIZE_M']}, {c['num_warps']} warps, {c['num_stages']} stages"
                         + (", split tail" if g.split_tail else ""))
        lines.append("buffers  : " + (", ".join(f"{k} {v}" for k, v in self.buffers.items()) or "none"))
        return "\n".join(lines)

    def bind(self, hidden_states: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
             topk_ids: torch.Tensor, expert_map: torch.Tensor | None = None, *, ids_valid: bool = False,
             scales: dict | None = None) -> BoundPlan:
        """Allocate the plan's buffers and the output for these (already validated) tensors. ``ids_valid``: the
        values of topk_ids and expert_map were checked (else out-of-range values are dropped, never trusted).
        ``scales``: FP8 plans' w1_scale, w2_scale, a1_scale, a2_scale (static ones; None = dynamic)."""
        return BoundPlan(self, hidden_states, w13, w2, topk_weights, topk_ids, expert_map, ids_valid=ids_valid,
                         scales=scales)


def _split_tail(target: Target, sorted_len: int, n: int, config: dict, allowed: bool) -> bool:
    """Whether a sparse last wave of this GEMM runs as half-width tiles: on a GPU (waves exist), big tiles
    (BLOCK_SIZE_M >= 64 holds an SM), half tiles still >= 16 wide, and 1 to SPLIT_TAIL_MAX_WAVES waves."""
    if not allowed or target.num_sms is None:
        return False
    bm, bn = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"]
    tiles = triton.cdiv(sorted_len, bm) * triton.cdiv(n, bn)
    return bm >= 64 and bn >= 32 and target.num_sms <= tiles <= SPLIT_TAIL_MAX_WAVES * target.num_sms


def _fit_shared_memory(config: dict, target: Target, element: int, gated: bool = False) -> dict:
    """The config with as many pipeline stages as fit in one program's shared memory on this GPU: each stage
    holds an A tile and one B tile (two in the gated GEMM1). Tuned bf16 tables always fit; a config meant for
    2-byte elements used with fp32, or a table from a bigger GPU, loses stages instead of failing to launch."""
    if target.shared_memory is None:
        return config
    per_stage = config["BLOCK_SIZE_K"] * (config["BLOCK_SIZE_M"] + (2 if gated else 1) * config["BLOCK_SIZE_N"])
    stages = config["num_stages"]
    while stages > 1 and stages * per_stage * element > target.shared_memory:
        stages -= 1
    return config if stages == config["num_stages"] else {**config, "num_stages": stages}


@functools.lru_cache(maxsize=1024)
def _make_plan(num_tokens, hidden, inter, top_k, num_experts, num_local, dtype, target, config_json, has_expert_map,
               ids_checked, ids_int32, descriptors_ok, split_tail, fuse_k_sum, pdl, config_dir, fp8,
               clear_in_gemm1) -> Plan:
    if config_json is None and fp8 is not None:
        # FP8 takes its own table (vLLM's ",dtype=fp8_w8a8" name; per block: the block table, else the per-tensor
        # one, its K tiles cut to the scale block below); without one, the bf16 table's tiles (an e4m3 stage
        # takes half their shared memory), else the heuristic.
        table = None
        for block_shape in dict.fromkeys((fp8.block_shape, None)):  # a block table, else the per-tensor one
            if table is None and not target.interpret:
                table = load_config_table(num_experts, inter, target.name, dtype="fp8_w8a8",
                                          block_shape=block_shape, config_dir=config_dir)
        config = nearest_row(table, num_tokens) if table else get_config(
            num_tokens, num_experts, inter, hidden, top_k, device_name=target.name, interpret=target.interpret,
            config_dir=config_dir)
    elif config_json is None:
        # Tables are per dtype, as vLLM names them: bf16 and fp16 share the plain table; fp32 has its own
        # (",dtype=float32"; none ships: its tiles take twice the shared memory, so it takes the heuristic).
        config = get_config(num_tokens, num_experts, inter, hidden, top_k, device_name=target.name,
                            interpret=target.interpret, config_dir=config_dir,
                            dtype=None if dtype in (torch.bfloat16, torch.float16) else "float32")
    else:
        config = json.loads(config_json)
    up, down = split_config(config)
    up.pop("TMA", None)
    element = 1 if fp8 is not None else torch.finfo(dtype).bits // 8  # of the GEMMs' A and B tiles
    if fp8 is not None and fp8.block_shape is not None:  # a K tile never straddles two scale blocks
        up, down = ({**c, "BLOCK_SIZE_K": min(c["BLOCK_SIZE_K"], fp8.block_shape[1])} for c in (up, down))
    up, down = _fit_shared_memory(up, target, element, gated=True), _fit_shared_memory(down, target, element)
    if num_tokens == 0:
        return Plan(num_tokens, hidden, inter, top_k, num_experts, num_local, dtype, target, config, "empty", False,
                    "direct", False, 0, None, None, ())
    rows = num_tokens * top_k
    # The sum over k. One (validated) expert per token: GEMM2 writes the output itself. Two: GEMM2 adds each
    # slot's row into the cleared output — 0 + a + b rounds the same in either order, so atomics stay
    # deterministic (with three terms they would not). The interpreter has no bf16 atomics.
    if top_k == 1 and ids_checked:
        k_sum = "direct"
    elif fuse_k_sum and top_k <= 2 and not (target.interpret and dtype == torch.bfloat16):
        k_sum = "atomic"
    else:
        k_sum = "pass"
    layout = "decode" if num_tokens == 1 and not has_expert_map else "align"
    bm = up["BLOCK_SIZE_M"]
    sorted_len = top_k * bm if layout == "decode" else align_sizes(rows, bm, num_experts)[0]
    # The sorted layout read through tensor descriptors: asked for by the config, possible on Hopper (or in
    # the interpreter, which emulates descriptors) when every row of x and act is 16-byte aligned.
    # (FP8 reads A through pointers: its activation scales are indexed by token, not by sorted position.)
    row_bytes_ok = all(n * torch.finfo(dtype).bits // 8 % 16 == 0 for n in (hidden, inter))
    tma = (config.get("TMA", False) and (target.interpret or target.hopper) and descriptors_ok and row_bytes_ok
           and fp8 is None)
    # FP8 calls launch without PDL: measured on the H200 (data/bench/history/fp8_decode_H200/), one token with PDL
    # took 215 vs 123 us (TP 1) and 44.9 vs 32.7 us (TP 8) per 128x128 block, 124 vs 109 / 27.1 vs 25.1 per
    # tensor. The loss comes with the quantizing kernels: PDL on the GEMMs alone was within 1 us of none.
    use_pdl = ((rows <= runtime.PDL_MAX_ROWS and fp8 is None) if pdl is None else pdl) and target.hopper
    def quant(c):  # the FP8 fields of a GemmStep (a promotion interval is at most one K tile)
        if fp8 is None:
            return {}
        bn, bk = fp8.block_shape or (1, 1)
        acc = None if fp8.accumulate is None else min(fp8.accumulate, c["BLOCK_SIZE_K"])
        return dict(scales=fp8.scales, group_n=bn, group_k=bk, fp8_acc=acc)

    # The output GEMM2 adds into starts as zeros: cleared by GEMM1's programs (one launch fewer), or alone.
    if clear_in_gemm1 is None:
        clear_in_gemm1 = rows <= CLEAR_IN_GEMM1_MAX_ROWS
    clears_out = k_sum == "atomic" and clear_in_gemm1
    gemm1 = GemmStep(up, inter, 1 if tma else top_k, 1, True, False, tma, tma,
                     _split_tail(target, sorted_len, inter, up, split_tail), **quant(up), clears_out=clears_out)
    gemm2 = GemmStep(down, hidden, 1, top_k if k_sum == "atomic" else 1, False, True, tma, False,
                     _split_tail(target, sorted_len, hidden, down, split_tail), **quant(down))
    buffers = {}
    if tma:
        buffers["a1"] = (sorted_len, hidden)
    buffers["act"] = (sorted_len if tma else rows, inter)
    if k_sum == "pass":
        buffers["partial"] = (rows, hidden)
    # A dynamic per-tensor scale of act reads every row of it: rows of dropped (unchecked, out-of-range) ids,
    # which no GEMM1 program writes, must be zeros, not old memory.
    zeroed = ("act",) if (fp8 is not None and fp8.weights == "tensor" and not fp8.static_a2 and not ids_checked
                          and layout == "align") else ()
    # One token's layout needs no kernel: its int32 ids are the expert ids of its k blocks as they are.
    align = layout == "align" or not ids_int32
    q1, q2 = (("quant1",), ("quant2",)) if fp8 is not None else ((), ())
    steps = (("clear",) if k_sum == "atomic" and not clears_out else ()) + (("align",) if align else ()) + (
        ("gather",) if tma else ()) + q1 + ("gemm1",) + q2 + ("gemm2",) + (("sum_k",) if k_sum == "pass" else ())
    return Plan(num_tokens, hidden, inter, top_k, num_experts, num_local, dtype, target, config, layout, tma, k_sum,
                use_pdl, sorted_len, gemm1, gemm2, steps, buffers, fp8, zeroed)


def make_plan(
    num_tokens: int,
    hidden: int,
    inter: int,
    top_k: int,
    num_experts: int,
    *,
    dtype: torch.dtype,
    target: Target,
    num_local: int | None = None,
    config: dict | None = None,
    has_expert_map: bool = False,
    ids_checked: bool = True,
    ids_int32: bool = True,
    descriptors_ok: bool = True,
    split_tail: bool = True,
    fuse_k_sum: bool = True,
    pdl: bool | None = None,
    config_dir: str | None = None,
    fp8: Fp8 | None = None,
    clear_in_gemm1: bool | None = None,
) -> Plan:
    """Every decision of a fused-experts call, from shapes alone (cached).

    Args:
        num_tokens, hidden, inter, top_k: M, H, I (per rank), k.
        num_experts: the range of the ids (global experts with an expert map); num_local: experts in the
            weights (default num_experts).
        dtype: of x and the weights; target: where kernels run (:func:`moe_lib.runtime.target`).
        config: tile config (validated); default: the tuned table for (E, N, GPU) at the nearest M, else a
            heuristic (:mod:`moe_lib.kernels.configs`), tables also from ``config_dir``.
        has_expert_map: ids are global and mapped (no decode layout); ids_checked: ids were range-checked
            (only then may GEMM2 write the output directly for top_k = 1); ids_int32: topk_ids are contiguous
            int32 (then one token's layout needs no step at all: the ids are its blocks' expert ids).
        descriptors_ok: the weights' memory allows tensor descriptors (:func:`fused_moe.tma_usable`).
        split_tail, fuse_k_sum, clear_in_gemm1: allow a split last wave / the sum over k inside GEMM2 / GEMM1
            clearing the output that sum adds into (on by default, the last for calls of at most
            ``CLEAR_IN_GEMM1_MAX_ROWS`` rows; off only to measure or teach what they buy — none changes the result).
        pdl: programmatic dependent launch; None: for calls of at most ``runtime.PDL_MAX_ROWS`` rows (not FP8).
        fp8: the FP8 w8a8 scheme (:class:`Fp8`); None: dtype throughout.
    """
    if fp8 is not None and fp8.accumulate is None:
        fp8 = replace(fp8, accumulate=FP8_ACCUMULATE)  # (None again if the policy is Triton's default)
    config_json = None if config is None else json.dumps(_checked(config), sort_keys=True)
    return _make_plan(num_tokens, hidden, inter, top_k, num_experts, num_experts if num_local is None else num_local,
                      dtype, target, config_json, bool(has_expert_map), bool(ids_checked), bool(ids_int32),
                      bool(descriptors_ok),
                      bool(split_tail), bool(fuse_k_sum), pdl, None if config_dir is None else str(config_dir), fp8,
                      None if clear_in_gemm1 is None else bool(clear_in_gemm1))


def _checked(config: dict) -> dict:
    split_config(config)  # raises on anything a launch could not take
    return config


class BoundPlan:
    """A plan with its tensors: ``out``, the buffers, and ``steps`` (name -> a closure that runs that step
    alone, for the benchmark's breakdown). :meth:`run` runs them in order and returns ``out``."""

    def __init__(self, plan: Plan, x, w13, w2, topk_weights, topk_ids, expert_map=None, *, ids_valid: bool = False,
                 scales: dict | None = None):
        self.plan = p = plan
        device = x.device
        self.out = empty(p.num_tokens, p.hidden, dtype=p.dtype, device=device)
        self.buffers = {name: (torch.zeros if name in p.zeroed else empty)(*shape, dtype=p.dtype, device=device)
                        for name, shape in p.buffers.items()}
        self.steps: dict[str, callable] = {}
        if p.layout == "empty":
            return
        bm, top_k = p.block_m, p.top_k
        weights = topk_weights.reshape(-1)  # (M * k,) indexed by flat id
        if weights.dtype != torch.float32:
            weights = weights.to(torch.float32)
        ids = topk_ids.reshape(-1)  # (M * k,)
        if p.layout == "decode":
            sorted_ids, total = _decode_constants(top_k, bm, device)
            # slot j's block holds expert topk_ids[0, j]: the ids themselves, or an int32 copy made by "align"
            expert_ids = ids if "align" not in p.steps else empty(top_k, dtype=torch.int32, device=device)
            self.layout = (sorted_ids, expert_ids, total)
        else:
            max_len, max_blocks = align_sizes(ids.numel(), bm, p.num_experts)
            self.layout = tuple(empty(n, dtype=torch.int32, device=device) for n in (max_len, max_blocks, 1))
        act = self.buffers["act"]
        c2 = self.buffers.get("partial", self.out)
        a1 = self.buffers.get("a1", x)
        use_pdl = p.pdl
        num_sms = p.target.num_sms

        def clear():
            self.out.zero_()

        def align():
            if p.layout == "decode":
                # int64 ids (or strided ones) to the int32 expert ids; clamped first, so that an out-of-range
                # int64 id stays out of range (-1 or E: its block adds nothing) instead of wrapping around
                self.layout[1].copy_(ids.clamp(-1, p.num_experts))
            else:
                align_launch(topk_ids, bm, p.num_experts, expert_map, p.num_local, values_checked=ids_valid,
                             out=self.layout, use_pdl=use_pdl)

        def gather():
            gather_sorted_rows(x, self.layout[0], self.layout[2], top_k, out=a1, use_pdl=use_pdl)

        # FP8: quant1 / quant2 leave (e4m3 A, A's scales) here for the GEMMs; the weights' scales are given.
        scales = scales or {}
        self.quantized = {"gemm1": (a1, None), "gemm2": (act, None)}
        b_scales = {"gemm1": scales.get("w1_scale"), "gemm2": scales.get("w2_scale")}

        def quantize(gemm, a, static):
            if static is not None:
                self.quantized[gemm] = quantize_activation(a, scale=static, use_pdl=use_pdl)
            else:
                self.quantized[gemm] = quantize_activation(a, **p.fp8.quantize_kwargs(), use_pdl=use_pdl)

        def quant1():
            quantize("gemm1", x, scales.get("a1_scale"))

        def quant2():
            quantize("gemm2", act, scales.get("a2_scale"))

        def a_scale_of(s):  # a per-tensor scale is passed as one element
            return None if s is None else (s.reshape(1) if s.dim() == 0 else s)

        def gemm1():
            a, a_s = self.quantized["gemm1"]
            invoke_fused_moe_kernel(a, w13, act, weights, *self.layout, **p.gemm1.launch_args(),
                                    num_sms=num_sms, use_pdl=use_pdl, a_scale=a_scale_of(a_s),
                                    b_scale=b_scales["gemm1"], zero=self.out if p.gemm1.clears_out else None)

        def gemm2():
            a, a_s = self.quantized["gemm2"]
            invoke_fused_moe_kernel(a, w2, c2, weights, *self.layout, **p.gemm2.launch_args(),
                                    num_sms=num_sms, use_pdl=use_pdl, a_scale=a_scale_of(a_s),
                                    b_scale=b_scales["gemm2"])

        def sum_k():
            moe_sum(c2.view(p.num_tokens, top_k, p.hidden), self.out, topk_ids, p.num_experts, use_pdl=use_pdl)

        local = {"clear": clear, "align": align, "gather": gather, "quant1": quant1, "gemm1": gemm1, "quant2": quant2,
                 "gemm2": gemm2, "sum_k": sum_k}
        self.steps = {name: local[name] for name in p.steps}

    def run(self) -> torch.Tensor:
        for step in self.steps.values():
            step()
        return self.out


_DECODE_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _decode_constants(top_k: int, block_m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed part of one token's layout: sorted_token_ids = [0, pad.., 1, pad.., ...] (slot j at the start
    of block j, padding = top_k) and the padded total top_k * block_m. Cached per (k, block, device) — but not
    while a CUDA graph is captured, whose memory pool would own the cached tensors."""
    key = (top_k, block_m, device)
    if key in _DECODE_CONSTANTS:
        return _DECODE_CONSTANTS[key]
    sorted_ids = torch.full((top_k * block_m,), top_k, dtype=torch.int32, device=device)
    sorted_ids[::block_m] = torch.arange(top_k, dtype=torch.int32, device=device)
    total = torch.full((1,), top_k * block_m, dtype=torch.int32, device=device)
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        _DECODE_CONSTANTS[key] = (sorted_ids, total)
    return sorted_ids, total


def plan_call(hidden_states: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
              expert_map: torch.Tensor | None = None, config: dict | None = None, *, ids_checked: bool = True,
              **options) -> Plan:
    """:func:`make_plan` for these (validated) tensors: their shapes, dtype and device, the memory facts.
    ``options``: make_plan's policy keywords (split_tail, fuse_k_sum, clear_in_gemm1, pdl, config_dir, fp8)."""
    num_tokens, hidden = hidden_states.shape
    num_local, two_i = w13.shape[0], w13.shape[1]
    num_experts = num_local if expert_map is None else expert_map.shape[0]
    return make_plan(num_tokens, hidden, two_i // 2, topk_ids.shape[1], num_experts, num_local=num_local,
                     dtype=hidden_states.dtype, target=runtime.target(hidden_states.device), config=config,
                     has_expert_map=expert_map is not None, ids_checked=ids_checked,
                     ids_int32=topk_ids.dtype == torch.int32 and topk_ids.is_contiguous(),
                     descriptors_ok=tma_usable(w13, w2), **options)


def fused_experts(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: torch.Tensor | None = None,
    config: dict | None = None,
    check_ids: bool = True,
    use_fp8_w8a8: bool = False,
    per_channel_quant: bool = False,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    block_shape: list[int] | None = None,
    check_scales: bool = True,
) -> torch.Tensor:
    """The experts of an MoE layer for already-routed tokens.

    Args:
        hidden_states: (M, H) tokens, fp32/fp16/bf16.
        w13: (E, 2I, H) [w1; w3] per expert, same dtype (e4m3 with ``use_fp8_w8a8``); any strides.
        w2: (E, H, I) per expert, same dtype (e4m3 with ``use_fp8_w8a8``); any strides.
        topk_weights: (M, k) routing weights; topk_ids: (M, k) expert ids (global ids if expert_map).
        expert_map: optional (E_global,) global -> local expert id, -1 for experts on other ranks.
        config: kernel configuration (configs.CONFIG_KEYS, optionally "down": GEMM2 overrides, "TMA": the
            sorted layout read through tensor descriptors, used where the GPU and the strides allow it);
            validated like a tuned table's row; default: the tuned table for this shape and GPU, else a heuristic.
        check_ids: check on the host that ids lie in [0, E) and expert_map values in [-1, local experts)
            (one device sync; skipped while a CUDA graph is captured). False skips only that check (every
            shape, dtype and device check stays). Unchecked values are never trusted: an out-of-range id is
            dropped (its slot adds nothing), an out-of-range map value counts as -1, nothing is read or written
            out of bounds.
        use_fp8_w8a8: FP8 (vLLM's keywords): e4m3 weights with fp32 scales, the activations quantized to e4m3
            before each GEMM; x and the output keep their dtype. Weight scales: per tensor ``w1_scale`` (E,)
            and ``w2_scale`` (E,); per channel (``per_channel_quant``) (E, 2I, 1) and (E, H, 1), activations
            per token; per block (``block_shape=[bn, bk]``) (E, ceil(2I/bn), ceil(H/bk)) and (E, ceil(H/bn),
            ceil(I/bk)), activations per token and group of bk columns. ``a1_scale``/``a2_scale``: None for
            dynamic activation scales, or one fp32 value each (static; not with block_shape).
        check_scales: check on the host that every given scale is finite and > 0 (one device sync; skipped
            while a CUDA graph is captured). False skips only that check.

    Returns:
        (M, H) in the dtype of hidden_states: sum over k of weight * expert(x). Bitwise the same for a token
        whatever the batch around it (see the module docstring; FP8 with a dynamic per-tensor activation scale
        is the exception: the scale is the batch's).
    """
    check_bool("check_ids", check_ids)
    check_bool("check_scales", check_scales)
    fp8 = dict(use_fp8_w8a8=use_fp8_w8a8, per_channel_quant=per_channel_quant, w1_scale=w1_scale,
               w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale, block_shape=block_shape)
    if torch.compiler.is_compiling():
        return ops.fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, config_json(config),
                                 check_ids, **fp8, check_scales=check_scales)
    return run_fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, config, check_ids,
                             check_scales=check_scales, **fp8)


def run_fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, config, check_ids, *,
                      check_scales: bool = True, **fp8) -> torch.Tensor:
    """:func:`fused_experts` run eagerly: validate, plan, bind, run (what the custom op runs too)."""
    mode = check_experts_args(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, check_ids, fp8)
    num_experts = w13.shape[0] if expert_map is None else expert_map.shape[0]
    checked = check_id_values(topk_ids, num_experts, expert_map, w13.shape[0], check_ids=check_ids)
    scheme = scales = None
    if mode is not None:
        scales = {k: fp8.get(k) for k in ("w1_scale", "w2_scale", "a1_scale", "a2_scale")}
        if check_scales and ids_checkable(hidden_states.device):
            check_fp8_values(**scales)
        block = fp8.get("block_shape")
        scheme = Fp8(mode, None if block is None else tuple(int(v) for v in block),
                     static_a1=scales["a1_scale"] is not None, static_a2=scales["a2_scale"] is not None)
    plan = plan_call(hidden_states, w13, w2, topk_ids, expert_map, config, ids_checked=checked, fp8=scheme)
    return plan.bind(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, ids_valid=checked,
                     scales=scales).run()


@torch.compiler.assume_constant_result
def config_json(config: dict | None) -> str | None:
    """A config as the custom op takes it (validated, JSON; None for the default): computed once while tracing."""
    return None if config is None else json.dumps(_checked(config), sort_keys=True)


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing of :func:`fused_moe` and of the layer: :func:`~moe_lib.kernels.routing.topk_softmax_triton`,
    run as its custom op under ``torch.compile``."""
    if torch.compiler.is_compiling():
        return ops.topk_softmax(router_logits, top_k, renormalize)
    return topk_softmax_triton(router_logits, top_k, renormalize)


def fused_moe(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool = True,
    *,
    expert_map: torch.Tensor | None = None,
    config: dict | None = None,
    check_ids: bool = True,
    **fp8,
) -> torch.Tensor:
    """Routing (fp32 softmax top-k, Triton) then :func:`fused_experts`. ``router_logits``: (M, E) with one row
    per token and one column per expert (E = w13.shape[0], or expert_map's length: the global experts).
    ``fp8``: fused_experts' FP8 keywords (use_fp8_w8a8, w1_scale, ..., check_scales)."""
    check_bool("check_ids", check_ids)
    unknown = sorted(set(fp8) - set(FP8_KEYWORDS) - {"check_scales"})
    if unknown:
        raise TypeError(f"fused_moe got unexpected keyword arguments {unknown}")
    check_router_logits(router_logits, hidden_states, w13, expert_map)
    topk_weights, topk_ids = route(router_logits, top_k, renormalize)
    return fused_experts(hidden_states, w13, w2, topk_weights, topk_ids,
                         expert_map=expert_map, config=config, check_ids=check_ids, **fp8)


# The custom ops torch.ops.moe_lib.fused_experts / fused_moe run these (ops.py cannot import this module: this
# module imports it, to call the ops while being compiled).
ops.implement("fused_experts", run_fused_experts)
ops.implement("fused_moe", fused_moe)

__all__ = [
    "STEPS",
    "K_SUMS",
    "FP8_ACCUMULATE",
    "CLEAR_IN_GEMM1_MAX_ROWS",
    "Fp8",
    "GemmStep",
    "Plan",
    "BoundPlan",
    "make_plan",
    "plan_call",
    "fused_experts",
    "fused_moe",
    "route",
    "run_fused_experts",
    "config_json",
]

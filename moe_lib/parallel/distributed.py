"""The MoE layer on real processes: every rank routes, computes its partial output, and all-reduces.

Rank side (runs inside each process of :func:`moe_lib.parallel.launch.launch` or ``torchrun``)::

    topk_weights, topk_ids = route(x, gate_weight, top_k)        # replicated router: same on every rank
    out = rank_forward(x, topk_weights, topk_ids, shard, group)    # rank_partial + dist.all_reduce (sum)

Parent side: :func:`run_parallel` cuts the weights into each rank's :class:`RankShard` here, sends every
rank only its own shards, runs several layouts (:class:`Case`) in one launch — a layout of size n uses
ranks 0 .. n-1 — and returns the all-reduced outputs. The in-process twin is :mod:`.simulate`: the same
``rank_partial``, with the all-reduce written as a sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import runtime
from .._validate import check_int, check_tensor
from ..kernels.experts import fused_experts
from ..kernels.routing import topk_softmax_triton
from ..testing import randn, seeded, tolerance, verdict
from .experts import EplbPlan, plan_eplb
from .launch import launch
from .simulate import RankShard, ep_shard, ep_shards, rank_partial, tp_shard, tp_shards

MODES = ("tp", "ep")


# ----------------------------------------------------------------------------------------------------
# Rank side
# ----------------------------------------------------------------------------------------------------
def route(hidden_states: torch.Tensor, gate_weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The replicated router: every rank computes all logits itself, so all ranks route identically.

    Returns topk_weights (M, k) fp32 and topk_ids (M, k) int32.
    """
    logits = F.linear(hidden_states, gate_weight.to(hidden_states.dtype))  # (M, E)
    return topk_softmax_triton(logits, top_k)


def rank_forward(
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    shard: RankShard,
    *,
    group: dist.ProcessGroup | None = None,
    config: dict | None = None,
    check_ids: bool = True,
) -> torch.Tensor:
    """This rank's partial output, summed over the group by one all-reduce: the layer's output (M, H)."""
    out = rank_partial(hidden_states, topk_weights, topk_ids, shard, config=config, check_ids=check_ids)  # (M, H)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)  # now the full output, on every rank
    return out


def local_rows(shard: RankShard, topk_ids: torch.Tensor) -> int:
    """How many (token, slot) rows this rank computes: all M*k with TP, those of its experts with EP."""
    if shard.expert_map is None:
        return topk_ids.numel()
    ids = topk_ids if shard.plan is None else shard.plan.choose_replicas(topk_ids)
    return int((shard.expert_map[ids.long()] >= 0).sum())


def layer_worker(
    rank: int,
    world_size: int,
    hidden_states: torch.Tensor,
    gate_weight: torch.Tensor,
    top_k: int,
    group_sizes: list[int],
    shards: list[RankShard | None],
) -> list[dict | None]:
    """One rank of :func:`run_parallel`: run every case this rank takes part in (shard not None).

    Case i runs on ranks 0 .. group_sizes[i] - 1. Every rank creates every group, in the same order (that
    is how torch.distributed wants it), even those it does not belong to.
    """
    device = torch.device("cuda", torch.cuda.current_device()) if runtime.HAS_CUDA else torch.device("cpu")
    groups = {size: None if size == world_size else dist.new_group(list(range(size)))
              for size in sorted(set(group_sizes))}
    x, gate = hidden_states.to(device), gate_weight.to(device)
    results: list[dict | None] = []
    for size, shard in zip(group_sizes, shards, strict=True):
        if shard is None:
            results.append(None)
            continue
        shard = shard.to(device)
        topk_weights, topk_ids = route(x, gate, top_k)
        out = rank_forward(x, topk_weights, topk_ids, shard, group=groups[size])
        results.append({"output": out.cpu(), "rows": local_rows(shard, topk_ids), "weight_bytes": shard.weight_bytes})
    return results


# ----------------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One parallel layout of the layer: tensor (``"tp"``) or expert (``"ep"``) parallel over ``size`` ranks,
    the latter optionally placed by an EPLB ``plan``."""

    mode: str
    size: int
    plan: EplbPlan | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_int("size", self.size, low=1)
        if self.plan is not None:
            if not isinstance(self.plan, EplbPlan):
                raise TypeError(f"plan must be an EplbPlan, got {type(self.plan).__name__}")
            if self.mode != "ep" or self.plan.ep_size != self.size:
                raise ValueError(f"plan (ep_size={self.plan.ep_size}) needs mode='ep' and size={self.plan.ep_size}")

    @property
    def name(self) -> str:
        base = f"{self.mode.upper()}={self.size}"
        return base if self.plan is None else f"{base} + EPLB ({self.plan.num_physical} physical experts)"

    def shard(self, w13: torch.Tensor, w2: torch.Tensor, rank: int) -> RankShard:
        """What ``rank`` holds of the full weights under this layout."""
        if self.mode == "tp":
            return tp_shard(w13, w2, self.size, rank)
        return ep_shard(w13, w2, self.size, rank, self.plan)

    def shards(self, w13: torch.Tensor, w2: torch.Tensor) -> list[RankShard]:
        if self.mode == "tp":
            return tp_shards(w13, w2, self.size)
        return ep_shards(w13, w2, self.size, self.plan)


@dataclass(frozen=True)
class CaseResult:
    """What the ranks of one case returned: their outputs (identical after the all-reduce), the rows each
    computed, and the weight bytes each held."""

    case: Case
    outputs: list[torch.Tensor]
    rows: list[int]
    weight_bytes: list[int]

    @property
    def output(self) -> torch.Tensor:
        """(M, H) the layer output (rank 0's copy)."""
        return self.outputs[0]

    @property
    def ranks_agree(self) -> bool:
        """Every rank ended with bit-identical outputs."""
        return all(torch.equal(o, self.outputs[0]) for o in self.outputs)


def run_parallel(
    hidden_states: torch.Tensor,
    gate_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    cases: Sequence[Case],
    *,
    backend: str = "gloo",
    timeout: float = 120.0,
    pg_timeout: float = 60.0,
) -> list[CaseResult]:
    """Run the layer under each case on real processes — one launch of max(size) ranks for all of them.

    Args:
        hidden_states: (M, H) tokens, replicated to every rank. gate_weight: (E, H), replicated.
        w13, w2: the full expert weights (E, 2I, H), (E, H, I); each rank receives only its shards.
        top_k: experts per token.
        cases: the layouts to run, in order.
    """
    check_tensor("hidden_states", hidden_states, ndim=2)
    check_tensor("gate_weight", gate_weight, ndim=2)
    check_int("top_k", top_k, low=1)
    if isinstance(cases, Case) or not isinstance(cases, Sequence) or len(cases) == 0:
        raise TypeError("cases must be a non-empty sequence of Case")
    for i, case in enumerate(cases):
        if not isinstance(case, Case):
            raise TypeError(f"cases[{i}] must be a Case, got {type(case).__name__}")
    world_size = max(case.size for case in cases)
    # Every check on the arguments happens here, before any process starts; ranks get CPU copies.
    shards = [[s.to("cpu") for s in case.shards(w13, w2)] for case in cases]
    hidden_states, gate_weight = hidden_states.cpu(), gate_weight.cpu()
    rank_args = [([s[rank] if rank < len(s) else None for s in shards],) for rank in range(world_size)]
    sizes = [case.size for case in cases]
    per_rank = launch(layer_worker, world_size, args=(hidden_states, gate_weight, top_k, sizes),
                      rank_args=rank_args, backend=backend, timeout=timeout, pg_timeout=pg_timeout)
    results = []
    for i, case in enumerate(cases):
        mine = [per_rank[rank][i] for rank in range(case.size)]
        results.append(CaseResult(case, [m["output"] for m in mine], [m["rows"] for m in mine],
                                  [m["weight_bytes"] for m in mine]))
    return results


def run_tp(hidden_states, gate_weight, w13, w2, top_k: int, tp_size: int, **kwargs) -> CaseResult:
    """The layer, tensor parallel over ``tp_size`` processes (see :func:`run_parallel`)."""
    return run_parallel(hidden_states, gate_weight, w13, w2, top_k, [Case("tp", tp_size)], **kwargs)[0]


def run_ep(hidden_states, gate_weight, w13, w2, top_k: int, ep_size: int, *, plan: EplbPlan | None = None,
           **kwargs) -> CaseResult:
    """The layer, expert parallel over ``ep_size`` processes, optionally placed by an EPLB plan."""
    return run_parallel(hidden_states, gate_weight, w13, w2, top_k, [Case("ep", ep_size, plan)], **kwargs)[0]


# ----------------------------------------------------------------------------------------------------
# The check of `python -m moe_lib.parallel.run` (one rank's part; it lives here so the ranks can import it)
# ----------------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _check_layer(opts: dict, device: torch.device):
    """The seeded test layer (the same on every rank): x (M, H), gate (E, H), w13 (E, 2I, H), w2 (E, H, I)."""
    E, H, I, M = opts["experts"], opts["hidden"], opts["inter"], opts["tokens"]
    dtype = DTYPES[opts["dtype"]]
    gen = seeded(opts["seed"])
    w13 = randn(E, 2 * I, H, generator=gen, scale=H**-0.5, dtype=dtype)
    w2 = randn(E, H, I, generator=gen, scale=I**-0.5, dtype=dtype)
    gate = randn(E, H, generator=gen, scale=0.02, dtype=dtype)
    x = randn(M, H, generator=gen, dtype=dtype)
    calibration = randn(4 * M, H, generator=gen, dtype=dtype)  # a batch the EPLB plan is made from
    return x.to(device), gate.to(device), w13, w2, calibration.to(device)


def check_rank(rank: int, world_size: int, opts: dict) -> list[str] | None:
    """One rank of the check: its shard only, routing, partial output, all-reduce; rank 0 compares."""
    device = torch.device("cuda", torch.cuda.current_device()) if runtime.HAS_CUDA else torch.device("cpu")
    x, gate, w13, w2, calibration = _check_layer(opts, device)
    top_k = opts["top_k"]
    plan = None
    if opts["mode"] == "ep" and opts["redundant"] is not None:
        _, cal_ids = route(calibration, gate, top_k)
        plan = plan_eplb(torch.bincount(cal_ids.flatten().long().cpu(), minlength=opts["experts"]),
                         world_size, opts["redundant"])
    case = Case(opts["mode"], world_size, plan)
    shard = case.shard(w13, w2, rank).to(device)
    full = (w13.to(device), w2.to(device)) if rank == 0 else None  # the single-process reference, rank 0 only
    del w13, w2

    topk_weights, topk_ids = route(x, gate, top_k)  # (M, k): identical on every rank
    out = rank_forward(x, topk_weights, topk_ids, shard)  # (M, H), all-reduced
    rows: list = [None] * world_size
    dist.all_gather_object(rows, local_rows(shard, topk_ids))
    if rank != 0:
        return None
    ref = fused_experts(x, *full, topk_weights, topk_ids)
    backend = dist.get_backend()
    return [
        f"{case.name} on {world_size} {backend} processes: M={opts['tokens']}, E={opts['experts']}, "
        f"top_k={top_k}, H={opts['hidden']}, I={opts['inter']}, {opts['dtype']}",
        f"(token, slot) rows computed per rank: {rows}",
        verdict(f"{case.name} (all-reduced) vs the single-process layer", out, ref, tolerance(out.dtype)),
    ]


__all__ = [
    "route",
    "rank_forward",
    "local_rows",
    "layer_worker",
    "Case",
    "CaseResult",
    "run_parallel",
    "run_tp",
    "run_ep",
    "check_rank",
]

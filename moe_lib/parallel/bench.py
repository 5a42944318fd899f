"""Tensor parallelism on GPUs with NCCL: per-rank kernel time, all-reduce time, total — and a TP = 1 baseline.

    python -m moe_lib.parallel.run --tp 2 --bench --out data/bench/parallel_<gpu>_tp2.json

Mixtral's layer (E = 8, top-2, H = 4096, I = 14336, bf16), M in {1, 4, 16, 64, 256, 1024, 4096} tokens, for
each implementation of ``impls``: ``moe_lib`` (the shape's dtype), ``moe_lib_fp8`` (e4m3 weights, one scale
per expert, dynamic per-tensor activations) and ``moe_lib_fp8_block`` (128 x 128 weight blocks, activations
per token group of 128). Rank 0 draws the full weights once and broadcasts them; every rank quantizes them
the same way and keeps only its shard (rank 0 also keeps the whole layer for the TP = 1 baseline). For each
implementation and M, with a barrier between phases:

    check      the all-reduced TP output against rank 0's TP = 1 output (tolerance: see _check_tol)
    kernel     each rank's share of the layer: routing + fused_experts on its shard (no communication)
    allreduce  NCCL's own all-reduce of an (M, H) tensor — the size and dtype of the layer's output
    total      kernel + all-reduce, as the layer runs them
    tp1        rank 0 alone runs the whole layer (routing + fused_experts on the full weights)

Timing on GPUs: each phase is ``calls`` back-to-back calls captured in one CUDA graph per rank — the layer's
all-reduce inside the graph, as a serving engine runs it — and the graph is replayed, CUDA events around each
replay, ``warmup`` replays first, median of ``reps``, in µs per call. Before each replay of a phase that
communicates, all ranks synchronize and meet at a barrier, so an all-reduce does not time a late peer. A
rank's numbers are its own; a record's top-level numbers are the slowest rank's (the layer waits for it);
``allreduce_in_layer_us`` = total - kernel is what the all-reduce added inside the layer's graph, against
the bare one (``allreduce_vs_bare``). The router's logits (a tiny (M, H) x (H, E) matmul) are computed once
per M, outside the timings.

The same code runs on the CPU with gloo (eager calls, wall-clock timers, small shapes via ``opts["shape"]``):
the tests use that to exercise every line but the CUDA ones; its numbers mean nothing.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import triton

from .. import runtime
from ..config import MIXTRAL_8X7B
from ..kernels.experts import Fp8, fused_moe, make_plan
from ..perf import timing
from ..perf.bench import FP8_IMPLS, fp8_weights
from ..perf.timing import capture
from ..testing import rel_err, tolerance
from .launch import NCCL_ENV_DEFAULTS
from .shard import shard_w2, shard_w13

M_VALUES = (1, 4, 16, 64, 256, 1024, 4096)
IMPLS = ("moe_lib", *FP8_IMPLS)  # "moe_lib": the shape's dtype throughout
MIXTRAL_SHAPE = {"num_experts": MIXTRAL_8X7B.num_experts, "top_k": MIXTRAL_8X7B.top_k,
                 "hidden": MIXTRAL_8X7B.hidden_size, "intermediate": MIXTRAL_8X7B.intermediate_size,
                 "dtype": "bfloat16"}
GATE_STD = 0.02  # Mixtral's router initialization
KIND = "moe_lib.parallel tensor-parallel benchmark"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, calls: int, reps: int, warmup: int,
               sync_ranks: bool, before_each: Callable[[], object] | None = None) -> list[float]:
    """µs per call (moe_lib.perf.timing's one timer); with ``sync_ranks`` every rank synchronizes and meets at
    a barrier before each sample, so a communicating phase does not time a late peer."""

    def before():
        if before_each is not None:
            before_each()
        _sync(device)
        if sync_ranks:
            dist.barrier()  # every rank arrives before anyone starts the sample

    return timing.time_calls(fn, calls=calls, reps=reps, warmup=warmup, device=device, before_each=before)


def _median(samples: list[float]) -> float:
    return round(statistics.median(samples), 2)


def bench_rank(rank: int, world_size: int, opts: dict) -> dict | None:
    """One rank of the benchmark (process group already initialized). Rank 0 returns the result."""
    device = torch.device("cuda", torch.cuda.current_device()) if runtime.HAS_CUDA else torch.device("cpu")
    shape = dict(opts.get("shape") or MIXTRAL_SHAPE)
    E, K, H, I = shape["num_experts"], shape["top_k"], shape["hidden"], shape["intermediate"]
    dtype = getattr(torch, shape["dtype"])
    ms = [int(m) for m in opts.get("ms") or M_VALUES]
    timing = {"calls": int(opts.get("calls", 10)), "reps": int(opts.get("reps", 20)),
              "warmup": int(opts.get("warmup", 3)), "graph": bool(opts.get("graph", True))}

    # ---- weights: drawn on rank 0, broadcast, then each rank keeps its shard ------------------------------
    gen = torch.Generator(device=device).manual_seed(int(opts.get("seed", 0)))
    w13 = torch.empty(E, 2 * I, H, dtype=dtype, device=device)  # (E, 2I, H)
    w2 = torch.empty(E, H, I, dtype=dtype, device=device)  # (E, H, I)
    gate_w = torch.empty(E, H, dtype=dtype, device=device)  # (E, H)
    if rank == 0:
        w13.normal_(0.0, H**-0.5, generator=gen)
        w2.normal_(0.0, I**-0.5, generator=gen)
        gate_w.normal_(0.0, GATE_STD, generator=gen)
    for t in (w13, w2, gate_w):
        dist.broadcast(t, src=0)
    impls = list(opts.get("impls") or IMPLS)
    blocks = {**FP8_IMPLS, **({"moe_lib_fp8_block": tuple(opts["block_shape"])} if opts.get("block_shape") else {})}
    shards, fulls = {}, {}
    for impl in impls:  # each rank quantizes the whole weights the same way, then keeps its shard
        shards[impl], full = _weights(w13, w2, impl, blocks.get(impl), world_size, rank)
        fulls[impl] = full if rank == 0 else None  # only rank 0 keeps the whole layer, for the TP = 1 baseline
    del w13, w2
    if device.type == "cuda":
        torch.cuda.empty_cache()

    mine: dict[tuple[str, int], dict] = {}  # this rank's medians per (impl, M)
    tp1: dict[tuple[str, int], dict | None] = {}  # rank 0's whole-layer baseline per (impl, M)
    for m in ms:
        x = torch.empty(m, H, dtype=dtype, device=device)  # (M, H)
        if rank == 0:
            x.normal_(0.0, 1.0, generator=gen)
        dist.broadcast(x, src=0)
        logits = F.linear(x, gate_w)  # (M, E): the replicated router, identical on every rank
        for impl in impls:
            mine[(impl, m)], tp1[(impl, m)] = _measure(x, logits, shards[impl], fulls[impl], K, timing, impl)

    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, mine)
    if rank != 0:
        return None
    return _assemble(gathered, tp1, impls, ms, world_size, shape, timing, opts, device)


def _weights(w13: torch.Tensor, w2: torch.Tensor, impl: str, block: tuple[int, int] | None, world_size: int,
             rank: int) -> tuple[dict, dict]:
    """(this rank's shard, the whole layer) of one implementation, each as fused_moe's weight keywords: w13, w2
    and, for FP8, the e4m3 weights' scales — per tensor (E,), unchanged by sharding, or per block, sharded
    like the weights (I / tp must be a multiple of the block)."""
    if impl == "moe_lib":
        return (dict(w13=shard_w13(w13, world_size, rank), w2=shard_w2(w2, world_size, rank)),
                dict(w13=w13, w2=w2))
    (q13, s13), (q2, s2) = fp8_weights(w13, w2, block)
    fp8 = dict(use_fp8_w8a8=True, block_shape=None if block is None else list(block), check_scales=False)
    if block is None:
        shard_s13, shard_s2 = s13, s2
    else:  # (E, 2I/bn, H/bk): the rank's rows of blocks of w1 and of w3; (E, H/bn, I/bk): its columns of blocks
        shard_s13, shard_s2 = shard_w13(s13, world_size, rank), shard_w2(s2, world_size, rank)
    return (dict(w13=shard_w13(q13, world_size, rank), w2=shard_w2(q2, world_size, rank), w1_scale=shard_s13,
                 w2_scale=shard_s2, fp8=fp8),
            dict(w13=q13, w2=q2, w1_scale=s13, w2_scale=s2, fp8=fp8))


def _layer(x, weights: dict, logits, top_k, config) -> torch.Tensor:
    """Routing + fused_experts, without the host-side id check (no device sync inside a timed loop)."""
    fp8 = dict(weights.get("fp8", {}))
    if fp8:
        fp8.update(w1_scale=weights["w1_scale"], w2_scale=weights["w2_scale"])
    return fused_moe(x, weights["w13"], weights["w2"], logits, top_k, config=config, check_ids=False, **fp8)


def _layer_and_reduce(x, weights, logits, top_k, config) -> torch.Tensor:
    out = _layer(x, weights, logits, top_k, config)
    dist.all_reduce(out)
    return out


def _check_tol(impl: str, dtype: torch.dtype) -> float:
    """How far the TP output may be from TP = 1's. Each rank sums its slice of I and rounds to dtype, as in bf16;
    per block, act's token groups do not straddle ranks (I/tp is a multiple of the block), so the e4m3 values
    are the same too. Per tensor, each rank scales its own slice of act by that slice's largest value: a
    different e4m3 rounding of act than TP = 1's, a few percent of the quantization error (~4 %) itself."""
    return 0.05 if impl == "moe_lib_fp8" else 2 * tolerance(dtype)


def _plan_config(m: int, hidden: int, weights: dict, top_k: int, dtype, device) -> dict:
    fp8 = weights.get("fp8")
    scheme = None if not fp8 else Fp8("tensor" if fp8["block_shape"] is None else "block",
                                      None if fp8["block_shape"] is None else tuple(fp8["block_shape"]))
    return make_plan(m, hidden, weights["w2"].shape[2], top_k, weights["w13"].shape[0], dtype=dtype,
                     target=runtime.target(device), fp8=scheme).config


def _time(fn: Callable[[], object], device: torch.device, timing: dict, *, sync_ranks: bool,
          before_each: Callable[[], object] | None = None) -> list[float]:
    """µs per call of ``fn``: on a GPU ``calls`` calls captured in one CUDA graph and replayed (see the module
    docstring), elsewhere (or with ``timing["graph"]`` False: ``--no-graph``) ``calls`` eager calls."""
    calls = timing["calls"]
    if device.type != "cuda" or not timing["graph"]:
        return time_calls(fn, device, calls=calls, reps=timing["reps"], warmup=timing["warmup"],
                          sync_ranks=sync_ranks, before_each=before_each)
    graph = capture(fn, calls)  # every rank captures the same calls in the same order
    per_replay = time_calls(graph.replay, device, calls=1, reps=timing["reps"], warmup=timing["warmup"],
                            sync_ranks=sync_ranks, before_each=before_each)
    del graph
    return [us / calls for us in per_replay]


def _measure(x: torch.Tensor, logits: torch.Tensor, shard: dict, full: dict | None, top_k: int,
             timing: dict, impl: str = "moe_lib") -> tuple[dict, dict | None]:
    """One (implementation, M): the check and the four phases (see the module docstring); the baseline on rank 0
    only."""
    m, hidden = x.shape
    device = x.device
    config = _plan_config(m, hidden, shard, top_k, x.dtype, device)
    layer = functools.partial(_layer, x, shard, logits, top_k, config)
    layer_and_reduce = functools.partial(_layer_and_reduce, x, shard, logits, top_k, config)

    out = layer_and_reduce()  # check: the all-reduced output against the whole layer on rank 0
    check = None
    if full is not None:
        err = rel_err(out, _layer(x, full, logits, top_k, None))
        tol = _check_tol(impl, x.dtype)
        check = {"rel_err": err, "tol": tol, "passed": bool(err <= tol)}
    _sync(device)
    dist.barrier()

    kernel = _time(layer, device, timing, sync_ranks=False)
    dist.barrier()
    src = torch.randn(m, hidden, generator=torch.Generator().manual_seed(m)).to(device=device, dtype=x.dtype)
    buf = src.clone()  # (M, H), the size of the layer's output; refreshed before each sample
    allreduce = _time(functools.partial(dist.all_reduce, buf), device, timing, sync_ranks=True,
                      before_each=functools.partial(buf.copy_, src))
    dist.barrier()
    total = _time(layer_and_reduce, device, timing, sync_ranks=True)
    dist.barrier()
    mine = {"kernel_us": _median(kernel), "allreduce_us": _median(allreduce), "total_us": _median(total),
            "config": config, "check": check}

    base = None
    if full is not None:  # the baseline: rank 0 runs the whole layer alone while the others wait
        config1 = _plan_config(m, hidden, full, top_k, x.dtype, device)
        whole = _time(functools.partial(_layer, x, full, logits, top_k, config1), device, timing, sync_ranks=False)
        base = {"total_us": _median(whole), "config": config1}
    _sync(device)
    dist.barrier()
    return mine, base


def _assemble(gathered: list[dict], tp1: dict, impls: list[str], ms: list[int], world_size: int, shape: dict,
              timing: dict, opts: dict, device: torch.device) -> dict:
    """Rank 0: one TP = 1 and one TP = world_size record per (implementation, M), with the per-rank numbers,
    the all-reduce's share and bus bandwidth, and the speed-up."""
    records = []
    element = torch.finfo(getattr(torch, shape["dtype"])).bits // 8
    for impl in impls:
        for m in ms:
            key = (impl, m)
            base = tp1[key]["total_us"]
            records.append({"mode": "tp", "impl": impl, "tp": 1, "M": m, "kernel_us": base, "allreduce_us": 0.0,
                            "total_us": base, "config": tp1[key]["config"]})
            per_rank = {k: [g[key][k] for g in gathered] for k in ("kernel_us", "allreduce_us", "total_us")}
            nbytes = m * shape["hidden"] * element
            ar, total, kernel = max(per_rank["allreduce_us"]), max(per_rank["total_us"]), max(per_rank["kernel_us"])
            in_layer = max(total - kernel, 0.0)

            records.append({
                "mode": "tp", "impl": impl, "tp": world_size, "M": m,
                "kernel_us": kernel,
                "allreduce_us": ar,
                "total_us": total,
                "allreduce_in_layer_us": round(in_layer, 2),
                "allreduce_vs_bare": round(in_layer / ar, 3) if ar else None,
                "allreduce_share": round(in_layer / total, 3) if total else None,
                "per_rank": per_rank,
                "allreduce_bytes": nbytes,
                "allreduce_busbw_GBps": _busbw(nbytes, world_size, ar),
                "speedup_vs_tp1": round(base / total, 3) if total else None,
                "config": gathered[0][key]["config"],
                "check": gathered[0][key]["check"],
            })
    nccl = torch.cuda.nccl.version() if device.type == "cuda" else None
    return {
        "kind": KIND,
        "gpu": runtime.device_name(device),
        "num_gpus": world_size,
        "backend": dist.get_backend(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else (None if nccl is None else str(nccl)),
        "date": datetime.date.today().isoformat(),
        "env": {key: os.environ.get(key) for key in NCCL_ENV_DEFAULTS},
        "method": ((f"a CUDA graph per rank of {timing['calls']} calls (the layer's all-reduce inside it), CUDA "
                    "events around each replay" if device.type == "cuda" and timing["graph"] else
                    f"CUDA events around {timing['calls']} eager calls" if device.type == "cuda" else
                    f"wall clock (CPU: a dry run, not a measurement) around {timing['calls']} eager calls")
                   + f", {timing['warmup']} warm-up samples, median of {timing['reps']} samples; barrier between "
                   "phases and before every sample of a communicating phase; top-level numbers are the slowest "
                   "rank's; layer = routing + fused_experts (router logits precomputed); TP=1 = rank 0 alone with "
                   "the whole layer; allreduce = NCCL's own all-reduce of the output's bytes"),
        "shape": shape,
        "timing": timing,
        "command": opts.get("command"),
        "records": records,
    }


def _busbw(nbytes: int, world_size: int, us: float) -> float | None:
    """NCCL's "bus bandwidth" (GB/s): what each link carries in a ring all-reduce of nbytes, per second."""
    return round(nbytes * 2 * (world_size - 1) / world_size / us / 1e3, 2) if us else None


def summary(result: dict) -> str:
    """The result as a small table (what the command prints)."""
    lines = [f"{result['gpu']} x {result['num_gpus']}, torch {result['torch']}, NCCL {result['nccl']}, "
             f"env {result['env']}",
             f"{'impl':>17} {'TP':>3} {'M':>5} {'kernel µs':>10} {'all-red. µs':>12} {'in layer':>9} "
             f"{'total µs':>9} {'speed-up':>9}  check"]
    for r in result["records"]:
        check = r.get("check")
        verdict = "" if check is None else ("PASS" if check["passed"] else "FAIL") + f" rel err {check['rel_err']:.1e}"
        speed = f"{r['speedup_vs_tp1']:.2f}x" if r.get("speedup_vs_tp1") else ""
        in_layer = f"{r['allreduce_in_layer_us']:.1f}" if "allreduce_in_layer_us" in r else ""
        lines.append(f"{r.get('impl', 'moe_lib'):>17} {r['tp']:>3} {r['M']:>5} {r['kernel_us']:>10.1f} "
                     f"{r['allreduce_us']:>12.1f} {in_layer:>9} {r['total_us']:>9.1f} {speed:>9}  {verdict}")
    return "\n".join(lines)


def write(result: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


__all__ = ["M_VALUES", "IMPLS", "FP8_IMPLS", "MIXTRAL_SHAPE", "KIND", "time_calls", "bench_rank", "summary", "write"]

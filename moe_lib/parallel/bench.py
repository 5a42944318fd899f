"""Tensor parallelism on GPUs with NCCL: per-rank kernel time, all-reduce time, total — and a TP = 1 baseline.

    python -m moe_lib.parallel.run --tp 2 --bench --out data/bench/parallel_<gpu>_tp2.json

Mixtral's layer (E = 8, top-2, H = 4096, I = 14336, bf16), M in {1, 64, 4096} tokens. Rank 0 draws the
full weights once and broadcasts them; every rank keeps only its shard (rank 0 also keeps the whole layer
for the TP = 1 baseline). For each M, with a barrier between phases:

    check      the all-reduced TP output against rank 0's TP = 1 output (tolerance of the dtype)
    kernel     each rank's share of the layer: routing + fused_experts on its shard (no communication)
    allreduce  dist.all_reduce of an (M, H) tensor — the size and dtype of the layer's output
    total      kernel + all-reduce, as the layer runs them
    tp1        rank 0 alone runs the whole layer (routing + fused_experts on the full weights)

Timing: CUDA events around ``calls`` back-to-back calls (so launch gaps do not count), ``warmup`` samples
first, median of ``reps`` samples, in µs per call. Before each sample of a phase that communicates, all
ranks synchronize and meet at a barrier, so an all-reduce does not time a late peer. A rank's numbers
are its own; a record's top-level numbers are the slowest rank's (the layer waits for it). The router's
logits (a tiny (M, H) x (H, E) matmul) are computed once per M, outside the timings.

The same code runs on the CPU with gloo (wall-clock timers, small shapes via ``opts["shape"]``): the tests
use that to exercise every line but the CUDA ones; its numbers mean nothing.
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
from ..kernels.experts import fused_moe, make_plan
from ..perf import timing
from ..testing import rel_err, tolerance
from .launch import NCCL_ENV_DEFAULTS
from .shard import shard_w2, shard_w13

M_VALUES = (1, 64, 4096)
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
              "warmup": int(opts.get("warmup", 3))}

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
    shard = shard_w13(w13, world_size, rank), shard_w2(w2, world_size, rank)  # (E, 2I/tp, H), (E, H, I/tp)
    full = (w13, w2) if rank == 0 else None  # only rank 0 keeps the whole layer, for the TP = 1 baseline
    del w13, w2
    if device.type == "cuda":
        torch.cuda.empty_cache()

    mine: dict[int, dict] = {}  # this rank's medians per M
    tp1: dict[int, dict | None] = {}  # rank 0's whole-layer baseline per M
    for m in ms:
        x = torch.empty(m, H, dtype=dtype, device=device)  # (M, H)
        if rank == 0:
            x.normal_(0.0, 1.0, generator=gen)
        dist.broadcast(x, src=0)
        logits = F.linear(x, gate_w)  # (M, E): the replicated router, identical on every rank
        mine[m], tp1[m] = _measure(x, logits, shard, full, K, timing)

    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, mine)
    if rank != 0:
        return None
    return _assemble(gathered, tp1, ms, world_size, shape, timing, opts, device)


def _layer(x, w13, w2, logits, top_k, config) -> torch.Tensor:
    """Routing + fused_experts, without the host-side id check (no device sync inside a timed loop)."""
    return fused_moe(x, w13, w2, logits, top_k, config=config, check_ids=False)


def _layer_and_reduce(x, w13, w2, logits, top_k, config) -> torch.Tensor:
    out = _layer(x, w13, w2, logits, top_k, config)
    dist.all_reduce(out)
    return out


def _measure(x: torch.Tensor, logits: torch.Tensor, shard: tuple, full: tuple | None, top_k: int,
             timing: dict) -> tuple[dict, dict | None]:
    """One M: the check and the four phases (see the module docstring); the baseline on rank 0 only."""
    m, hidden = x.shape
    device = x.device
    w13_r, w2_r = shard
    config = make_plan(m, hidden, w2_r.shape[2], top_k, w13_r.shape[0], dtype=x.dtype,
                       target=runtime.target(device)).config
    layer = functools.partial(_layer, x, w13_r, w2_r, logits, top_k, config)
    layer_and_reduce = functools.partial(_layer_and_reduce, x, w13_r, w2_r, logits, top_k, config)

    out = layer_and_reduce()  # check: the all-reduced output against the whole layer on rank 0
    check = None
    if full is not None:
        err = rel_err(out, _layer(x, *full, logits, top_k, None))
        check = {"rel_err": err, "tol": tolerance(x.dtype), "passed": bool(err <= tolerance(x.dtype))}
    _sync(device)
    dist.barrier()

    kernel = time_calls(layer, device, sync_ranks=False, **timing)
    dist.barrier()
    src = torch.randn(m, hidden, generator=torch.Generator().manual_seed(m)).to(device=device, dtype=x.dtype)
    buf = src.clone()  # (M, H), the size of the layer's output; refreshed before each sample
    allreduce = time_calls(functools.partial(dist.all_reduce, buf), device, sync_ranks=True,
                           before_each=functools.partial(buf.copy_, src), **timing)
    dist.barrier()
    total = time_calls(layer_and_reduce, device, sync_ranks=True, **timing)
    dist.barrier()
    mine = {"kernel_us": _median(kernel), "allreduce_us": _median(allreduce), "total_us": _median(total),
            "config": config, "check": check}

    base = None
    if full is not None:  # the baseline: rank 0 runs the whole layer alone while the others wait
        config1 = make_plan(m, hidden, full[1].shape[2], top_k, full[0].shape[0], dtype=x.dtype,
                            target=runtime.target(device)).config
        whole = time_calls(functools.partial(_layer, x, *full, logits, top_k, config1), device, sync_ranks=False,
                           **timing)
        base = {"total_us": _median(whole), "config": config1}
    _sync(device)
    dist.barrier()
    return mine, base


def _assemble(gathered: list[dict], tp1: dict, ms: list[int], world_size: int, shape: dict, timing: dict,
              opts: dict, device: torch.device) -> dict:
    """Rank 0: one TP = 1 and one TP = world_size record per M, with the per-rank numbers and the speed-up."""
    records = []
    element = torch.finfo(getattr(torch, shape["dtype"])).bits // 8
    for m in ms:
        base = tp1[m]["total_us"]
        records.append({"mode": "tp", "tp": 1, "M": m, "kernel_us": base, "allreduce_us": 0.0, "total_us": base,
                        "config": tp1[m]["config"]})
        per_rank = {key: [g[m][key] for g in gathered] for key in ("kernel_us", "allreduce_us", "total_us")}
        nbytes = m * shape["hidden"] * element
        ar, total = max(per_rank["allreduce_us"]), max(per_rank["total_us"])
        records.append({
            "mode": "tp", "tp": world_size, "M": m,
            "kernel_us": max(per_rank["kernel_us"]),
            "allreduce_us": ar,
            "total_us": total,
            "per_rank": per_rank,
            "allreduce_bytes": nbytes,
            # NCCL's "bus bandwidth": what each link carries in a ring all-reduce, per second
            "allreduce_busbw_GBps": round(nbytes * 2 * (world_size - 1) / world_size / ar / 1e3, 2) if ar else None,
            "speedup_vs_tp1": round(base / total, 3) if total else None,
            "config": gathered[0][m]["config"],
            "check": gathered[0][m]["check"],
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
        "method": (f"{'CUDA events' if device.type == 'cuda' else 'wall clock (CPU: a dry run, not a measurement)'} "
                   f"around {timing['calls']} back-to-back calls, {timing['warmup']} warm-up samples, "
                   f"median of {timing['reps']} samples; barrier between phases and before every sample of a "
                   "communicating phase; top-level numbers are the slowest rank's; layer = routing + fused_experts "
                   "(router logits precomputed); TP=1 = rank 0 alone with the whole layer"),
        "shape": shape,
        "timing": timing,
        "command": opts.get("command"),
        "records": records,
    }


def summary(result: dict) -> str:
    """The result as a small table (what the command prints)."""
    lines = [f"{result['gpu']} x {result['num_gpus']}, torch {result['torch']}, NCCL {result['nccl']}, "
             f"env {result['env']}",
             f"{'TP':>3} {'M':>5} {'kernel µs':>10} {'all-red. µs':>12} {'total µs':>9} {'speed-up':>9}  check"]
    for r in result["records"]:
        check = r.get("check")
        verdict = "" if check is None else ("PASS" if check["passed"] else "FAIL") + f" rel err {check['rel_err']:.1e}"
        speed = f"{r['speedup_vs_tp1']:.2f}x" if r.get("speedup_vs_tp1") else ""
        lines.append(f"{r['tp']:>3} {r['M']:>5} {r['kernel_us']:>10.1f} {r['allreduce_us']:>12.1f} "
                     f"{r['total_us']:>9.1f} {speed:>9}  {verdict}")
    return "\n".join(lines)


def write(result: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


__all__ = ["M_VALUES", "MIXTRAL_SHAPE", "KIND", "time_calls", "bench_rank", "summary", "write"]

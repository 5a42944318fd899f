"""The parallel MoE layer from the shell: a correctness check, or the NCCL benchmark.

    python -m moe_lib.parallel.run --tp 2                   # TP=2 on 2 processes vs the single-process layer
    python -m moe_lib.parallel.run --ep 4 --redundant 4     # EP=4 with EPLB (4 replicas of hot experts)
    python -m moe_lib.parallel.run --tp 4 --bench --out data/bench/parallel_H100_tp4.json   # GPUs, NCCL

It starts the ranks itself (gloo on the CPU, NCCL on GPUs: one GPU per rank). Under torchrun it is one
rank among N instead, and torchrun starts them:

    torchrun --standalone --nproc_per_node 2 -m moe_lib.parallel.run --tp 2

The check builds a small layer (default: moe_lib.config.TINY in fp32) from a seed on every rank, keeps
only the rank's shard, runs routing + fused_experts + all-reduce, and compares with the whole layer in one
process. Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist

from .. import runtime
from ..config import TINY
from .distributed import DTYPES, check_rank
from .launch import BACKENDS, init_process_group, launch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m moe_lib.parallel.run", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tp", type=int, help="tensor-parallel size (number of processes)")
    size.add_argument("--ep", type=int, help="expert-parallel size (number of processes)")
    p.add_argument("--redundant", type=int, default=None, help="EP only: EPLB with this many redundant experts")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="default: nccl with GPUs, else gloo")
    p.add_argument("--tokens", type=int, default=64, help="check: tokens M")
    p.add_argument("--experts", type=int, default=TINY.num_experts)
    p.add_argument("--top-k", type=int, default=TINY.top_k)
    p.add_argument("--hidden", type=int, default=TINY.hidden_size)
    p.add_argument("--inter", type=int, default=TINY.intermediate_size)
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench", action="store_true", help="the NCCL benchmark at Mixtral's shapes (needs --tp, --out)")
    p.add_argument("--out", default=None, help="bench: where to write the JSON result")
    p.add_argument("--m", type=int, nargs="+", default=None,
                   help="bench: token counts (default 1 4 16 64 256 1024 4096)")
    p.add_argument("--impl", nargs="+", default=None, choices=("moe_lib", "moe_lib_fp8", "moe_lib_fp8_block"),
                   help="bench: the layer in bf16, FP8 per tensor, FP8 per 128x128 block (default: all three)")
    p.add_argument("--calls", type=int, default=10, help="bench: back-to-back calls per timed sample")
    p.add_argument("--no-graph", action="store_true",
                   help="bench: time eager calls instead of CUDA graphs (the all-reduce then runs outside any graph)")
    p.add_argument("--reps", type=int, default=20, help="bench: timed samples (median)")
    p.add_argument("--warmup", type=int, default=3, help="bench: untimed samples first")
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole run (default 120; bench 600)")
    p.add_argument("--pg-timeout", type=float, default=None, help="seconds per collective (default 60; bench 300)")
    a = p.parse_args(argv)

    torchrun_world = int(os.environ["WORLD_SIZE"]) if _under_torchrun() else None
    if a.tp is None and a.ep is None:
        if torchrun_world is None:
            p.error("give --tp N or --ep N")
        a.tp = torchrun_world
    a.mode, a.size = ("tp", a.tp) if a.tp is not None else ("ep", a.ep)
    if a.size < 1:
        p.error(f"--{a.mode} must be >= 1, got {a.size}")
    if torchrun_world is not None and a.size != torchrun_world:
        p.error(f"--{a.mode} {a.size} does not match torchrun's WORLD_SIZE={torchrun_world}")
    for name in ("tokens", "experts", "top_k", "hidden", "inter", "calls", "reps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.m is not None and min(a.m) < 1:
        p.error(f"--m values must be >= 1, got {a.m}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.top_k > a.experts:
        p.error(f"--top-k ({a.top_k}) must be <= --experts ({a.experts})")
    if a.redundant is not None and (a.mode != "ep" or a.redundant < 0):
        p.error("--redundant needs --ep and must be >= 0")
    if a.mode == "tp" and a.inter % a.size:
        p.error(f"--inter {a.inter} is not divisible by --tp {a.size}")
    if a.mode == "ep" and a.size > a.experts + (a.redundant or 0):
        p.error(f"--ep {a.size} exceeds the number of (physical) experts, {a.experts + (a.redundant or 0)}")
    for name in ("timeout", "pg_timeout"):
        value = getattr(a, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            p.error(f"--{name.replace('_', '-')} must be a finite number of seconds > 0, got {value:g}")
    if a.backend == "nccl" and not runtime.HAS_CUDA:
        p.error("--backend nccl needs CUDA GPUs (this machine has none); use --backend gloo")
    if a.bench:
        if a.mode != "tp" or a.out is None:
            p.error("--bench needs --tp N and --out PATH")
        if not runtime.HAS_CUDA:
            p.error("--bench needs CUDA GPUs (NCCL); recorded results are in data/bench/parallel_*.json")
        if a.backend not in (None, "nccl"):
            p.error("--bench runs on NCCL")
        if torchrun_world is None and a.size > torch.cuda.device_count():
            p.error(f"--tp {a.size} needs {a.size} GPUs, this machine has {torch.cuda.device_count()}")
    a.backend = a.backend or ("nccl" if runtime.HAS_CUDA else "gloo")
    if a.timeout is None:
        a.timeout = 600.0 if a.bench else 120.0
    if a.pg_timeout is None:
        a.pg_timeout = 300.0 if a.bench else 60.0
    return a


def _under_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _opts(a: argparse.Namespace, argv: list[str]) -> dict:
    opts = {key: getattr(a, key) for key in ("mode", "redundant", "tokens", "experts", "top_k", "hidden", "inter",
                                             "dtype", "seed", "calls", "reps", "warmup")}
    opts["command"] = " ".join(["python -m moe_lib.parallel.run", *argv])
    if a.m:
        opts["ms"] = a.m
    if a.impl:
        opts["impls"] = a.impl
    opts["graph"] = not a.no_graph
    return opts


def _finish(result, bench: bool, out: str | None) -> int:
    """Print (and for the benchmark write) what rank 0 produced; the exit status."""
    if bench:
        from .bench import summary, write

        print(summary(result))
        print(f"wrote {write(result, out)}")
        return 0 if all(r["check"]["passed"] for r in result["records"] if r.get("check")) else 1
    print("\n".join(result))
    return 0 if all(not line.startswith("FAIL") for line in result) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    opts = _opts(a, argv)
    if a.bench:
        from .bench import bench_rank as body
    else:
        body = check_rank
    if not _under_torchrun():
        results = launch(body, a.size, args=(opts,), backend=a.backend, timeout=a.timeout, pg_timeout=a.pg_timeout)
        return _finish(results[0], a.bench, a.out)
    # One rank among torchrun's: the group comes from the environment; rank 0 reports.
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    init_process_group(a.backend, rank, world_size, local_rank=int(os.environ["LOCAL_RANK"]), pg_timeout=a.pg_timeout)
    try:
        result = body(rank, world_size, opts)
        status = _finish(result, a.bench, a.out) if rank == 0 else 0
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())

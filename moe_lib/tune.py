"""Search kernel configurations on the GPU and write tuned tables for ``get_config``.

    python -m moe_lib.tune                       # Mixtral: N = 14336/tp for tp in 1 2 4 8
    python -m moe_lib.tune --tp 8 --m 1 16 64

For each (N, M) and each BLOCK_SIZE_M (shared by both GEMMs, since they walk the same aligned blocks),
GEMM1 (x w13, gate and up) and GEMM2 (x w2) are timed *separately* over their candidates, each alone in
a CUDA graph; the BLOCK_SIZE_M whose alignment + best GEMM1 + best GEMM2 is fastest wins. From M = 512 on
each BLOCK_SIZE_M >= 64 is also tried with ``"TMA"`` (tokens copied into sorted order, tiles read through
tensor descriptors), the copy's time counted. The table
goes to ``moe_lib/kernels/configs/E=<E>,N=<N>,device_name=<gpu>.json`` mapping M to a config whose
``"down"`` entry holds GEMM2's own tile sizes; ``get_config`` picks the nearest M.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from . import runtime
from .bench import MIXTRAL, graph_us, make_weights
from .kernels.align import moe_align_block_size
from .kernels.fused_moe import (
    CONFIG_DIR,
    config_file_name,
    fuse_k_sum,
    gather_sorted_rows,
    invoke_fused_moe_kernel,
    load_config_table,
    tma_usable,
)
from .routing import topk_softmax_triton

TUNE_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SMEM_BYTES = 227 * 1024  # an H100 block's shared memory


def block_m_choices(m: int) -> tuple[int, ...]:
    return (16,) if m <= 32 else (16, 32, 64) if m <= 256 else (64, 128)


def candidates(m: int, block_m: int, gated: bool) -> list[dict]:
    """Tile shapes to try for one GEMM. Small M is bandwidth-bound (skinny tiles, deep K, deep pipelines);
    large M is compute-bound (big tiles, 8 warps, grouped launch order for L2 reuse)."""
    if m <= 32:
        space = dict(BLOCK_SIZE_N=[16, 32, 64], BLOCK_SIZE_K=[128, 256], GROUP_SIZE_M=[1], num_warps=[4],
                     num_stages=[3, 4, 5])
    elif m <= 256:
        space = dict(BLOCK_SIZE_N=[64, 128, 256], BLOCK_SIZE_K=[64, 128], GROUP_SIZE_M=[1],
                     num_warps=[4, 8], num_stages=[3, 4])
    else:
        space = dict(BLOCK_SIZE_N=[128, 256], BLOCK_SIZE_K=[64, 128], GROUP_SIZE_M=[1, 16], num_warps=[8],
                     num_stages=[3, 4])
    out = []
    for values in itertools.product(*space.values()):
        cfg = {"BLOCK_SIZE_M": block_m, **dict(zip(space, values, strict=True))}
        b_tiles = 2 if gated else 1  # gate and up tiles
        # fp32 accumulators must fit in registers; the pipelined tiles in shared memory.
        if cfg["BLOCK_SIZE_N"] * block_m * b_tiles > 128 * 256:
            continue
        smem = cfg["num_stages"] * cfg["BLOCK_SIZE_K"] * (block_m + b_tiles * cfg["BLOCK_SIZE_N"]) * 2
        if smem > SMEM_BYTES:
            continue
        out.append(cfg)
    return out


def tma_choices(m: int, block_m: int) -> tuple[bool, ...]:
    """The sorted layout read through tensor descriptors pays for its extra copy only at larger M (and
    with row blocks big enough for the copy engine to matter)."""
    return (False, True) if m >= 512 and block_m >= 64 else (False,)


def _best(run_one, configs: list[dict]) -> tuple[float, dict]:
    results = []
    for cfg in configs:
        try:
            results.append((graph_us(lambda c=cfg: run_one(c)), cfg))
        except Exception as exc:  # a candidate that does not compile or launch is skipped
            print(f"  skip {cfg}: {type(exc).__name__}")
    return min(results, key=lambda r: r[0])


def tune_point(x, w13, w2, weights, ids, num_experts: int, top_k: int) -> tuple[float, dict]:
    """The best config for one (weights, M), and the µs of alignment + GEMM1 + GEMM2 with it."""
    m, h = x.shape
    n = w2.shape[2]
    act = torch.empty(m * top_k, n, device=x.device, dtype=x.dtype)
    # GEMM2's output as fused_experts has it: the (M, H) output it adds into, or one row per (token, slot).
    fused_sum = fuse_k_sum(top_k, x.dtype)
    c2 = torch.zeros(m, h, device=x.device, dtype=x.dtype) if fused_sum else \
        torch.empty(m * top_k, h, device=x.device, dtype=x.dtype)
    flat_w = weights.reshape(-1)
    best = None
    for block_m, tma in ((bm, t) for bm in block_m_choices(m) for t in tma_choices(m, bm)):
        routing = moe_align_block_size(ids, block_m, num_experts)
        align_us = graph_us(lambda bm=block_m: moe_align_block_size(ids, bm, num_experts))
        if tma and tma_usable(w13, w2):
            # As fused_experts does it: tokens copied into sorted order, act kept in sorted order.
            a1 = gather_sorted_rows(x, routing[0], routing[2], top_k)
            gather_us = graph_us(lambda r=routing: gather_sorted_rows(x, r[0], r[2], top_k))
            a, a_rows_div, mid = a1, 1, torch.empty(a1.shape[0], n, device=x.device, dtype=x.dtype)
        elif tma:
            continue
        else:
            gather_us, a, a_rows_div, mid = 0.0, x, top_k, act
        # GEMM1 runs first: its output (real values, not garbage) is GEMM2's input.
        up_us, up = _best(lambda c, r=routing, a=a, mid=mid, div=a_rows_div, t=tma: invoke_fused_moe_kernel(
            a, w13, mid, flat_w, *r, a_rows_div=div, gated=True, mul_routed_weight=False, config=c,
            tma=t, c_sorted=t), candidates(m, block_m, gated=True))
        down_us, down = _best(lambda c, r=routing, mid=mid, t=tma: invoke_fused_moe_kernel(
            mid, w2, c2, flat_w, *r, a_rows_div=1, c_rows_div=top_k if fused_sum else 1, gated=False,
            mul_routed_weight=True, config=c, tma=t),
            candidates(m, block_m, gated=False))
        total = align_us + gather_us + up_us + down_us
        if best is None or total < best[0]:
            down_overrides = {key: v for key, v in down.items() if key != "BLOCK_SIZE_M"}
            best = (total, {**up, **({"TMA": True} if tma else {}), "down": down_overrides})
    return best


def tune(tps=(1, 2, 4, 8), ms=TUNE_M, verbose=True) -> dict[int, dict]:
    if not runtime.HAS_CUDA:
        raise SystemExit("moe_lib.tune needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    e, k, h = MIXTRAL["num_experts"], MIXTRAL["top_k"], MIXTRAL["hidden"]
    name = runtime.device_name()
    written = {}
    for tp in tps:
        w13, w2 = make_weights(tp, gen)
        n = w2.shape[2]
        path = CONFIG_DIR / config_file_name(e, n, name)
        # Re-tuning some M keeps the other rows of an existing table.
        table = {int(m): c for m, c in json.loads(path.read_text()).items()} if path.exists() else {}
        for m in ms:
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
            logits = torch.randn(m, e, device="cuda", generator=gen)
            weights, ids = topk_softmax_triton(logits, k)
            us, table[m] = tune_point(x, w13, w2, weights, ids, e, k)
            if verbose:
                print(f"tp={tp} N={n} M={m:>5}: {us:8.1f} us  {table[m]}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(m): table[m] for m in sorted(table)}, indent=1) + "\n")
        load_config_table.cache_clear()
        written[n] = table
        if verbose:
            print(f"wrote {path.name}", flush=True)
        del w13, w2
        torch.cuda.empty_cache()
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--m", type=int, nargs="+", default=list(TUNE_M))
    a = p.parse_args(argv)
    tune(a.tp, a.m)


if __name__ == "__main__":
    main()

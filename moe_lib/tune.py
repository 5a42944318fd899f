"""Search kernel configurations on the GPU and write tuned tables for ``get_config``.

    python -m moe_lib.tune                       # Mixtral: N = 14336/tp for tp in 1 2 4 8
    python -m moe_lib.tune --tp 8 --m 1 16 64

For each (N, M) every candidate config is timed on ``fused_experts`` (alignment + both GEMMs + the sum
over k; routing is fixed) inside a CUDA graph, and the fastest is kept. The table goes to
``moe_lib/kernels/configs/E=<E>,N=<N>,device_name=<gpu>.json``, mapping M to a config; ``get_config``
then picks the nearest M.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch

from . import runtime
from .bench import MIXTRAL, _time_events, make_weights
from .kernels.fused_moe import CONFIG_DIR, config_file_name, fused_experts, load_config_table
from .routing import topk_softmax_triton

TUNE_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def candidates(m: int) -> list[dict]:
    """The search space, narrowed by M: small M is bandwidth-bound (skinny tiles, deep K), large M is
    compute-bound (big tiles, more warps)."""
    if m <= 64:
        space = dict(BLOCK_SIZE_M=[16], BLOCK_SIZE_N=[32, 64, 128], BLOCK_SIZE_K=[128, 256],
                     GROUP_SIZE_M=[1], num_warps=[4], num_stages=[3, 4, 5])
    elif m <= 512:
        space = dict(BLOCK_SIZE_M=[16, 32, 64], BLOCK_SIZE_N=[64, 128], BLOCK_SIZE_K=[64, 128],
                     GROUP_SIZE_M=[1], num_warps=[4, 8], num_stages=[3, 4])
    else:
        space = dict(BLOCK_SIZE_M=[64, 128], BLOCK_SIZE_N=[64, 128, 256], BLOCK_SIZE_K=[64],
                     GROUP_SIZE_M=[1, 16], num_warps=[4, 8], num_stages=[3, 4])
    keys = list(space)
    configs = [dict(zip(keys, values, strict=True)) for values in itertools.product(*space.values())]
    # Two fp32 accumulators of BLOCK_M x BLOCK_N (gate and up) must fit in registers.
    return [c for c in configs if c["BLOCK_SIZE_M"] * c["BLOCK_SIZE_N"] <= 128 * 128]


def time_config(x, w13, w2, weights, ids, config, calls=10, replays=10) -> float:
    """µs per fused_experts call with this config (CUDA graph of `calls` calls, median replay)."""
    def step():
        fused_experts(x, w13, w2, weights, ids, config=config, check_ids=False)

    step()  # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            step()
    us = statistics.median(_time_events(graph.replay, reps=replays, warmup=2)) / calls
    del graph
    return us


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
        table = {}
        for m in ms:
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
            logits = torch.randn(m, e, device="cuda", generator=gen)
            weights, ids = topk_softmax_triton(logits, k)
            results = []
            for cfg in candidates(m):
                try:
                    results.append((time_config(x, w13, w2, weights, ids, cfg), cfg))
                except Exception as exc:  # e.g. out of shared memory: skip this candidate
                    if verbose:
                        print(f"  skip {cfg}: {type(exc).__name__}")
            best_us, best = min(results, key=lambda r: r[0])
            table[m] = best
            if verbose:
                print(f"tp={tp} N={n} M={m:>5}: {best_us:8.1f} us  {best}", flush=True)
        path = CONFIG_DIR / config_file_name(e, n, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(m): c for m, c in table.items()}, indent=1) + "\n")
        load_config_table.cache_clear()
        written[n] = table
        if verbose:
            print(f"wrote {path.name}")
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

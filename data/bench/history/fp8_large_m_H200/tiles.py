"""FP8 per tensor at large M on the H200: the shipped table's tiles against deeper pipelines (4 stages, which the
tuner's large-M FP8 search did not try) and taller tiles, each with the fp32 add every 128 products (the default)
and without it; then the floor of one token: reading the FP8 weights of its two experts with no arithmetic.

    OUT=... python3 data/bench/history/fp8_large_m_H200/tiles.py
"""
import json, os, statistics, time
import torch
from moe_lib.kernels import experts
from moe_lib.kernels.experts import plan_call, Fp8
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.perf.bench import LAYERS, make_weights, time_layer_graph, fp8_weights
from moe_lib.perf.timing import graph_us
OUT = os.environ.get("OUT", ".")
T0 = time.time()


def layer(scales, config=None):
    def fn(x, w13, w2, logits, top_k, _config=None):
        w, ids = topk_softmax_triton(logits, top_k)
        return plan_call(x, w13, w2, ids, None, config, ids_checked=False, fp8=Fp8("tensor")).bind(
            x, w13, w2, w, ids, scales=scales).run()
    return fn


def up(bm, bn, group, stages):
    return {"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": group, "num_warps": 8,
            "num_stages": stages}


def down(bn, group, stages):
    return {"BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": group, "num_warps": 8, "num_stages": stages}


gen = torch.Generator(device="cuda").manual_seed(7)
rows, floor = [], []
for tp in (1, 8):
    w13, w2 = make_weights(tp, gen)
    (a, sa), (b, sb) = fp8_weights(w13, w2, None)
    scales = {"w1_scale": sa, "w2_scale": sb}
    for m in (1024, 4096):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
        pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
        w, ids = topk_softmax_triton(pool[0], 2)
        base = plan_call(x, a, b, ids, None, None, fp8=Fp8("tensor")).config
        deeper = {**{k: v for k, v in base.items() if k != "down"}, "num_stages": 4,
                  "down": {**base["down"], "num_stages": 4}}
        variants = {"table": base, "table_4stages": deeper,
                    "128x128_4stages": {**up(128, 128, 16, 4), "down": down(256, 16, 4)},
                    "128x128_3stages": {**up(128, 128, 16, 3), "down": down(256, 16, 3)},
                    "64x256_4stages": {**up(64, 256, 16, 4), "down": down(256, 16, 4)}}
        row = {"tp": tp, "M": m, "table": base}
        row["bf16"] = round(statistics.median(
            time_layer_graph(LAYERS["moe_lib"], x, w13, w2, 2, 10, 20, pool) for _ in range(3)), 1)
        for acc in (128, None):
            experts.FP8_ACCUMULATE = acc
            experts._make_plan.cache_clear()
            for name, cfg in variants.items():
                key = f"{name}_acc{acc or 0}"
                try:
                    fn = layer(scales, cfg)
                    fn(x, a, b, pool[0], 2)
                    row[key] = round(statistics.median(
                        time_layer_graph(fn, x, a, b, 2, 10, 20, pool) for _ in range(3)), 1)
                except Exception as e:  # a config that cannot launch
                    row[key] = repr(e)[:120]
        experts.FP8_ACCUMULATE = 128
        experts._make_plan.cache_clear()
        rows.append(row); print(row, f"{time.time() - T0:.0f}s", flush=True)
    del w13, w2, a, b; torch.cuda.empty_cache()

# The floor of one token (M = 1): its two experts' FP8 weights read with no arithmetic, as two dependent
# launches (GEMM1's bytes, then GEMM2's), experts (0,1), (2,3), ... in turn so the reads come from HBM.
for tp in (8, 4, 2, 1):
    n = 14336 // tp
    w13 = torch.empty(8, 2 * n, 4096, device="cuda", dtype=torch.uint8).random_(generator=gen)
    w2 = torch.empty(8, 4096, n, device="cuda", dtype=torch.uint8).random_(generator=gen)
    pairs = iter(range(10**9))
    def read_two():
        e = 2 * (next(pairs) % 4)
        torch.amax(w13[e:e + 2].view(torch.int32))
        torch.amax(w2[e:e + 2].view(torch.int32))
    us = statistics.median(graph_us(read_two, 8, reps=10) for _ in range(3))
    mb = (w13[0:2].numel() + w2[0:2].numel()) / 1e6
    floor.append({"tp": tp, "M": 1, "MB": round(mb, 1), "read_us": round(us, 2), "TBps": round(mb / us, 2)})
    print(floor[-1], flush=True)
    del w13, w2; torch.cuda.empty_cache()
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows, "read_floor": floor},
          open(f"{OUT}/tiles.json", "w"), indent=1)

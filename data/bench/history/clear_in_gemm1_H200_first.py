"""A/B on the GPU: GEMM1 clearing the output vs a separate clear; PDL beyond one token. Whole layer, bench method.

    OUT=<dir> PYTHONPATH=. python3 data/bench/history/clear_in_gemm1_H200_first.py   # writes <dir>/ab_decode.json

Ran on an H200 with the tables before the finer-grid re-tuning; its rows are ``first_run_old_tables`` and
``breakdown`` of clear_in_gemm1_H200.json."""
import json, os, statistics, sys
import torch
from moe_lib import runtime
from moe_lib.kernels.experts import plan_call
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.perf.bench import make_weights, time_layer_graph, breakdown

OUT = os.environ.get("OUT", ".")
variants = {"clear_alone": dict(clear_in_gemm1=False), "clear_in_gemm1": dict(clear_in_gemm1=True),
            "gemm1+pdl": dict(clear_in_gemm1=True, pdl=True)}

def layer(opts):
    def fn(x, w13, w2, logits, top_k, config=None):
        w, ids = topk_softmax_triton(logits, top_k)
        return plan_call(x, w13, w2, ids, None, config, ids_checked=False, **opts).bind(x, w13, w2, w, ids).run()
    return fn

gen = torch.Generator(device="cuda").manual_seed(0)
rows = []
for tp in (8, 4, 2, 1):
    w13, w2 = make_weights(tp, gen)
    for m in (1, 2, 4, 8, 16, 64, 256):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
        pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
        res = {k: [] for k in variants}
        for rep in range(3):  # interleaved: A B C A B C ...
            for name, opts in variants.items():
                res[name].append(time_layer_graph(layer(opts), x, w13, w2, 2, 10, 20, pool))
        row = {"tp": tp, "M": m, **{k: round(statistics.median(v), 2) for k, v in res.items()}}
        rows.append(row); print(row, flush=True)
    del w13, w2; torch.cuda.empty_cache()
bd = []
for tp, m in ((8, 1), (1, 1), (8, 64), (1, 256), (1, 1024), (8, 1024)):
    for opt in (False, True):
        r = breakdown(tp, m, clear_in_gemm1=opt)
        r = {k: round(v, 1) for k, v in r.items()}
        bd.append({"tp": tp, "M": m, "clear_in_gemm1": opt, **r}); print(bd[-1], flush=True)
json.dump({"gpu": runtime.device_name(), "ab": rows, "breakdown": bd}, open(f"{OUT}/ab_decode.json", "w"), indent=1)

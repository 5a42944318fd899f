"""Repeat of the clear A/B with the re-tuned tables: more interleaved repeats.

    OUT=<dir> PYTHONPATH=. python3 data/bench/history/clear_in_gemm1_H200_repeat.py   # writes <dir>/ab_m1.json

Its rows are ``repeat_retuned_tables`` of clear_in_gemm1_H200.json."""
import json, os, statistics
import torch
from moe_lib.kernels.experts import plan_call
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.perf.bench import make_weights, time_layer_graph
OUT = os.environ.get("OUT", ".")
def layer(opt):
    def fn(x, w13, w2, logits, top_k, config=None):
        w, ids = topk_softmax_triton(logits, top_k)
        return plan_call(x, w13, w2, ids, None, config, ids_checked=False, clear_in_gemm1=opt).bind(x, w13, w2, w, ids).run()
    return fn
gen = torch.Generator(device="cuda").manual_seed(1)
rows = []
for tp in (8, 4, 2, 1):
    w13, w2 = make_weights(tp, gen)
    for m in (1, 4, 64, 512, 1024):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
        pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
        res = {False: [], True: []}
        for rep in range(5):
            for opt in (False, True):
                res[opt].append(time_layer_graph(layer(opt), x, w13, w2, 2, 10, 20, pool))
        row = {"tp": tp, "M": m, "clear_alone": round(statistics.median(res[False]), 2),
               "clear_in_gemm1": round(statistics.median(res[True]), 2)}
        rows.append(row); print(row, flush=True)
    del w13, w2; torch.cuda.empty_cache()
json.dump(rows, open(f"{OUT}/ab_m1.json", "w"), indent=1)

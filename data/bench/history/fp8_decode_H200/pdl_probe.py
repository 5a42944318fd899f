"""Why is FP8 at M = 1 slow in the whole layer (bench) but not in the tuner's step sums? Whole layer with PDL on
(default at M <= 2) and off, with fresh or fixed routing, and the tuner's per-step graph times."""
import json, os, statistics
import torch
from moe_lib.kernels.experts import plan_call, Fp8
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.perf.bench import make_weights, time_layer_graph, fp8_weights
from moe_lib.perf.timing import graph_us
OUT = os.environ.get("OUT", ".")
SCHEMES = {"bf16": None, "tensor": None, "block": (128, 128)}

def layer(scheme, scales, **opt):
    fp8 = None if scheme == "bf16" else Fp8(scheme, SCHEMES[scheme])
    def fn(x, w13, w2, logits, top_k, config=None):
        w, ids = topk_softmax_triton(logits, top_k)
        return plan_call(x, w13, w2, ids, None, None, ids_checked=False, fp8=fp8, **opt).bind(
            x, w13, w2, w, ids, scales=scales).run()
    return fn, fp8

gen = torch.Generator(device="cuda").manual_seed(3)
rows = []
for tp in (8, 1):
    w13, w2 = make_weights(tp, gen)
    q = {"bf16": ((w13, None), (w2, None))}
    for s in ("tensor", "block"):
        q[s] = fp8_weights(w13, w2, SCHEMES[s])
    for m in (1, 2, 4):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
        pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
        for s in ("bf16", "tensor", "block"):
            (a, sa), (b, sb) = q[s]
            scales = None if s == "bf16" else {"w1_scale": sa, "w2_scale": sb}
            row = {"tp": tp, "M": m, "scheme": s}
            for name, opt, p in (("default", {}, pool), ("pdl_off", {"pdl": False}, pool),
                                 ("fixed_routing", {}, pool[:1]), ("pdl_off_fixed", {"pdl": False}, pool[:1])):
                fn, fp8 = layer(s, scales, **opt)
                row[name] = round(statistics.median(time_layer_graph(fn, x, a, b, 2, 10, 20, p) for _ in range(3)), 2)
            # the tuner's view: each step of one bound plan as its own graph
            for pdl in (None, False):
                _, fp8 = layer(s, scales)
                w, ids = topk_softmax_triton(pool[0], 2)
                bound = plan_call(x, a, b, ids, None, None, fp8=fp8, pdl=pdl).bind(x, a, b, w, ids, scales=scales)
                bound.run()
                steps = {k: round(graph_us(f), 2) for k, f in bound.steps.items()}
                row[f"steps_pdl_{pdl}"] = steps
                row[f"steps_sum_pdl_{pdl}"] = round(sum(steps.values()), 2)
            row["plan"] = {"steps": bound.plan.steps, "layout": bound.plan.layout, "pdl": bound.plan.pdl,
                           "config": bound.plan.config}
            rows.append(row); print({k: v for k, v in row.items() if k != "plan"}, flush=True)
    del w13, w2, q; torch.cuda.empty_cache()
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, open(f"{OUT}/pdl_probe.json", "w"), indent=1)

"""How often FP8 products should be added into the fp32 accumulator on Hopper (experts.FP8_ACCUMULATE):
accuracy of the FP8 layer against the fp64 loop with the activation quantizations emulated
(moe_reference_fp8), for each choice, at Mixtral's TP1 and TP8 shapes. Run on the H200 (device tool):

    python3 data/bench/history/fp8_accumulate_H200/probe.py > $OUT/accuracy.txt

The speed side of the same choice: ``python -m moe_lib.perf.bench --impl moe_lib_fp8 ... --fp8-accumulate N``.
"""

import torch

from moe_lib import runtime
from moe_lib.kernels import experts
from moe_lib.kernels.quant import quantize_weight
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.reference import moe_reference, moe_reference_fp8

gen = torch.Generator(device="cuda").manual_seed(0)
H = 4096
print(runtime.device_name(), torch.__version__)
print(f"{'tp':>3} {'M':>5} {'scales':>7} {'accumulate':>10} {'vs emulated':>12} {'vs bf16 exact':>14}")
for tp in (8, 1):
    n = 14336 // tp
    w13 = torch.randn(8, 2 * n, H, device="cuda", generator=gen) * H**-0.5
    w2 = torch.randn(8, H, n, device="cuda", generator=gen) * n**-0.5
    for mode, block in (("tensor", None), ("block", [128, 128]), ("channel", None)):
        q13, s13 = quantize_weight(w13, mode, block)
        q2, s2 = quantize_weight(w2, mode, block)
        kw = dict(w1_scale=s13, w2_scale=s2, block_shape=block, per_channel_quant=mode == "channel")
        for m in (1, 33, 300, 2048):
            x = torch.randn(m, H, device="cuda", generator=gen).to(torch.bfloat16)
            weights, ids = topk_softmax_triton(torch.randn(m, 8, device="cuda", generator=gen), 2)
            ref = moe_reference_fp8(x, q13, q2, weights, ids, **kw)
            exact = moe_reference(x, w13.bfloat16(), w2.bfloat16(), weights, ids, fp64=True)
            for acc in (None, 128, 64, 32):
                experts.FP8_ACCUMULATE = acc
                out = experts.fused_experts(x, q13, q2, weights, ids, use_fp8_w8a8=True, **kw).double()
                e1 = ((out - ref).norm() / ref.norm()).item()
                e2 = ((out - exact).norm() / exact.norm()).item()
                print(f"{tp:>3} {m:>5} {mode:>7} {str(acc):>10} {e1:>12.2e} {e2:>14.2e}", flush=True)
    del w13, w2, q13, q2
    torch.cuda.empty_cache()

"""moe_lib.layer with FP8 experts (``quant_config``): what load_weights makes of an FP8 checkpoint (the w1/w3
scale merge, static input scales, block scales), its tensor-parallel shards, the forward against the fp64
emulation of the FP8 layer, and every bad input named before anything changes. The whole tiny FP8 model is in
tests/test_model.py."""

from __future__ import annotations

import pytest
import torch

from moe_lib import checkpoint as ckpt_mod
from moe_lib.config import QuantConfig
from moe_lib.kernels.quant import FP8_DTYPE, dequantize_weight, merge_w13_scales
from moe_lib.kernels.routing import topk_softmax
from moe_lib.layer import MixtralMoE
from moe_lib.reference import moe_reference_fp8
from moe_lib.testing import assert_close, rel_err

E, K, H, I = 8, 2, 64, 128  # the tiny checkpoint's layer
P = "model.layers.0.block_sparse_moe."
STATIC = QuantConfig(activation_scheme="static")
DYNAMIC = QuantConfig()
BLOCK = QuantConfig(weight_block_size=[32, 32])


@pytest.fixture(scope="module")
def static_layer0():
    """Layer 0 of data/tiny_mixtral_fp8 (per tensor, static activations): (name, tensor) pairs."""
    return list(ckpt_mod.iter_moe_weights(ckpt_mod.TINY_MIXTRAL_FP8, 0))


@pytest.fixture(scope="module")
def block_layer0():
    """Layer 0 of data/tiny_mixtral_fp8_block ([32, 32] blocks, dynamic activations)."""
    return list(ckpt_mod.iter_moe_weights(ckpt_mod.TINY_MIXTRAL_FP8_BLOCK, 0))


def dynamic_of(static_layer0):
    """The same checkpoint without its input scales: dynamic activations."""
    return [(n, t) for n, t in static_layer0 if not n.endswith("input_scale")]


def bits(t: torch.Tensor) -> torch.Tensor:
    """What torch.equal compares (it has no FP8): an e4m3 tensor's bytes."""
    t = t.detach().cpu()
    return t.view(torch.uint8) if t.dtype == FP8_DTYPE else t


def state(layer: MixtralMoE) -> dict[str, torch.Tensor]:
    return {k: bits(v).clone() for k, v in layer.state_dict().items()}


def fp8_layer(weights, quant, device, **kw) -> MixtralMoE:
    layer = MixtralMoE(E, K, H, I, params_dtype=torch.float32, device=device, quant_config=quant, **kw)
    layer.load_weights(weights)
    return layer


def oracle(layer: MixtralMoE, x: torch.Tensor) -> torch.Tensor:
    """gate + fp32 top-k (torch) + the FP8 layer in fp64 with both activation quantizations emulated."""
    x2 = x.reshape(-1, H)
    w, ids = topk_softmax(torch.nn.functional.linear(x2, layer.gate.weight), K)
    args = layer.fp8_arguments()
    out = moe_reference_fp8(x2, layer.w13, layer.w2, w, ids, w1_scale=args["w1_scale"], w2_scale=args["w2_scale"],
                            a1_scale=args["a1_scale"], a2_scale=args["a2_scale"], block_shape=args["block_shape"])
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant,tp,scale_shapes", [
    (DYNAMIC, 1, ((E,), (E,), None)),
    (STATIC, 2, ((E,), (E,), (1,))),
    (BLOCK, 1, ((E, 2 * I // 32, H // 32), (E, H // 32, I // 32), None)),
    (BLOCK, 4, ((E, 2 * I // 4 // 32, H // 32), (E, H // 32, I // 4 // 32), None)),
])
def test_fp8_layer_holds_e4m3_weights_and_fp32_scales(quant, tp, scale_shapes, device):
    layer = MixtralMoE(E, K, H, I, tp_size=tp, tp_rank=tp - 1, quant_config=quant, device=device,
                       generator=torch.Generator().manual_seed(0))
    assert layer.w13.dtype == layer.w2.dtype == FP8_DTYPE and not layer.w13.requires_grad
    assert layer.w13.shape == (E, 2 * I // tp, H) and layer.w2.shape == (E, H, I // tp)
    w13_shape, w2_shape, a_shape = scale_shapes
    assert layer.w13_scale.shape == w13_shape and layer.w2_scale.shape == w2_shape
    assert layer.w13_scale.dtype == torch.float32 and (layer.w13_scale > 0).all()
    if a_shape is None:
        assert layer.a1_scale is None and layer.a2_scale is None
    else:
        assert layer.a1_scale.shape == layer.a2_scale.shape == a_shape
    assert "w13_scale" in layer.state_dict() and str(quant) in repr(layer)
    same = MixtralMoE(E, K, H, I, tp_size=tp, tp_rank=tp - 1, quant_config=quant, device=device,
                      generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(state(layer).values(), state(same).values(), strict=True))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(quant_config={"quant_method": "fp8"}), TypeError, "quant_config must be a moe_lib.config.QuantConfig"),
    (dict(quant_config=QuantConfig(weight_block_size=[256, 32])), ValueError,
     r"weight_block_size \[256, 32\] does not fit intermediate_size 128 on tp_size 1: I/tp = 128 must be a multiple "
     r"of bn = 256"),
    (dict(quant_config=QuantConfig(weight_block_size=[16, 64]), tp_size=4, tp_rank=0), ValueError,
     r"I/tp = 32 must be a multiple of bn = 16 .* and of bk = 64"),
    (dict(quant_config=BLOCK, tp_size=8, tp_rank=0), ValueError, "I/tp = 16 must be a multiple of bn = 32"),
])
def test_fp8_constructor_refuses_what_does_not_fit(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MixtralMoE(E, K, H, I, **kwargs)


def test_fp8_block_shape_needs_only_bn_on_one_rank():
    """One rank keeps all of w2's columns: bk need not divide I/tp there (the last block is partial)."""
    layer = MixtralMoE(E, K, H, 96, quant_config=QuantConfig(weight_block_size=[32, 64]))
    assert layer.w2_scale.shape == (E, H // 32, 2)  # ceil(96 / 64)


# ----------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------
def test_load_per_tensor_merges_w1_w3_scales_and_takes_the_largest_input_scale(static_layer0, device):
    layer = fp8_layer(static_layer0, STATIC, device)
    d = dict(static_layer0)
    for e in range(E):
        w = {j: (d[f"{P}experts.{e}.w{j}.weight"], d[f"{P}experts.{e}.w{j}.weight_scale"]) for j in (1, 2, 3)}
        q13, s13 = merge_w13_scales(w[1][0][None], w[1][1].reshape(1), w[3][0][None], w[3][1].reshape(1))
        assert torch.equal(bits(layer.w13[e]), bits(q13[0])) and layer.w13_scale[e].cpu() == s13[0]
        assert layer.w13_scale[e].cpu() == torch.maximum(w[1][1], w[3][1])  # the larger of the two
        assert torch.equal(bits(layer.w2[e]), bits(w[2][0])) and layer.w2_scale[e].cpu() == w[2][1]
    inputs = {j: torch.stack([d[f"{P}experts.{e}.w{j}.input_scale"] for e in range(E)]) for j in (1, 2, 3)}
    assert layer.a1_scale.cpu() == torch.maximum(inputs[1], inputs[3]).max()  # one per GEMM: the largest
    assert layer.a2_scale.cpu() == inputs[2].max() and layer.a1_scale.shape == (1,)
    assert torch.equal(layer.gate.weight.cpu(), d[P + "gate.weight"])
    # the merge requantizes the half with the smaller scale: one more e4m3 rounding of that half (measured: 2.1%
    # relative to the checkpoint's dequantized w13, about what one rounding costs)
    w13 = torch.stack([torch.cat([d[f"{P}experts.{e}.w{j}.weight"].float() * d[f"{P}experts.{e}.w{j}.weight_scale"]
                                  for j in (1, 3)]) for e in range(E)])
    assert rel_err(dequantize_weight(layer.w13.cpu(), layer.w13_scale.cpu()), w13) < 0.03


def test_load_block_wise_keeps_the_checkpoints_bits(block_layer0, device):
    layer = fp8_layer(block_layer0, BLOCK, device)
    d = dict(block_layer0)
    for e in range(E):
        w1, w2, w3 = (d[f"{P}experts.{e}.w{j}.weight"] for j in (1, 2, 3))
        s1, s2, s3 = (d[f"{P}experts.{e}.w{j}.weight_scale_inv"] for j in (1, 2, 3))
        assert torch.equal(bits(layer.w13[e]), bits(torch.cat([w1, w3]))) and torch.equal(bits(layer.w2[e]), bits(w2))
        assert torch.equal(layer.w13_scale[e].cpu(), torch.cat([s1, s3])) and torch.equal(layer.w2_scale[e].cpu(), s2)
    assert layer.a1_scale is None and layer.a2_scale is None


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("which", ["tensor", "block"])
def test_tp_shards_of_fp8_weights_and_scales(tp, which, static_layer0, block_layer0, device):
    """Every rank's w13/w2 and their scales, dequantized and put back together ([w1 parts; w3 parts] by rank, w2
    by columns), are the unsharded layer's dequantized weights, exactly; per tensor every rank has the same scales."""
    weights, quant = (static_layer0, STATIC) if which == "tensor" else (block_layer0, BLOCK)
    full = fp8_layer(weights, quant, device)
    bs = quant.block_shape
    ranks = [fp8_layer(weights, quant, device, tp_size=tp, tp_rank=r, reduce_results=False) for r in range(tp)]
    w13 = [dequantize_weight(r.w13.cpu(), r.w13_scale.cpu(), bs) for r in ranks]  # (E, 2I/tp, H) each
    w2 = [dequantize_weight(r.w2.cpu(), r.w2_scale.cpu(), bs) for r in ranks]  # (E, H, I/tp) each
    half = I // tp
    rebuilt13 = torch.cat([p[:, :half] for p in w13] + [p[:, half:] for p in w13], dim=1)
    assert torch.equal(rebuilt13, dequantize_weight(full.w13.cpu(), full.w13_scale.cpu(), bs))
    assert torch.equal(torch.cat(w2, dim=2), dequantize_weight(full.w2.cpu(), full.w2_scale.cpu(), bs))
    for r in ranks:
        if which == "tensor":
            assert torch.equal(r.w13_scale, full.w13_scale) and torch.equal(r.w2_scale, full.w2_scale)
            assert torch.equal(r.a1_scale, full.a1_scale) and torch.equal(r.a2_scale, full.a2_scale)
        else:
            assert r.w13_scale.shape == (E, 2 * half // 32, H // 32) and r.w2_scale.shape == (E, H // 32, half // 32)


def test_dynamic_checkpoint_into_a_dynamic_layer(static_layer0, device):
    layer = fp8_layer(dynamic_of(static_layer0), DYNAMIC, device)
    static = fp8_layer(static_layer0, STATIC, device)
    assert layer.a1_scale is None and torch.equal(bits(layer.w13), bits(static.w13))


# ----------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------
def test_a_compiled_fp8_layer_gives_the_eager_bits(block_layer0, gen, device):
    # fullgraph: routing and the FP8 experts run as the custom ops, quantization steps included
    layer = fp8_layer(block_layer0, BLOCK, device)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(5, H, generator=gen).to(device)
    assert torch.equal(compiled(x), layer(x))


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["static", "dynamic", "block"])
@pytest.mark.parametrize("M", [1, 40])
def test_gpu_fp8_layer_captures_in_a_cuda_graph(which, M, static_layer0, block_layer0, gen):
    # no host sync anywhere in an FP8 forward (scales were checked on load; dynamic scales stay on the device)
    weights, quant = {"static": (static_layer0, STATIC), "dynamic": (dynamic_of(static_layer0), DYNAMIC),
                      "block": (block_layer0, BLOCK)}[which]
    layer = fp8_layer(weights, quant, "cuda")
    static = torch.randn(M, H, generator=gen).to("cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(static)
    for _ in range(2):
        x = torch.randn(M, H, generator=gen).to("cuda")
        static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, layer(x))


@pytest.mark.parametrize("which", ["static", "dynamic", "block"])
def test_fp8_forward_matches_the_fp64_emulation(which, static_layer0, block_layer0, gen, device, poison):
    weights, quant = {"static": (static_layer0, STATIC), "dynamic": (dynamic_of(static_layer0), DYNAMIC),
                      "block": (block_layer0, BLOCK)}[which]
    layer = fp8_layer(weights, quant, device)
    x = torch.randn(3, 11, H, generator=gen).to(device)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert_close(out, oracle(layer, x), tol=1e-5, what=f"FP8 ({which}) layer vs its fp64 emulation")
    assert layer(torch.empty(0, H, device=device)).shape == (0, H)
    # and close to the unquantized layer it was made from (the tiny fp32 checkpoint)
    fp32 = MixtralMoE(E, K, H, I, params_dtype=torch.float32, device=device)
    fp32.load_weights(ckpt_mod.iter_moe_weights(ckpt_mod.TINY_MIXTRAL, 0))
    err = rel_err(out, fp32(x))
    print(f"FP8 {which} layer vs fp32 layer: relative error {err:.4f}")
    # measured 0.075 static, 0.071 dynamic, 0.063 block: one e4m3 rounding costs ~2.7% (3 mantissa bits), and the
    # layer rounds four times (x, w13, the activation, w2)
    assert 0.01 < err < 0.15


def test_tp_partials_of_a_static_fp8_layer_sum_to_the_whole(static_layer0, gen, device):
    """Static scales are the same on every rank, so each rank quantizes its slice of the activation exactly as the
    whole layer does: the partial outputs sum to the unsharded output (to fp32 rounding)."""
    full = fp8_layer(static_layer0, STATIC, device)
    ranks = [fp8_layer(static_layer0, STATIC, device, tp_size=2, tp_rank=r, reduce_results=False) for r in range(2)]
    x = torch.randn(9, H, generator=gen).to(device)
    assert_close(sum(r(x) for r in ranks), full(x), tol=1e-5)


def test_a_cast_fp8_layer_says_so(static_layer0, device):
    layer = fp8_layer(static_layer0, STATIC, device).to(torch.bfloat16)  # casts the e4m3 weights too
    with pytest.raises(RuntimeError, match=r"not float8_e4m3fn: was it cast with \.to\(dtype\)"):
        layer(torch.randn(2, H, device=device))


# ----------------------------------------------------------------------------------------------------
# bad checkpoints: one ValueError naming every problem, the layer unchanged
# ----------------------------------------------------------------------------------------------------
def _replace(name, fn):
    return lambda ws: [(n, fn(t) if n == P + name else t) for n, t in ws]


def _drop(name):
    return lambda ws: [(n, t) for n, t in ws if n != P + name]


def _add(name, t):
    return lambda ws: ws + [(P + name, t)]


NOT_POSITIVE = "holds a scale that is not finite and > 0"


@pytest.mark.parametrize("change,match", [
    (_drop("experts.3.w1.weight_scale"), r"missing \(1\): model\.layers\.0\.block_sparse_moe\.experts\.3\.w1\."
                                         r"weight_scale"),
    (_drop("experts.5.w2.input_scale"), r"missing \(1\): .*experts\.5\.w2\.input_scale"),
    (_drop("experts.5.w2.weight"), r"missing \(1\): .*experts\.5\.w2\.weight\b"),
    (_replace("experts.1.w3.weight_scale", lambda t: -t), r"experts\.1\.w3\.weight_scale " + NOT_POSITIVE),
    (_replace("experts.1.w3.weight_scale", lambda t: t * 0), "weight_scale " + NOT_POSITIVE),
    (_replace("experts.4.w1.input_scale", lambda t: t * float("inf")), "input_scale " + NOT_POSITIVE),
    (_replace("experts.4.w2.weight_scale", lambda t: t * float("nan")), "weight_scale " + NOT_POSITIVE),
    (_replace("experts.2.w1.weight", lambda t: t.float()),
     r"experts\.2\.w1\.weight has dtype torch\.float32, expected torch\.float8_e4m3fn \(FP8 weights are stored so\)"),
    (_replace("experts.2.w1.weight", lambda t: t.to(torch.float8_e5m2)), r"has dtype torch\.float8_e5m2, expected"),
    (_replace("experts.2.w2.weight_scale", lambda t: t.double()),
     r"weight_scale has dtype torch\.float64, expected torch\.float32 \(FP8 scales are stored so\)"),
    (_replace("experts.2.w2.weight_scale", lambda t: t.reshape(1)), r"weight_scale has shape \(1,\), expected \(\)"),
    (_replace("experts.2.w2.weight", lambda t: t[:, :-1]), r"w2\.weight has shape \(64, 127\), expected \(64, 128\)"),
    (_replace("gate.weight", lambda t: t.to(torch.float8_e4m3fn)),
     r"gate\.weight has dtype torch\.float8_e4m3fn: an FP8 tensor, but this layer is float32$"),
    (_add("experts.0.w1.weight_scale_inv", torch.ones(4, 2)),
     r"unknown names \(1\): .*experts\.0\.w1\.weight_scale_inv \(not part of a checkpoint with QuantConfig"),
    (_add("experts.8.w1.weight_scale", torch.ones(())), r"expert 8 >= num_experts 8"),
    (lambda ws: ws + [ws[3]], r"given twice \(1\)"),
    (lambda ws: [(n.replace("block_sparse_moe.experts.0.w1.weight", "mlp.experts.gate_up_proj"), t) for n, t in ws],
     r"an FP8 layer reads the legacy per-expert names"),
])
def test_bad_fp8_checkpoints_load_nothing(change, match, static_layer0, device):
    layer = MixtralMoE(E, K, H, I, device=device, quant_config=STATIC, generator=torch.Generator().manual_seed(3))
    before = state(layer)
    with pytest.raises(ValueError, match=match) as info:
        layer.load_weights(change(list(static_layer0)))
    assert "nothing was loaded" in str(info.value)
    after = state(layer)
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a failed load_weights changed the layer"


def test_fp8_tensors_and_unquantized_layers_do_not_mix(static_layer0, block_layer0, device):
    """An FP8 checkpoint given to a float32 layer, a static one to a dynamic layer, a per-tensor one to a block-wise
    layer: each name that does not belong is named, with what to do."""
    plain = MixtralMoE(E, K, H, I, device=device)
    with pytest.raises(ValueError, match=r"experts\.0\.w1\.weight has dtype torch\.float8_e4m3fn: an FP8 tensor, but "
                                         r"this layer is float32 \(pass quant_config for an FP8 checkpoint\)"):
        plain.load_weights(static_layer0)
    with pytest.raises(ValueError, match=r"unknown names \(48\): .*weight_scale \(an FP8 weight_scale, but this "
                                         r"layer is not FP8: pass quant_config for an FP8 checkpoint\)"):
        plain.load_weights(static_layer0)
    dynamic = MixtralMoE(E, K, H, I, device=device, quant_config=DYNAMIC)
    with pytest.raises(ValueError, match=r"unknown names \(24\): .*experts\.0\.w1\.input_scale \(not part of a "
                                         r"checkpoint with QuantConfig\(.*activation_scheme='dynamic'"):
        dynamic.load_weights(static_layer0)
    block = MixtralMoE(E, K, H, I, device=device, quant_config=BLOCK)
    with pytest.raises(ValueError, match=r"missing \(24\): .*weight_scale_inv"):
        block.load_weights(dynamic_of(static_layer0))
    static = MixtralMoE(E, K, H, I, device=device, quant_config=STATIC)
    with pytest.raises(ValueError, match=r"missing \(48\): .*weight_scale, .*input_scale"):
        static.load_weights(block_layer0)
    fp32_weights = list(ckpt_mod.iter_moe_weights(ckpt_mod.TINY_MIXTRAL, 0))
    with pytest.raises(ValueError, match=r"w1\.weight has dtype torch\.float32, expected torch\.float8_e4m3fn"):
        static.load_weights(fp32_weights)

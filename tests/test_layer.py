"""moe_lib.layer: MixtralMoE against an fp64 oracle and HF's block, its tensor-parallel shards (in process and
over gloo), and load_weights' all-or-nothing checks. Also the figures of notebook 10 (moe_lib.teach.viz.layer).
The whole model with its blocks swapped is tests/test_model.py; on real TP processes, tests/parallel/test_golden.py.
"""

from __future__ import annotations

import io
import socket

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from moe_lib import checkpoint as ckpt_mod
from moe_lib import runtime
from moe_lib.kernels.routing import topk_softmax
from moe_lib.layer import MixtralMoE
from moe_lib.parallel import shard_w2, shard_w13
from moe_lib.reference import moe_reference
from moe_lib.teach.viz import layer as viz_layer
from moe_lib.testing import assert_close, rel_err, tolerance

E, K, H, I = 8, 2, 64, 128  # the tiny checkpoint's layer
TINY = ckpt_mod.TINY_MIXTRAL


@pytest.fixture(scope="module")
def ckpt():
    return ckpt_mod.open_checkpoint(TINY)


@pytest.fixture(scope="module")
def layer0(ckpt):
    """Layer 0's 25 legacy tensors, as a list of (name, tensor)."""
    return list(ckpt_mod.iter_moe_weights(ckpt, 0))


def full_weights(layer0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate (E, H), w13 (E, 2I, H), w2 (E, H, I)) built by hand from the legacy names."""
    d = dict(layer0)
    p = "model.layers.0.block_sparse_moe."
    w13 = torch.stack([torch.cat([d[f"{p}experts.{e}.w1.weight"], d[f"{p}experts.{e}.w3.weight"]]) for e in range(E)])
    w2 = torch.stack([d[f"{p}experts.{e}.w2.weight"] for e in range(E)])
    return d[f"{p}gate.weight"], w13, w2


def loaded_layer(layer0, device, **kw) -> MixtralMoE:
    layer = MixtralMoE(E, K, H, I, params_dtype=torch.float32, device=device, **kw)
    layer.load_weights(layer0)
    return layer


def snapshot(layer: MixtralMoE) -> list[torch.Tensor]:
    return [p.detach().clone() for p in (layer.gate.weight, layer.w13, layer.w2)]


def assert_unchanged(layer: MixtralMoE, before: list[torch.Tensor]) -> None:
    for p, b in zip((layer.gate.weight, layer.w13, layer.w2), before, strict=True):
        assert torch.equal(p, b), "a failed load_weights changed the layer"


def oracle(layer: MixtralMoE, x: torch.Tensor) -> torch.Tensor:
    """gate + fp32 top-k (torch) + the fp64 loop over experts: independent of the layer's kernels."""
    x2 = x.reshape(-1, layer.hidden_size)
    w, ids = topk_softmax(torch.nn.functional.linear(x2, layer.gate.weight), layer.top_k)  # the gate's own op
    return moe_reference(x2, layer.w13, layer.w2, w, ids, fp64=True).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(H,), (1, H), (5, H), (33, H), (2, 7, H), (3, 1, H), (2, 2, 3, H)])
def test_forward_shapes_match_oracle_and_hf(shape, layer0, gen, device, poison):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    layer = loaded_layer(layer0, device)
    x = torch.randn(*shape, generator=gen).to(device)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert_close(out, oracle(layer, x), tol=tolerance(torch.float32))

    cfg = MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K,
                        experts_implementation="eager")
    block = MixtralSparseMoeBlock(cfg).eval().to(device)
    block.load_state_dict({"gate.weight": layer.gate.weight, "experts.gate_up_proj": layer.w13,
                           "experts.down_proj": layer.w2})
    with torch.no_grad():
        hf = block(x.reshape(1, -1, H)).reshape(x.shape)
    assert_close(out, hf, tol=tolerance(torch.float32))


def test_forward_empty_and_non_contiguous(layer0, gen, device):
    layer = loaded_layer(layer0, device)
    assert layer(torch.empty(0, H, device=device)).shape == (0, H)
    assert layer(torch.empty(2, 0, H, device=device)).shape == (2, 0, H)
    x = torch.randn(H, 9, generator=gen).to(device).T  # (9, H), not contiguous
    assert not x.is_contiguous()
    assert_close(layer(x), layer(x.contiguous()), tol=1e-6)


def test_forward_does_not_track_gradients(layer0, gen, device):
    layer = loaded_layer(layer0, device)
    x = torch.randn(4, H, generator=gen, requires_grad=True).to(device)
    assert not layer(x).requires_grad
    assert not any(p.requires_grad for p in layer.parameters())


def test_seeded_construction_is_reproducible(device):
    a = MixtralMoE(E, K, H, I, generator=torch.Generator().manual_seed(5), device=device)
    b = MixtralMoE(E, K, H, I, generator=torch.Generator().manual_seed(5), device=device)
    c = MixtralMoE(E, K, H, I, generator=torch.Generator().manual_seed(6), device=device)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.w13, c.w13)
    assert torch.isfinite(a.w13).all() and a.w13.std().item() > 0


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (lambda d: torch.randn(3, H + 1).to(d), ValueError, "hidden_size=64"),
        (lambda d: torch.tensor(1.0).to(d), ValueError, "hidden_states"),
        (lambda d: torch.randn(3, H).to(d, torch.float64), TypeError, "hidden_states"),
        (lambda d: torch.randn(3, H).to(d, torch.bfloat16), TypeError, "params_dtype"),
        (lambda d: torch.ones(3, H, dtype=torch.int32).to(d), TypeError, "hidden_states"),
        (lambda d: [0.0] * H, TypeError, "hidden_states"),
    ],
)
def test_forward_bad_inputs(x, exc, match, layer0, device):
    layer = loaded_layer(layer0, device)
    with pytest.raises(exc, match=match):
        layer(x(device))


def test_meta_inputs_and_a_meta_layer_are_refused_clearly(layer0, device):
    with pytest.raises(ValueError, match="hidden_states is on meta"):
        loaded_layer(layer0, device)(torch.randn(3, H, device="meta"))
    on_meta = MixtralMoE(E, K, H, I, device="meta")  # shapes only: fine to build, nothing to compute
    with pytest.raises(ValueError, match="hidden_states is a meta tensor"):
        on_meta(torch.randn(3, H, device="meta"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecations inside Inductor
def test_compiled_layer_has_no_graph_break_and_the_eager_bits(layer0, gen, device):
    """torch.compile(layer, fullgraph=True) (Inductor): the gate is compiled, routing and experts run as the
    torch.ops.moe_lib custom ops; a second token count recompiles once with a dynamic M."""
    layer = loaded_layer(layer0, device)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    for shape in ((2, 5, H), (7, H)):
        x = torch.randn(*shape, generator=gen).to(device)
        assert torch.equal(compiled(x), layer(x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 16, 300])
def test_gpu_layer_captures_in_a_cuda_graph_and_compiles(M, dtype, layer0, gen):
    layer = MixtralMoE(E, K, H, I, params_dtype=dtype, device="cuda")
    layer.load_weights(layer0)
    static = torch.randn(M, H, generator=gen).to("cuda", dtype)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(static)
    for _ in range(2):
        x = torch.randn(M, H, generator=gen).to("cuda", dtype)
        static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, layer(x))
    for mode in ("default", "reduce-overhead"):  # reduce-overhead: Inductor's own CUDA graphs
        torch._dynamo.reset()
        compiled = torch.compile(layer, fullgraph=True, mode=mode)
        for _ in range(3):
            x = torch.randn(M, H, generator=gen).to("cuda", dtype)
            assert torch.equal(compiled(x).clone(), layer(x))


# ----------------------------------------------------------------------------------------------------
# constructor
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_experts=0), ValueError, "num_experts"),
        (dict(num_experts=8.0), TypeError, "num_experts"),
        (dict(num_experts=True), TypeError, "num_experts"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=9), ValueError, "top_k"),
        (dict(hidden_size=0), ValueError, "hidden_size"),
        (dict(intermediate_size="128"), TypeError, "intermediate_size"),
        (dict(params_dtype=torch.float64), TypeError, "params_dtype"),
        (dict(params_dtype=torch.int32), TypeError, "params_dtype"),
        (dict(params_dtype="float32"), TypeError, "params_dtype"),
        (dict(tp_size=0), ValueError, "tp_size"),
        (dict(tp_size=3, tp_rank=0), ValueError, "divisible by tp_size"),
        (dict(tp_size=2, tp_rank=2), ValueError, "tp_rank"),
        (dict(tp_size=2, tp_rank=-1), ValueError, "tp_rank"),
        (dict(tp_size=2), ValueError, "tp_rank is required"),
        (dict(tp_size=2.0, tp_rank=0), TypeError, "tp_size"),
        (dict(reduce_results="yes"), TypeError, "reduce_results"),
        (dict(renormalize=1), TypeError, "renormalize"),
    ],
)
def test_bad_constructor_args(kwargs, exc, match):
    args = dict(num_experts=E, top_k=K, hidden_size=H, intermediate_size=I) | kwargs
    with pytest.raises(exc, match=match):
        MixtralMoE(**args)


def test_defaults_and_repr():
    layer = MixtralMoE(E, K, H, I)
    assert (layer.tp_size, layer.tp_rank, layer.reduce_results) == (1, 0, True)
    assert layer.params_dtype == torch.get_default_dtype()
    assert "intermediate_size=128 (128 on this rank)" in repr(layer)
    assert "(64 on this rank)" in repr(MixtralMoE(E, K, H, I, tp_size=2, tp_rank=1))


# ----------------------------------------------------------------------------------------------------
# tensor parallel
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp_size", [2, 4])
def test_tp_partials_sum_to_full(tp_size, layer0, gen, device, poison):
    full = loaded_layer(layer0, device)
    _, w13, w2 = full_weights(layer0)
    x = torch.randn(3, 11, H, generator=gen).to(device)
    partials = []
    for rank in range(tp_size):
        layer = loaded_layer(layer0, device, tp_size=tp_size, tp_rank=rank, reduce_results=False)
        assert layer.w13.shape == (E, 2 * I // tp_size, H) and layer.w2.shape == (E, H, I // tp_size)
        assert torch.equal(layer.w13.cpu(), shard_w13(w13, tp_size, rank))
        assert torch.equal(layer.w2.cpu(), shard_w2(w2, tp_size, rank))
        assert torch.equal(layer.gate.weight, full.gate.weight)  # replicated
        partials.append(layer(x))
    total = torch.stack(partials).sum(dim=0)
    assert_close(total, full(x), tol=tolerance(torch.float32))
    assert rel_err(partials[0], full(x)) > 0.1  # one rank alone is far off: the sum is needed


def test_tp_shards_from_fused_names_equal_legacy(layer0, device):
    """A rank that loads transformers 5.x names gets the same shards as one that loads legacy names."""
    gate, w13, w2 = full_weights(layer0)
    fused = {"model.layers.0.mlp.gate.weight": gate, "model.layers.0.mlp.experts.gate_up_proj": w13,
             "model.layers.0.mlp.experts.down_proj": w2}
    for rank in range(2):
        a = loaded_layer(layer0, device, tp_size=2, tp_rank=rank, reduce_results=False)
        b = MixtralMoE(E, K, H, I, tp_size=2, tp_rank=rank, reduce_results=False, device=device)
        b.load_weights(fused)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_reduce_results_needs_a_matching_process_group(layer0, device):
    x = torch.randn(2, H).to(device)
    layer = loaded_layer(layer0, device, tp_size=2, tp_rank=0)
    with pytest.raises(RuntimeError, match="reduce_results=False"):
        layer(x)
    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        pytest.skip("needs torch.distributed, not yet initialized")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                                         world_size=1)
    try:
        with pytest.raises(RuntimeError, match="1 ranks"):  # a world of 1 cannot sum 2 shards
            layer(x)
        solo = MixtralMoE(E, K, H, I, device=device)  # tp_size from the world: 1
        assert (solo.tp_size, solo.tp_rank) == (1, 0)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, world: int, port: int, x: torch.Tensor, results) -> None:
    """One tensor-parallel rank: build, load the shared checkpoint, forward with the all-reduce."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        layer = MixtralMoE(E, K, H, I, params_dtype=torch.float32)  # tp_size and tp_rank from the world
        layer.load_weights(ckpt_mod.iter_moe_weights(TINY, 0))
        results.put((rank, layer.tp_size, layer(x).tolist()))  # plain data: this process exits before the read
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(runtime.HAS_CUDA, reason="CPU gloo run; on GPUs the parallel launcher covers NCCL")
def test_tp2_all_reduce_over_gloo(layer0, gen):
    import torch.multiprocessing as mp

    x = torch.randn(2, 5, H, generator=gen)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.spawn(_gloo_rank, args=(2, _free_port(), x, results), nprocs=2, join=True)
    outs = dict((rank, (tp, out)) for rank, tp, out in (results.get() for _ in range(2)))
    full = loaded_layer(layer0, "cpu")(x)
    for rank in range(2):
        tp, out = outs[rank]
        out = torch.tensor(out)
        assert tp == 2
        assert_close(out, full, tol=tolerance(torch.float32), what=f"rank {rank} after all-reduce")


# ----------------------------------------------------------------------------------------------------
# load_weights
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "model.layers.0.", "layers.17.", "language_model.model.layers.3."])
def test_legacy_names_under_any_prefix(prefix, layer0, device):
    renamed = [(prefix + n.removeprefix("model.layers.0."), t) for n, t in layer0]
    layer = MixtralMoE(E, K, H, I, device=device)
    assert layer.load_weights(renamed) == sorted(n for n, _ in renamed)
    gate, w13, w2 = full_weights(layer0)
    assert torch.equal(layer.gate.weight.cpu(), gate)
    assert torch.equal(layer.w13.cpu(), w13) and torch.equal(layer.w2.cpu(), w2)


def test_fused_names_from_an_hf_model(device):
    model = ckpt_mod.load_hf_model(TINY)
    for layer_idx, block in enumerate(decoder.mlp for decoder in model.model.layers):
        layer = MixtralMoE(E, K, H, I, device=device)
        names = layer.load_weights({f"model.layers.{layer_idx}.mlp.{k}": t for k, t in block.state_dict().items()})
        assert len(names) == 3
        assert torch.equal(layer.w13.cpu(), block.experts.gate_up_proj.detach())
        assert torch.equal(layer.w2.cpu(), block.experts.down_proj.detach())
        assert torch.equal(layer.gate.weight.cpu(), block.gate.weight.detach())


def test_load_casts_dtype(layer0, device):
    layer = MixtralMoE(E, K, H, I, params_dtype=torch.float32, device=device)
    layer.load_weights((n, t.to(torch.bfloat16)) for n, t in layer0)
    _, w13, _ = full_weights(layer0)
    assert layer.w13.dtype == torch.float32
    assert torch.equal(layer.w13.cpu(), w13.to(torch.bfloat16).float())


def _drop(names_to_drop):
    return lambda ws: [(n, t) for n, t in ws if not any(d in n for d in names_to_drop)]


P = "model.layers.0.block_sparse_moe."


@pytest.mark.parametrize(
    "change,match",
    [
        (_drop([".experts.3."]), r"missing \(3\): .*experts\.3\.w1\.weight.*experts\.3\.w2\.weight"),
        (_drop([".experts.7.w3."]), r"missing \(1\): model\.layers\.0\.block_sparse_moe\.experts\.7\.w3\.weight"),
        (_drop(["gate.weight"]), r"missing \(1\): .*gate\.weight"),
        (lambda ws: ws + [("model.layers.0.block_sparse_moe.experts.0.w4.weight", torch.randn(I, H))],
         r"unknown names \(1\): .*w4\.weight"),
        (lambda ws: ws + [(P + "experts.8.w1.weight", torch.randn(I, H))], r"expert 8 >= num_experts 8"),
        (lambda ws: ws + [("lm_head.weight", torch.randn(256, H))], r"unknown names \(1\): lm_head\.weight"),
        (lambda ws: ws + [ws[5]], r"given twice \(1\)"),
        (lambda ws: [(n, t[:, :-1] if n.endswith("experts.5.w2.weight") else t) for n, t in ws],
         r"experts\.5\.w2\.weight has shape \(64, 127\), expected \(64, 128\)"),
        (lambda ws: [(n, t.T if n.endswith("experts.2.w1.weight") else t) for n, t in ws],
         r"experts\.2\.w1\.weight has shape \(64, 128\), expected \(128, 64\)"),
        (lambda ws: [(n, t[:4] if n.endswith("gate.weight") else t) for n, t in ws], r"gate\.weight has shape"),
        (lambda ws: [(n, t.to(torch.int32) if n.endswith("experts.1.w2.weight") else t) for n, t in ws],
         r"dtype torch\.int32"),
        (lambda ws: ws + [(n.replace("layers.0", "layers.1"), t) for n, t in ws],
         r"more than one layer .*model\.layers\.0\.block_sparse_moe\., model\.layers\.1\.block_sparse_moe\."),
        (lambda ws: [(n, t) for n, t in ws if not n.endswith("gate.weight")]
         + [("model.layers.0.mlp.gate.weight", torch.randn(E, H))], r"naming scheme"),
        (lambda ws: [], r"no weights were given"),
    ],
)
def test_bad_checkpoints_load_nothing(change, match, layer0, device):
    layer = MixtralMoE(E, K, H, I, device=device, generator=torch.Generator().manual_seed(3))
    before = snapshot(layer)
    with pytest.raises(ValueError, match=match) as info:
        layer.load_weights(change(list(layer0)))
    assert "nothing was loaded" in str(info.value)
    assert_unchanged(layer, before)


def test_fused_missing_and_misshapen(layer0, device):
    gate, w13, w2 = full_weights(layer0)
    layer = MixtralMoE(E, K, H, I, device=device)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"missing \(1\): model\.layers\.0\.mlp\.experts\.down_proj"):
        layer.load_weights({"model.layers.0.mlp.gate.weight": gate, "model.layers.0.mlp.experts.gate_up_proj": w13})
    with pytest.raises(ValueError, match=r"gate_up_proj has shape \(7, 256, 64\), expected \(8, 256, 64\)"):
        layer.load_weights({"mlp.gate.weight": gate, "mlp.experts.gate_up_proj": w13[:7], "mlp.experts.down_proj": w2})
    assert_unchanged(layer, before)


def test_error_lists_are_capped(layer0, device):
    layer = MixtralMoE(E, K, H, I, device=device)
    junk = [(f"junk.{i}", torch.zeros(1)) for i in range(40)]
    with pytest.raises(ValueError, match=r"unknown names \(40\): junk\.0, .*\.\.\. and 28 more"):
        layer.load_weights(layer0 + junk)


def test_failure_midway_through_a_stream_loads_nothing(layer0, device):
    """An error raised by the source after some tensors were taken (a corrupt shard) leaves the layer as it was."""
    layer = MixtralMoE(E, K, H, I, device=device)
    before = snapshot(layer)

    def stream():
        yield from layer0[:20]
        raise ckpt_mod.CheckpointError("shard 2 is corrupt")

    with pytest.raises(ckpt_mod.CheckpointError, match="shard 2"):
        layer.load_weights(stream())
    assert_unchanged(layer, before)


def test_load_weights_bad_entries(layer0, device):
    layer = MixtralMoE(E, K, H, I, device=device)
    with pytest.raises(TypeError, match="pairs"):
        layer.load_weights([layer0[0][1]])
    with pytest.raises(TypeError, match="name must be a str"):
        layer.load_weights([(3, layer0[0][1])])
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        layer.load_weights([(layer0[0][0], [1.0, 2.0])])


# ----------------------------------------------------------------------------------------------------
# figures (moe_lib.teach.viz.layer)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def no_pyplot():
    before = plt.get_fignums()
    yield
    after = plt.get_fignums()
    plt.close("all")
    assert after == before, "a viz_layer function registered a figure with pyplot"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    return buf.getvalue()


@pytest.mark.parametrize("inter,tp", [(128, 1), (128, 2), (96, 4), (64, 8), (128, 16)])
def test_shard_layout(inter, tp, no_pyplot):
    fig = viz_layer.shard_layout(inter, tp)
    assert isinstance(fig, Figure)
    patches = fig.axes[0].patches
    assert len(patches) == 2 * tp + 1 + 3 * tp + tp + 1  # checkpoint rows + frame, ranks, w2 strips + frame
    assert _png(fig) == _png(viz_layer.shard_layout(inter, tp))


@pytest.mark.parametrize("args,exc,match", [
    ((130, 4), ValueError, "divisible"), ((0, 1), ValueError, "intermediate_size"), ((128, 0), ValueError, "tp_size"),
    ((128.0, 2), TypeError, "intermediate_size"),
])
def test_shard_layout_bad_args(args, exc, match):
    with pytest.raises(exc, match=match):
        viz_layer.shard_layout(*args)


def test_expert_usage(gen, no_pyplot):
    routing = [topk_softmax(torch.randn(30, E, generator=gen), K) for _ in range(3)]
    fig = viz_layer.expert_usage(routing, E, layer_names=["a", "b", "c"])
    assert isinstance(fig, Figure)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 3
    shown = maps[1].images[0].get_array()  # (E, T), blank where not chosen
    assert shown.shape == (E, 30) and int((~shown.mask).sum()) == 30 * K
    w, ids = routing[1]
    t, j = 4, 1
    assert shown[int(ids[t, j]), t] == pytest.approx(float(w[t, j]))
    assert _png(fig) == _png(viz_layer.expert_usage(routing, E, layer_names=["a", "b", "c"]))


def test_expert_usage_bad_args(gen):
    r = topk_softmax(torch.randn(10, E, generator=gen), K)
    short = topk_softmax(torch.randn(9, E, generator=gen), K)
    with pytest.raises(TypeError, match="routing"):
        viz_layer.expert_usage([], E)
    with pytest.raises(TypeError, match=r"routing\[0\]"):
        viz_layer.expert_usage([r[0]], E)
    with pytest.raises(ValueError, match="same tokens"):
        viz_layer.expert_usage([r, short], E)
    with pytest.raises(ValueError, match="topk_ids"):
        viz_layer.expert_usage([r], 4)
    with pytest.raises(ValueError, match="layer_names"):
        viz_layer.expert_usage([r], E, layer_names=["a", "b"])
    with pytest.raises(TypeError, match="title"):
        viz_layer.expert_usage([r], E, title=3)


@pytest.mark.gpu
def test_bf16_layer_on_gpu(layer0, gen, device):
    layer = MixtralMoE(E, K, H, I, params_dtype=torch.bfloat16, device=device)
    layer.load_weights(layer0)
    x = torch.randn(300, H, generator=gen).to(device, torch.bfloat16)
    assert_close(layer(x), oracle(layer, x), tol=tolerance(torch.bfloat16))


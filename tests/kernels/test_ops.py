"""moe_lib.kernels.ops: the public kernels as torch.ops.moe_lib.* — opcheck passes, each op gives the bits of
its Python function, the fake implementations infer shapes and refuse bad input at trace time, and
torch.compile(fullgraph=True) runs through them (the layer itself: tests/test_layer.py)."""

import pytest
import torch
from problems import make_problem
from torch._subclasses.fake_tensor import FakeTensorMode

from moe_lib.kernels import ops
from moe_lib.kernels.align import moe_align_block_size
from moe_lib.kernels.experts import fused_experts, fused_moe
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.runtime import default_device

CONFIG = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=16, GROUP_SIZE_M=2, num_warps=4, num_stages=2,
              down=dict(BLOCK_SIZE_N=16))
CONFIG_JSON = '{"BLOCK_SIZE_K": 16, "BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "GROUP_SIZE_M": 2, ' \
              '"down": {"BLOCK_SIZE_N": 16}, "num_stages": 2, "num_warps": 4}'


def small(gen, device, M=3, k=2):
    return make_problem(M, 2, 32, 16, k, gen, device=device)  # 2 experts: the interpreter runs few programs


def emap(device):
    return torch.tensor([-1, 0, -1, 1], dtype=torch.int32, device=device)  # 4 global experts, 2 here


def test_every_public_kernel_is_an_op():
    assert set(ops.OPS) == {"topk_softmax", "moe_align_block_size", "fused_experts", "fused_moe"}
    for name in ops.OPS:
        assert hasattr(torch.ops.moe_lib, name)


@pytest.mark.parametrize("case", ["topk_softmax", "align", "experts", "moe"])
def test_opcheck(case, gen, device):
    x, w13, w2, w, ids, logits = small(gen, device)
    global_ids = torch.tensor([[0, 1], [3, 2], [1, 3]], device=device)  # int64 global ids
    op, args = {
        "topk_softmax": (torch.ops.moe_lib.topk_softmax, (logits, 2, False)),
        "align": (torch.ops.moe_lib.moe_align_block_size, (global_ids, 16, 4, emap(device), 2)),
        "experts": (torch.ops.moe_lib.fused_experts, (x, w13, w2, w, global_ids, emap(device), CONFIG_JSON)),
        "moe": (torch.ops.moe_lib.fused_moe, (x, w13, w2, logits, 2)),
    }[case]
    torch.library.opcheck(op, args)


def test_each_op_gives_the_bits_of_its_function(gen, device):
    x, w13, w2, w, ids, logits = small(gen, device)
    for got, want in [
        (torch.ops.moe_lib.topk_softmax(logits, 2), topk_softmax_triton(logits, 2)),
        (torch.ops.moe_lib.moe_align_block_size(ids, 16, 4), moe_align_block_size(ids, 16, 4)),
        ((torch.ops.moe_lib.fused_experts(x, w13, w2, w, ids, None, CONFIG_JSON),),
         (fused_experts(x, w13, w2, w, ids, config=CONFIG),)),
        ((torch.ops.moe_lib.fused_moe(x, w13, w2, logits, 2, False),), (fused_moe(x, w13, w2, logits, 2, False),)),
    ]:
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_the_ops_validate_like_the_functions(gen, device):
    x, w13, w2, w, ids, logits = small(gen, device)
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 2\)"):
        torch.ops.moe_lib.fused_experts(x, w13, w2, w, ids + 2)
    with pytest.raises(ValueError, match="config"):
        torch.ops.moe_lib.fused_experts(x, w13, w2, w, ids, None, '{"BLOCK_SIZE_M": 16')
    group_0 = CONFIG_JSON.replace('"GROUP_SIZE_M": 2', '"GROUP_SIZE_M": 0')
    with pytest.raises(ValueError, match="GROUP_SIZE_M"):
        torch.ops.moe_lib.fused_experts(x, w13, w2, w, ids, None, group_0)
    with pytest.raises(ValueError, match="router_logits has size 1 in dim 1"):
        torch.ops.moe_lib.fused_moe(x, w13, w2, logits[:, :1], 2)


def test_fakes_infer_shapes_and_refuse_bad_shapes(gen):
    x, w13, w2, w, ids, logits = make_problem(7, 4, 32, 16, 2, gen, device=default_device())
    with FakeTensorMode() as mode:  # nothing runs: shapes only, the way torch.compile traces
        fx, f13, f2, fw, fids, flog = (mode.from_tensor(t) for t in (x, w13, w2, w, ids, logits))
        out = torch.ops.moe_lib.fused_experts(fx, f13, f2, fw, fids)
        assert out.shape == (7, 32) and out.dtype == torch.float32
        weights, chosen = torch.ops.moe_lib.topk_softmax(flog, 3)
        assert weights.shape == chosen.shape == (7, 3) and chosen.dtype == torch.int32
        sorted_ids, expert_ids, total = torch.ops.moe_lib.moe_align_block_size(fids, 16, 4)
        assert sorted_ids.shape == (14 + 4 * 15,) and expert_ids.shape == (5,) and total.shape == (1,)
        assert torch.ops.moe_lib.fused_moe(fx, f13, f2, flog, 2).shape == (7, 32)
        with pytest.raises(ValueError, match="w2"):
            torch.ops.moe_lib.fused_experts(fx, f13, f2[:, :-1], fw, fids)
        with pytest.raises(ValueError, match="topk_ids has size 14 in dim 0"):
            torch.ops.moe_lib.fused_experts(fx, f13, f2, torch.cat([fw, fw]), torch.cat([fids, fids]))
        with pytest.raises(ValueError, match="router_logits has size 6 in dim 1"):
            torch.ops.moe_lib.fused_moe(fx, f13, f2, torch.cat([flog, flog[:, :2]], 1), 2)
        with pytest.raises(ValueError, match="top_k"):
            torch.ops.moe_lib.topk_softmax(flog, 5)


def test_compiled_fused_moe_with_a_config_and_an_expert_map(gen, device):
    # fullgraph: no graph break anywhere, the config dict and the map included; same bits as eager.
    x, w13, w2, w, ids, _ = small(gen, device)
    logits4 = torch.randn(3, 4, generator=gen).to(device)

    def f(x, logits):
        return fused_moe(x, w13, w2, logits, 2, expert_map=emap(device), config=CONFIG)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, logits4), f(x, logits4))


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 64, 1000])
def test_gpu_opcheck_and_compiled_experts(M, gen):
    x, w13, w2, w, ids, logits = make_problem(M, 8, 1024, 512, 2, gen, torch.bfloat16, "cuda")
    logits = logits.to(torch.bfloat16)
    torch.library.opcheck(torch.ops.moe_lib.fused_experts, (x, w13, w2, w, ids))
    torch.library.opcheck(torch.ops.moe_lib.fused_moe, (x, w13, w2, logits, 2))
    compiled = torch.compile(lambda x, lg: fused_moe(x, w13, w2, lg, 2), fullgraph=True)
    assert torch.equal(compiled(x, logits), fused_moe(x, w13, w2, logits, 2))

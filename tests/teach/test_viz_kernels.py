"""moe_lib.teach.viz.kernels: each figure function returns a Figure drawn from fresh random inputs, keeps pyplot's
global state untouched, draws the same picture for the same inputs, and rejects bad input by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from moe_lib.kernels.align import moe_align_block_size_torch
from moe_lib.kernels.routing import topk_softmax
from moe_lib.teach.viz import kernels as vk

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def _aligned(gen: torch.Generator, M: int, E: int, k: int, block: int, expert_map=None):
    _, ids = topk_softmax(torch.randn(M, E, generator=gen), k)  # (M, k) fresh routing
    return ids, moe_align_block_size_torch(ids, block, E, expert_map)


def _collection_sizes(fig: Figure) -> dict[str, int]:
    return {c.get_gid(): len(c.get_paths()) for c in fig.axes[0].collections}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def _records(gen: torch.Generator, tps=(1, 8), ms=(1, 4, 64, 1024)) -> list[dict]:
    us = torch.rand(len(tps) * len(ms) * 3, generator=gen) * 1000 + 10
    it = iter(us.tolist())
    return [{"tp": tp, "M": m, "impl": impl, "us": next(it), "config": None, "floor_us": 5.0 * m + 20}
            for tp in tps for m in ms for impl in ("moe_lib", "grouped_mm", "loop")]


# ----------------------------------------------------------------------------------------------------
# Structure of each figure
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("M,E,k,block", [(6, 8, 2, 4), (40, 8, 2, 16), (33, 16, 4, 64), (1, 4, 1, 8), (50, 256, 2, 16)])
def test_alignment_layout(M, E, k, block, gen):
    _, (sorted_ids, expert_ids, total) = _aligned(gen, M, E, k, block)
    fig = vk.alignment_layout(sorted_ids, expert_ids, total, block_size=block, num_valid=M * k, num_experts=E)
    assert isinstance(fig, Figure)
    sizes = _collection_sizes(fig)
    n_total = int(total.item())
    assert sizes["experts"] == M * k
    assert sizes["padding"] == n_total - M * k
    assert sizes.get("unused", 0) == sorted_ids.numel() - n_total
    assert "remote" not in sizes
    assert fig.axes[0].get_title()
    assert fig.legends


def test_alignment_layout_marks_remote_experts(gen):
    expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3], dtype=torch.int32)
    ids, (sorted_ids, expert_ids, total) = _aligned(gen, 30, 8, 2, 8, expert_map)
    fig = vk.alignment_layout(sorted_ids, expert_ids, total, block_size=8, num_valid=60, num_experts=8,
                              expert_label="local expert")
    assert any(t.get_text().startswith("local expert") for t in fig.legends[0].get_texts())
    sizes = _collection_sizes(fig)
    remote = int((ids < 4).sum())
    assert sizes["remote"] == remote and sizes["experts"] == 60 - remote


def test_alignment_layout_accepts_int_total_and_wraps(gen):
    _, (sorted_ids, expert_ids, total) = _aligned(gen, 20, 8, 2, 4)
    fig = vk.alignment_layout(sorted_ids, expert_ids, int(total), block_size=4, num_valid=40, num_experts=8,
                              blocks_per_row=1, title="t")
    assert fig.axes[0].get_title() == "t"
    assert len(fig.axes[0].get_yticks()) == expert_ids.numel()  # one strip per block


def test_padding_waste(gen):
    ms = [1, 4, 16, 64, 256]
    wasted = {b: (torch.rand(len(ms), generator=gen) * 0.9).tolist() for b in (16, 64)}
    fig = vk.padding_waste(ms, wasted, num_experts=8, top_k=2)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * 2 + 1  # measured + worst case per BLOCK_M, and the legend proxy
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 100 * np.array(wasted[16]))
    worst = ax.lines[1].get_ydata()  # BLOCK_M = 16: P = min(E, Mk) * 15
    numel = np.array(ms) * 2
    pad = np.minimum(8, numel) * 15
    np.testing.assert_allclose(worst, 100 * pad / (numel + pad))
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0, 100)


def test_fused_tile_gather(gen):
    flat = torch.randperm(64, generator=gen)[:9].sort().values  # (9,) distinct flat ids
    fig = vk.fused_tile_gather(flat, top_k=2, num_tokens=32, hidden=64, inter=128, expert=3, col_start=64,
                               block_n=64)
    a, b, c = (ax.images[0].get_array() for ax in fig.axes)
    assert a.shape == (32, 64) and b.shape == (256, 64) and c.shape == (64, 128)
    assert set(np.flatnonzero(np.asarray(a)[:, 0])) == set((flat // 2).tolist())
    assert (np.asarray(b)[64:128] == 1).all() and (np.asarray(b)[192:] == 2).all()
    assert (np.asarray(c) == 3).sum() == 9 * 64


@pytest.mark.parametrize("shape", [(8, 6), (1, 1), (30, 3)])
def test_tile_program_ids(shape, gen):
    perm = torch.randperm(shape[0] * shape[1], generator=gen).view(shape)  # (num_pid_m, num_pid_n)
    fig = vk.tile_program_ids({"a": perm, "b": perm.flip(0)}, title="order")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 and len(fig.axes) == 3  # two maps and one shared colorbar
    np.testing.assert_array_equal(np.asarray(images[0].images[0].get_array()), perm.numpy())


@pytest.mark.parametrize("n_runs", [1, 2])
def test_latency_vs_tokens(n_runs, gen):
    runs = [{"gpu": f"GPU {i}", "records": _records(gen)} for i in range(n_runs)]
    runs[0]["records"].append({"tp": 1, "M": 2, "impl": "loop", "us": None, "error": "x"})  # a failed point
    fig = vk.latency_vs_tokens(runs, tps=(1, 8))
    assert len(fig.axes) == 2 * n_runs
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["moe_lib", "grouped_mm", "loop", "floor"]
    assert all(len(line.get_xdata()) == 4 for line in ax.lines)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["moe_lib", "grouped_mm", "loop", "floor"]


def test_latency_vs_tokens_missing_tp(gen):
    fig = vk.latency_vs_tokens([{"gpu": "g", "records": _records(gen, tps=(1,))}], tps=(1, 4))
    assert not fig.axes[1].lines and fig.axes[1].texts


def test_same_inputs_draw_the_same_picture(gen):
    _, aligned = _aligned(gen, 12, 8, 2, 4)

    def draw():
        return vk.alignment_layout(*aligned, block_size=4, num_valid=24, num_experts=8)

    assert _png(draw()) == _png(draw())


# ----------------------------------------------------------------------------------------------------
# Bad input: a ValueError / TypeError that names the argument
# ----------------------------------------------------------------------------------------------------
_IDS = torch.tensor([[0, 1], [2, 1]], dtype=torch.int32)
S, B, T = moe_align_block_size_torch(_IDS, 4, 4)  # (16,), (4,), (1,)


def _layout(**kw):
    args = dict(sorted_token_ids=S, expert_ids=B, num_tokens_post_padded=T, block_size=4, num_valid=4,
                num_experts=4)
    args.update(kw)
    return vk.alignment_layout(args.pop("sorted_token_ids"), args.pop("expert_ids"),
                               args.pop("num_tokens_post_padded"), **args)


PID = torch.arange(6).view(2, 3)
RUN = {"gpu": "g", "records": [{"tp": 1, "M": 1, "impl": "moe_lib", "us": 1.0}]}
BAD = [
    (lambda: _layout(sorted_token_ids=S.float()), TypeError, "sorted_token_ids"),
    (lambda: _layout(sorted_token_ids=S.view(4, 4)), ValueError, "sorted_token_ids"),
    (lambda: _layout(sorted_token_ids=S + 10), ValueError, "sorted_token_ids"),
    (lambda: _layout(expert_ids=B[:2]), ValueError, "expert_ids"),
    (lambda: _layout(expert_ids=B + 10), ValueError, "expert_ids"),
    (lambda: _layout(expert_ids=B.tolist()), TypeError, "expert_ids"),
    (lambda: _layout(num_tokens_post_padded=3), ValueError, "num_tokens_post_padded"),
    (lambda: _layout(num_tokens_post_padded=torch.tensor([4, 8])), ValueError, "num_tokens_post_padded"),
    (lambda: _layout(num_tokens_post_padded=4.0), TypeError, "num_tokens_post_padded"),
    (lambda: _layout(block_size=0), ValueError, "block_size"),
    (lambda: _layout(num_experts=0), ValueError, "num_experts"),
    (lambda: _layout(num_valid=-1), ValueError, "num_valid"),
    (lambda: _layout(blocks_per_row=0), ValueError, "blocks_per_row"),
    (lambda: _layout(title=1), TypeError, "title"),
    (lambda: _layout(expert_label=None), TypeError, "expert_label"),
    (lambda: vk.padding_waste(4, {16: [0.5]}, num_experts=8, top_k=2), TypeError, "num_tokens"),
    (lambda: vk.padding_waste([], {16: []}, num_experts=8, top_k=2), ValueError, "num_tokens"),
    (lambda: vk.padding_waste([1, 0], {16: [0.5, 0.5]}, num_experts=8, top_k=2), ValueError, r"num_tokens\[1\]"),
    (lambda: vk.padding_waste([1], [0.5], num_experts=8, top_k=2), TypeError, "wasted"),
    (lambda: vk.padding_waste([1], {}, num_experts=8, top_k=2), ValueError, "wasted"),
    (lambda: vk.padding_waste([1, 2], {16: [0.5]}, num_experts=8, top_k=2), ValueError, "wasted"),
    (lambda: vk.padding_waste([1], {16: [1.5]}, num_experts=8, top_k=2), ValueError, "wasted"),
    (lambda: vk.padding_waste([1], {16: [0.5]}, num_experts=8, top_k=9), ValueError, "top_k"),
    (lambda: vk.fused_tile_gather(torch.tensor([0, 70]), top_k=2, num_tokens=32, hidden=8, inter=16, expert=0,
                                  col_start=0, block_n=8), ValueError, "flat_ids"),
    (lambda: vk.fused_tile_gather(torch.tensor([0.0]), top_k=2, num_tokens=32, hidden=8, inter=16, expert=0,
                                  col_start=0, block_n=8), TypeError, "flat_ids"),
    (lambda: vk.fused_tile_gather(torch.tensor([0]), top_k=2, num_tokens=32, hidden=8, inter=16, expert=0,
                                  col_start=16, block_n=8), ValueError, "col_start"),
    (lambda: vk.fused_tile_gather(torch.tensor([0]), top_k=2, num_tokens=32, hidden=8, inter=16, expert=-1,
                                  col_start=0, block_n=8), ValueError, "expert"),
    (lambda: vk.tile_program_ids(PID), TypeError, "pid_maps"),
    (lambda: vk.tile_program_ids({}), ValueError, "pid_maps"),
    (lambda: vk.tile_program_ids({"a": PID.float()}), TypeError, "pid_maps"),
    (lambda: vk.tile_program_ids({"a": PID[0]}), ValueError, "pid_maps"),
    (lambda: vk.tile_program_ids({"a": PID}, title=2), TypeError, "title"),
    (lambda: vk.latency_vs_tokens(RUN), TypeError, "runs"),
    (lambda: vk.latency_vs_tokens([]), ValueError, "runs"),
    (lambda: vk.latency_vs_tokens([{"gpu": "g"}]), ValueError, r"runs\[0\]"),
    (lambda: vk.latency_vs_tokens([{"gpu": "g", "records": [{"tp": 1}]}]), ValueError, r"runs\[0\]"),
    (lambda: vk.latency_vs_tokens([RUN], tps=[0]), ValueError, r"tps\[0\]"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()

"""moe_align_block_size: the Triton version equals the torch specification, and the spec is right."""

import pytest
import torch

from moe_lib.kernels.align import align_sizes, moe_align_block_size, moe_align_block_size_torch

IMPLS = [moe_align_block_size_torch, moe_align_block_size]


def random_ids(M, E, k, gen, skew=False):
    """(M, k) distinct experts per token; skew piles tokens onto few experts (some get none)."""
    if skew:
        scores = torch.rand(M, E, generator=gen) + torch.linspace(2, 0, E)
    else:
        scores = torch.rand(M, E, generator=gen)
    return scores.topk(k, dim=1).indices.to(torch.int32)


def check_layout(ids, block, E, sorted_ids, expert_ids, ntpp, expert_map=None):
    """Independent checks of the semantics, not a re-implementation."""
    flat = ids.reshape(-1).long().cpu()
    numel = flat.numel()
    sorted_ids, expert_ids, total = sorted_ids.cpu(), expert_ids.cpu(), int(ntpp.item())
    max_len, max_blocks = align_sizes(numel, block, E)
    assert sorted_ids.shape == (max_len,) and expert_ids.shape == (max_blocks,)
    assert total % block == 0 and total <= max_len
    real = sorted_ids[:total][sorted_ids[:total] < numel]
    assert sorted(real.tolist()) == list(range(numel)), "every flat id exactly once"
    assert (sorted_ids[total:] == numel).all()
    counts = torch.bincount(flat, minlength=E)
    assert (expert_ids[total // block:] == -1).all()
    pos = 0
    for e in range(E):
        if counts[e] == 0:
            continue
        group = sorted_ids[pos : pos + counts[e]]
        assert (flat[group.long()] == e).all() and (group[1:] > group[:-1]).all(), "ascending inside an expert"
        padded = -(-int(counts[e]) // block) * block
        assert (sorted_ids[pos + counts[e] : pos + padded] == numel).all()
        want = e if expert_map is None else int(expert_map[e])
        assert (expert_ids[pos // block : (pos + padded) // block] == want).all()
        pos += padded
    assert pos == total


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "M,E,k,block",
    [(0, 8, 2, 16), (1, 8, 2, 16), (2, 2, 2, 16), (7, 8, 1, 32), (33, 8, 2, 16), (64, 16, 4, 64),
     (257, 64, 4, 32), (1000, 256, 4, 16), (1000, 8, 8, 128), (3, 1, 1, 16), (5000, 8, 2, 64)],
)
def test_layout(impl, M, E, k, block, gen, device, poison):
    for skew in (False, True):
        ids = random_ids(M, E, k, gen, skew).to(device)
        check_layout(ids, block, E, *impl(ids, block, E))


@pytest.mark.parametrize("M,E,k,block", [(1, 8, 2, 16), (100, 8, 2, 16), (513, 32, 6, 64), (4000, 256, 8, 32)])
def test_triton_equals_torch(M, E, k, block, gen, device, poison):
    ids = random_ids(M, E, k, gen, skew=True).to(device)
    ref = moe_align_block_size_torch(ids, block, E)
    for r, g in zip(ref, moe_align_block_size(ids, block, E), strict=True):
        assert torch.equal(r, g)


@pytest.mark.parametrize("impl", IMPLS)
def test_expert_map_marks_remote_experts(impl, gen, device):
    E = 8
    ids = random_ids(50, E, 2, gen).to(device)
    expert_map = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1], dtype=torch.int32, device=device)
    out = impl(ids, 16, E, expert_map)
    check_layout(ids, 16, E, *out, expert_map=expert_map.cpu())
    assert torch.equal(out[0], moe_align_block_size_torch(ids, 16, E)[0])  # layout itself unchanged


def test_int64_ids_and_non_contiguous(gen, device):
    ids = random_ids(40, 8, 4, gen).to(device)[:, ::2]  # (40, 2) non-contiguous view
    ref = moe_align_block_size_torch(ids.contiguous(), 16, 8)
    for r, g in zip(ref, moe_align_block_size(ids.long(), 16, 8), strict=True):
        assert torch.equal(r, g)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs(impl):
    ids = torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(TypeError, match="topk_ids"):
        impl(ids.float(), 16, 8)
    with pytest.raises(ValueError, match="block_size"):
        impl(ids, 0, 8)
    with pytest.raises(ValueError, match="num_experts"):
        impl(ids, 16, 0)
    with pytest.raises(ValueError, match="expert_map"):
        impl(ids, 16, 8, torch.zeros(4, dtype=torch.int32))


def test_triton_block_size_power_of_two():
    with pytest.raises(ValueError, match="block_size"):
        moe_align_block_size(torch.zeros(4, 2, dtype=torch.int32), 24, 8)


@pytest.mark.gpu
def test_large_on_gpu(gen):
    ids = random_ids(100_000, 8, 6, gen).cuda()
    check_layout(ids, 64, 8, *moe_align_block_size(ids, 64, 8))

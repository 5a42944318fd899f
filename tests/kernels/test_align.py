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


# ---- values out of range: raised when checked; dropped alike by both versions when not --------------------
def bad_ids(M, k, E, dtype, gen):
    """(M, k) ids with every kind of out-of-range value: negative, E and above, and for int64 ids that only a
    32-bit truncation would bring back into [0, E)."""
    ids = torch.randint(-3, E + 3, (M, k), generator=gen).to(dtype)
    if dtype == torch.int64:
        ids[0, 0], ids[1, -1], ids[2, 0] = 2**32 + 3, -(2**33), 2**31
    return ids


def bad_map(E, num_local, dtype, gen):
    emap = torch.randint(-1, num_local, (E,), generator=gen).to(dtype)
    emap[0], emap[1] = 99, -5
    if dtype == torch.int64:
        emap[2] = 2**32 + 1
    return emap


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("E", [6, 8])  # 6: ids in [E, E_PAD) would match the kernel's padding columns
@pytest.mark.parametrize("with_map", [False, True])
def test_unchecked_out_of_range_values_are_dropped_alike(dtype, E, with_map, gen, device, poison):
    ids = bad_ids(40, 3, E, dtype, gen).to(device)
    emap = bad_map(E, 3, dtype, gen).to(device) if with_map else None
    ref = moe_align_block_size_torch(ids, 16, E, emap, num_local=3, check_ids=False)
    for r, g in zip(ref, moe_align_block_size(ids, 16, E, emap, num_local=3, check_ids=False), strict=True):
        assert torch.equal(r, g)
    # the semantics: exactly the in-range slots are placed; an out-of-range map value marks its blocks -1
    sorted_ids, expert_ids, total = (t.cpu() for t in ref)
    flat = ids.reshape(-1).cpu()
    valid = ((flat >= 0) & (flat < E)).nonzero().flatten()
    placed = sorted_ids[: int(total)]
    assert sorted(placed[placed < flat.numel()].tolist()) == valid.tolist()
    if with_map:  # 99, -5 and 2**32 + 1 count as -1; every block starts with a real row
        clean = emap.cpu().long()
        clean = torch.where((clean >= -1) & (clean < 3), clean, -1)
        assert [int(clean[flat[sorted_ids[b * 16]]]) for b in range(int(total) // 16)] == \
            expert_ids[: int(total) // 16].tolist()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_checked_out_of_range_values_raise(impl, dtype, gen, device):
    ids = random_ids(20, 8, 2, gen).to(device=device, dtype=dtype)
    for bad in (-1, 8, 2**32 + 3 if dtype == torch.int64 else 2**31 - 1):
        wrong = ids.clone()
        wrong[3, 1] = bad
        with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 8\)"):
            impl(wrong, 16, 8)
        impl(wrong, 16, 8, check_ids=False)  # unchecked: dropped, no error
    for value in (99, -5, 4):  # 4: the first id past num_local = 4
        emap = torch.tensor([0, 1, 2, 3, -1, -1, -1, value], dtype=dtype, device=device)
        with pytest.raises(ValueError, match=r"expert_map must map to -1 or a local expert id in \[0, 4\)"):
            impl(ids, 16, 8, emap, num_local=4)
    # a valid int64 map: the same layout as the int32 one
    emap = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1], device=device)
    for r, g in zip(impl(ids, 16, 8, emap.int(), num_local=4), impl(ids, 16, 8, emap, num_local=4), strict=True):
        assert torch.equal(r, g)


@pytest.mark.parametrize("impl", IMPLS)
def test_meta_and_mixed_devices_and_flags(impl):
    ids = torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="topk_ids is a meta tensor"):
        impl(ids.to("meta"), 16, 8)
    with pytest.raises(ValueError, match="expert_map is on meta"):
        impl(ids, 16, 8, torch.zeros(8, dtype=torch.int32, device="meta"))
    with pytest.raises(TypeError, match="check_ids must be a bool"):
        impl(ids, 16, 8, check_ids=1)
    with pytest.raises(ValueError, match="num_local"):
        impl(ids, 16, 8, num_local=0)

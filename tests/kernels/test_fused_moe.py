"""The kernels of moe_lib.kernels.fused_moe on their own: the sum over k, the sorted gather, the TMA check."""

import pytest
import torch
from problems import make_problem

from moe_lib.kernels.fused_moe import tma_usable
from moe_lib.testing import assert_close


@pytest.mark.parametrize("M,k,H", [(1, 2, 64), (33, 3, 200), (257, 4, 511), (5, 1, 96)])
def test_moe_sum(M, k, H, gen, device, poison):
    from moe_lib._alloc import empty
    from moe_lib.kernels.fused_moe import moe_sum

    partial = torch.randn(M, k, H, generator=gen).to(device)
    ids = torch.randint(0, 8, (M, k), generator=gen, dtype=torch.int32).to(device)
    out = moe_sum(partial, empty(M, H, dtype=torch.float32, device=device), ids, 8)
    assert_close(out, partial.double().sum(1), tol=1e-6)
    ids[0, 0] = 8  # an id outside [0, 8): that slot is dropped
    out = moe_sum(partial, empty(M, H, dtype=torch.float32, device=device), ids, 8)
    ref = partial.double().sum(1)
    ref[0] -= partial[0, 0].double()
    assert_close(out, ref, tol=1e-6)


@pytest.mark.parametrize("M,k,block_m", [(1, 2, 16), (33, 2, 16), (100, 4, 64)])
def test_gather_sorted_rows(M, k, block_m, gen, device, poison):
    from moe_lib.kernels.align import moe_align_block_size
    from moe_lib.kernels.fused_moe import gather_sorted_rows

    x, _, _, _, ids, _ = make_problem(M, 8, 72, 16, k, gen, device=device)
    sorted_ids, _, total = moe_align_block_size(ids, block_m, 8)
    rows = gather_sorted_rows(x, sorted_ids, total, k)
    n = total.item()
    assert rows.shape == (sorted_ids.shape[0], 72)
    valid = sorted_ids[:n] < M * k
    assert torch.equal(rows[:n][valid], x[sorted_ids[:n][valid].long() // k])
    assert (rows[:n][~valid] == 0).all()  # padding rows are zeros, never garbage


def test_tma_usable_needs_unit_last_stride_and_16_byte_alignment():
    x = torch.zeros(8, 64)
    assert tma_usable(x)
    assert not tma_usable(x.t())  # last stride 8
    assert not tma_usable(torch.zeros(8, 63))  # rows of 252 bytes
    assert not tma_usable(x.view(-1)[1:65].view(1, 64))  # base 4 bytes past an aligned start

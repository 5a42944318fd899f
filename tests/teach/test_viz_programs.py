"""moe_lib.teach.viz.programs: program_map returns a Figure with one coloured square per element (the same
colour for a program in every panel), keeps pyplot's global state untouched, draws the same picture for the
same inputs and rejects bad input by name; record_programs finds which program of a launch wrote what."""

from __future__ import annotations

import io

import pytest
import torch
import triton
import triton.language as tl
from matplotlib.figure import Figure

from moe_lib.teach import viz
from moe_lib.teach.viz import programs as vp
from moe_lib.teach.viz.style import UNUSED_STYLE, expert_colors

pytestmark = pytest.mark.usefixtures("no_pyplot_figures")


def _squares(fig: Figure, panel: int = 0) -> dict[str, int]:
    return {c.get_gid(): len(c.get_paths()) for c in fig.axes[panel].collections}


def _colour(fig: Figure, panel: int, gid: str) -> tuple:
    (collection,) = [c for c in fig.axes[panel].collections if c.get_gid() == gid]
    return tuple(round(float(v), 6) for v in collection.get_facecolor()[0])


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# program_map
# ----------------------------------------------------------------------------------------------------
def test_a_1d_map_has_one_square_per_element_coloured_by_program():
    owner = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1])  # 3 programs of 4, the last one masked
    fig = viz.program_map(owner, grid=3, title="who wrote what")
    assert isinstance(fig, Figure)
    assert _squares(fig) == {"program-0": 4, "program-1": 4, "program-2": 2, "untouched": 2}
    colours = [tuple(round(float(v), 6) for v in c) for c in expert_colors(3)]
    assert [_colour(fig, 0, f"program-{p}") for p in range(3)] == colours
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["program 0", "program 1", "program 2", "no program"]
    assert fig._suptitle.get_text() == "who wrote what"
    assert [t.get_text() for t in fig.axes[0].texts] == ["0"] * 4 + ["1"] * 4 + ["2"] * 2


def test_a_program_keeps_its_colour_in_every_panel():
    written = torch.arange(6).repeat_interleave(2).view(3, 4)  # (3, 4): program p wrote two elements
    read = written.t().contiguous()  # a transposed read
    fig = viz.program_map({"x (read)": read, "out (written)": written}, grid=(3, 2))
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["x (read)", "out (written)"]
    for p in range(6):
        assert _colour(fig, 0, f"program-{p}") == _colour(fig, 1, f"program-{p}")
        assert _squares(fig, 0)[f"program-{p}"] == _squares(fig, 1)[f"program-{p}"] == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["program (0, 0)", "program (0, 1)"] and "no program" not in labels
    assert fig.axes[1].texts[0].get_text() == "0,0"


def test_untouched_squares_are_drawn_unused_and_colours_follow_num_programs():
    owner = torch.tensor([[3, -1], [-1, 3]])
    fig = viz.program_map(owner, num_programs=8)
    assert _squares(fig) == {"program-3": 2, "untouched": 2}
    assert _colour(fig, 0, "program-3") == tuple(round(float(v), 6) for v in expert_colors(8)[3])
    (untouched,) = [c for c in fig.axes[0].collections if c.get_gid() == "untouched"]
    assert tuple(untouched.get_facecolor()[0]) == (1.0, 1.0, 1.0, 1.0) and UNUSED_STYLE["facecolor"] == "white"


def test_long_strips_wrap_and_big_maps_drop_the_labels():
    fig = viz.program_map(torch.arange(100) // 10, per_row=25)
    assert fig.axes[0].get_ylim()[0] > 4  # four strips of 25
    assert len(fig.axes[0].texts) == 100
    big = viz.program_map(torch.arange(40 * 40).view(40, 40) // 50)  # 32 programs: no legend, no labels
    assert len(big.axes[0].texts) == 0 and not big.legends


def test_same_inputs_draw_the_same_picture():
    owner = torch.arange(24).view(4, 6) // 3
    assert _png(viz.program_map(owner, grid=(2, 4))) == _png(viz.program_map(owner.clone(), grid=(2, 4)))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: viz.program_map([0, 1]), TypeError, "panels"),
    (lambda: viz.program_map({}), ValueError, "panels"),
    (lambda: viz.program_map({"x": torch.zeros(2)}), TypeError, r"panels\['x'\]"),
    (lambda: viz.program_map({"x": torch.zeros(2, 2, 2, dtype=torch.int64)}), ValueError, r"panels\['x'\].*1-D or 2-D"),
    (lambda: viz.program_map(torch.zeros(0, dtype=torch.int64)), ValueError, "empty"),
    (lambda: viz.program_map(torch.tensor([-2, 0])), ValueError, "-1 for untouched"),
    (lambda: viz.program_map({3: torch.tensor([0])}), TypeError, "panels key"),
    (lambda: viz.program_map(torch.tensor([0, 5]), grid=3), ValueError, "program id 5"),
    (lambda: viz.program_map(torch.tensor([0]), grid=(2, 2), num_programs=3), ValueError, "num_programs=3"),
    (lambda: viz.program_map(torch.tensor([0]), grid=(1, 1, 1)), TypeError, "grid"),
    (lambda: viz.program_map(torch.tensor([0]), grid=(0,)), ValueError, r"grid\[0\]"),
    (lambda: viz.program_map(torch.tensor([0]), per_row=0), ValueError, "per_row"),
    (lambda: viz.program_map(torch.tensor([0]), title=1), TypeError, "title"),
])
def test_bad_arguments_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------------------------------
# record_programs
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _scale_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, 2 * tl.load(x_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _tile_kernel(out_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], rows[:, None] * 100 + cols[None, :], mask=mask)


@pytest.mark.parametrize("n,block", [(10, 4), (8, 8), (1, 4)])
def test_record_programs_1d(n, block, device):
    x = torch.randn(n, device=device)
    buf = torch.zeros(n + 3, device=device)  # three elements past the end that no program may write
    grid = triton.cdiv(n, block)
    owner = vp.record_programs(lambda g: _scale_kernel[g](x, buf, n, BLOCK=block), buf, grid)
    expected = torch.cat([torch.arange(n) // block, torch.full((3,), -1)])
    assert torch.equal(owner, expected)
    assert torch.equal(buf[:n], 2 * x) and torch.isnan(buf[n:]).all()  # left as the full launch wrote it


def test_record_programs_2d_uses_row_major_flat_ids(device):
    out = torch.zeros(5, 7, dtype=torch.int32, device=device)
    grid = (triton.cdiv(5, 2), triton.cdiv(7, 4))  # (3, 2)
    owner = vp.record_programs(lambda g: _tile_kernel[g](out, 5, 7, BR=2, BC=4), out, grid)
    rows, cols = torch.arange(5)[:, None], torch.arange(7)[None, :]
    assert torch.equal(owner, (rows // 2) * grid[1] + cols // 4)
    assert torch.equal(out.cpu(), (rows * 100 + cols).int())


def test_record_programs_names_bad_arguments():
    out = torch.zeros(4)
    with pytest.raises(TypeError, match="launch"):
        vp.record_programs(3, out, 1)
    with pytest.raises(TypeError, match="out"):
        vp.record_programs(lambda g: None, [0.0], 1)
    with pytest.raises(ValueError, match="out must not be empty"):
        vp.record_programs(lambda g: None, torch.zeros(0), 1)
    with pytest.raises(TypeError, match="grid"):
        vp.record_programs(lambda g: None, out, "3")


# ----------------------------------------------------------------------------------------------------
# record_reads
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _block_sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, OFF_BY_ONE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs <= n if OFF_BY_ONE else offs < n
    tl.store(out_ptr + tl.program_id(0), tl.sum(tl.load(x_ptr + offs, mask=mask, other=0.0)))


@pytest.mark.parametrize("bug", [False, True])
def test_record_reads_sees_each_program_read_its_block_and_a_read_past_the_end(bug, device):
    n, block = 10, 4
    buf = torch.arange(1.0, n + 3, device=device)  # (n + 2,): x and two elements past its end
    out = torch.zeros(3, device=device)
    readers = vp.record_reads(lambda g: _block_sum_kernel[g](buf, out, n, BLOCK=block, OFF_BY_ONE=bug), buf, out, 3)
    expected = torch.cat([torch.arange(n) // block, torch.tensor([2 if bug else -1, -1])])
    assert torch.equal(readers, expected)
    assert torch.equal(buf.cpu(), torch.arange(1.0, n + 3))  # restored
    assert out[2].item() == (9 + 10 + (11 if bug else 0))  # left as the full launch wrote it


def test_record_reads_names_bad_arguments():
    with pytest.raises(TypeError, match="inp"):
        vp.record_reads(lambda g: None, torch.zeros(2, dtype=torch.int32), torch.zeros(2), 1)
    with pytest.raises(ValueError, match="inp must not be empty"):
        vp.record_reads(lambda g: None, torch.zeros(0), torch.zeros(2), 1)
    with pytest.raises(TypeError, match="out"):
        vp.record_reads(lambda g: None, torch.zeros(2), torch.zeros(2, dtype=torch.int64), 1)


@triton.jit
def _block_max_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + tl.program_id(0), tl.max(tl.load(x_ptr + offs, mask=offs < n, other=float("-inf")), axis=0))


def test_record_reads_through_a_max_needs_an_inf_poison(device):
    x, out = -torch.arange(1.0, 11.0, device=device), torch.zeros(3, device=device)
    launch = lambda g: _block_max_kernel[g](x, out, 10, BLOCK=4)  # noqa: E731
    assert torch.equal(vp.record_reads(launch, x, out, 3, poison=float("inf")), torch.arange(10) // 4)
    with pytest.raises(TypeError, match="poison"):
        vp.record_reads(launch, x, out, 3, poison="nan")

"""moe_lib.kernels.quant: e4m3 rounding, weight scales in vLLM's three layouts, the w1/w3 scale merge, and the
activation-quantization kernels, which give the bits of the torch specification (also in the interpreter,
whose own fp32 -> fp8 cast is wrong)."""

import pytest
import torch

from moe_lib.kernels.quant import (
    FP8_DTYPE,
    FP8_MAX,
    dequantize_weight,
    merge_w13_scales,
    quantize_activation,
    quantize_activation_torch,
    quantize_weight,
    to_e4m3,
)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def test_the_e4m3_grid_is_hit_exactly_with_ties_to_even_and_saturation(device):
    # Every value on a fine grid across the whole range, and the subnormals: the kernel's rounding is torch's.
    for lo, hi in ((-460.0, 460.0), (-0.02, 0.02)):
        x = torch.linspace(lo, hi, 50001, device=device).reshape(1, -1)
        q, _ = quantize_activation(x, scale=torch.ones(1, device=device))
        assert torch.equal(bits(q), bits(to_e4m3(x)))
    assert to_e4m3(torch.tensor([1000.0, -1e9])).float().tolist() == [FP8_MAX, -FP8_MAX]
    assert to_e4m3(torch.tensor([17.0, 19.0])).float().tolist() == [16.0, 20.0]  # ties to even (step 2)


@pytest.mark.parametrize("shape", [(1, 64), (33, 200), (5, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("how", [{}, {"per_token": True}, {"group": 64}, {"group": 128}, {"scale": 0.05}])
def test_activation_kernels_give_the_bits_of_the_specification(shape, dtype, how, gen, device):
    x = (torch.randn(*shape, generator=gen) * 7).to(device=device, dtype=dtype)
    x[0, :3] = torch.tensor([0.0, -0.0, 1e-6], dtype=dtype)
    kw = {k: (torch.tensor([v], device=device) if k == "scale" else v) for k, v in how.items()}
    q, s = quantize_activation(x, **kw)
    q_ref, s_ref = quantize_activation_torch(x, **kw)
    assert q.dtype == FP8_DTYPE and q.shape == x.shape
    assert torch.equal(bits(q), bits(q_ref)) and torch.equal(s.reshape(s_ref.shape), s_ref)
    # dequantized, each value is within half a step (1/16 relative) of the original, or saturated
    groups = kw.get("group")
    scale = s_ref.repeat_interleave(groups, 1)[:, : shape[1]] if groups else s_ref
    err = (q.float() * scale - x.float()).abs()
    inside = x.float().abs() <= FP8_MAX * scale  # the rest saturates (a static scale can be too small)
    assert (err <= x.float().abs() / 16 + scale * 2**-9 + 1e-12)[inside].all()


@pytest.mark.parametrize("one_program", [True, False])
def test_dynamic_per_tensor_scale_in_one_launch_or_two(one_program, gen, device, monkeypatch):
    # One program holding the whole tensor computes the scale itself; otherwise absmax_kernel's per-program
    # maxima are reduced by every quantizing program. Both give the specification's bits.
    from moe_lib.kernels import quant

    monkeypatch.setattr(quant, "ONE_PROGRAM_VALUES", 1 << 30 if one_program else 1)
    x = torch.randn(300, 300, generator=gen).to(device) * 3  # several programs (128 rows each in the interpreter)
    x[200, 7] = -50.0  # the largest |x| sits in one program only
    q, s = quantize_activation(x)
    q_ref, s_ref = quantize_activation_torch(x)
    assert torch.equal(bits(q), bits(q_ref)) and torch.equal(s, s_ref)


def test_no_rows_of_a_wide_tensor_get_the_smallest_scale(device, monkeypatch):
    # M = 0 where the maxima would otherwise be split over (zero) row blocks: no kernel, the smallest scale.
    from moe_lib.kernels import quant

    monkeypatch.setattr(quant, "ONE_PROGRAM_VALUES", 1)
    q, s = quantize_activation(torch.empty(0, 300, device=device))
    assert q.shape == (0, 300) and q.dtype == quant.FP8_DTYPE and s.item() == torch.tensor(quant.MIN_SCALE).item()


@pytest.mark.parametrize("partials", [1024, 2, 1])
def test_absmax_splits_wide_rows_over_programs(partials, gen, device, monkeypatch):
    # A few wide rows (act at small M) have their columns split over programs; with fewer maxima allowed
    # than column tiles, a program loops over every splits-th tile. Same bits whichever way it is cut.
    from moe_lib.kernels import quant

    monkeypatch.setattr(quant, "ONE_PROGRAM_VALUES", 1)
    monkeypatch.setattr(quant, "ABSMAX_PARTIALS", partials)
    x = torch.randn(3, 9000, generator=gen).to(device)  # 3 column tiles in the interpreter, 9 on a GPU
    x[1, 8999] = 40.0  # the largest |x| sits in the last, partial tile
    q, s = quantize_activation(x)
    q_ref, s_ref = quantize_activation_torch(x)
    assert torch.equal(bits(q), bits(q_ref)) and torch.equal(s, s_ref)


def test_zero_and_empty_inputs(device):
    q, s = quantize_activation(torch.zeros(3, 40, device=device))
    assert (q.float() == 0).all() and s.item() > 0  # a finite positive scale
    q, s = quantize_activation(torch.zeros(0, 40, device=device), group=32)
    assert q.shape == (0, 40) and s.shape == (0, 2)


@pytest.mark.parametrize("mode,block", [("tensor", None), ("channel", None), ("block", [32, 64]), ("block", [64, 16])])
def test_weight_quantization_round_trip(mode, block, gen):
    w = torch.randn(3, 96, 200, generator=gen)
    q, s = quantize_weight(w, mode, block)
    expected = {"tensor": (3,), "channel": (3, 96, 1), "block": (3, -(-96 // (block or [1])[0]),
                                                                 -(-200 // (block or [1, 1])[1]))}[mode]
    assert q.dtype == FP8_DTYPE and tuple(s.shape) == expected and (s > 0).all()
    err = (dequantize_weight(q, s, block) - w).norm() / w.norm()
    assert 0 < err < 0.04  # e4m3 keeps 3 mantissa bits: ~2.7 % rms
    assert q.float().abs().max() == FP8_MAX  # each scale is set by its block's largest value


def test_merged_w13_scale_is_the_larger_and_keeps_both_halves():
    gen = torch.Generator().manual_seed(3)
    w1, w3 = torch.randn(4, 48, 64, generator=gen), 5 * torch.randn(4, 48, 64, generator=gen)
    (q1, s1), (q3, s3) = quantize_weight(w1), quantize_weight(w3)
    w13, s13 = merge_w13_scales(q1, s1, q3, s3)
    assert w13.shape == (4, 96, 64) and torch.equal(s13, torch.maximum(s1, s3))
    before = torch.cat([dequantize_weight(q1, s1), dequantize_weight(q3, s3)], dim=1)
    after = dequantize_weight(w13, s13)
    assert torch.equal(after[:, 48:], before[:, 48:])  # w3 had the larger scale: unchanged
    assert (after[:, :48] - before[:, :48]).norm() / before[:, :48].norm() < 0.05  # w1 requantized


@pytest.mark.parametrize("call,exc,match", [
    (lambda: quantize_weight(torch.randn(4, 4)), ValueError, "w must be"),
    (lambda: quantize_weight(torch.randn(2, 4, 4), "row"), ValueError, "mode"),
    (lambda: quantize_weight(torch.randn(2, 4, 4), "block", [128, 100]), ValueError, "block_shape"),
    (lambda: quantize_weight(torch.randn(2, 4, 4), "block", [0, 128]), ValueError, "block_shape"),
    (lambda: quantize_weight(torch.randn(2, 4, 4), "block", None), ValueError, "block_shape"),
])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

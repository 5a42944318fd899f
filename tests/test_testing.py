import math

import pytest
import torch

from moe_lib.testing import assert_close, rel_err, tolerance, verdict


def test_rel_err_basics(gen):
    ref = torch.randn(17, 5, generator=gen, dtype=torch.float64)
    assert rel_err(ref, ref) == 0.0
    assert rel_err(ref * (1 + 1e-3), ref) == pytest.approx(1e-3, rel=1e-6)
    assert rel_err(torch.empty(0, 3), torch.empty(0, 3)) == 0.0


def test_nan_and_unwritten_never_pass(gen):
    ref = torch.randn(8, 8, generator=gen)
    poisoned = ref.clone()
    poisoned[3, 4] = float("nan")
    assert math.isnan(rel_err(poisoned, ref))
    with pytest.raises(AssertionError):
        assert_close(poisoned, ref)
    assert verdict("x", poisoned, ref).startswith("FAIL")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        rel_err(torch.ones(2, 3), torch.ones(3, 2))


def test_tolerance_by_loosest_dtype():
    assert tolerance(torch.float32) < tolerance(torch.float16) < tolerance(torch.bfloat16)
    assert tolerance(torch.float32, torch.bfloat16) == tolerance(torch.bfloat16)
    with pytest.raises(TypeError):
        tolerance(torch.int32)


def test_verdict_is_one_deterministic_line(gen):
    ref = torch.randn(100, generator=gen, dtype=torch.float64)
    out = (ref * (1 + 3e-7)).float()
    line = verdict("demo", out, ref)
    assert line == "PASS  demo: rel err < 1e-06 (tol 1e-05)"
    assert "\n" not in line
    assert verdict("demo", ref * 1.1, ref, tol=1e-3).startswith("FAIL  demo: rel err 1.00e-01")

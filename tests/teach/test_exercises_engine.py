"""moe_lib.teach.exercises._engine and the package: the verdict texts, what a learner's function cannot do to the
checker (raise, write into its input), the comparisons, and one module per notebook re-exported by the package."""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from moe_lib.teach import exercises
from moe_lib.teach.exercises._engine import (
    FAILED,
    PASSED,
    UNSOLVED,
    Case,
    CheckResult,
    Mistake,
    check,
    compare_close,
    compare_exact,
    compare_int_tuple,
    compare_ints,
    compare_number,
    fmt,
)

MODULES = [m.name for m in pkgutil.iter_modules(exercises.__path__) if not m.name.startswith("_")]


# ----------------------------------------------------------------------------------------------------
# The package: one module per notebook, every checker importable from the package
# ----------------------------------------------------------------------------------------------------
def test_the_package_re_exports_every_checker_of_every_module():
    exported = set(exercises.__all__) - {"CheckResult"}
    by_module = {}
    for name in MODULES:
        module = importlib.import_module(f"{exercises.__name__}.{name}")
        assert module.__all__, f"{name} exports no checker"
        for checker in module.__all__:
            assert getattr(exercises, checker) is getattr(module, checker)
            by_module[checker] = name
    assert exported == set(by_module)
    assert exercises.CheckResult is CheckResult


@pytest.mark.parametrize("name", MODULES)
def test_every_module_is_listed_and_tested(name):
    module = importlib.import_module(f"{exercises.__name__}.{name}")
    line = next(line for line in exercises.__doc__.splitlines() if line.split()[:1] == [name])
    assert all(checker in line for checker in module.__all__), line
    assert (Path(__file__).parent / f"test_exercises_{name}.py").is_file()


# ----------------------------------------------------------------------------------------------------
# The engine, on a small checker of its own: double(x) = 2 x
# ----------------------------------------------------------------------------------------------------
CASES = [Case("one value", (torch.tensor([1.0]),)), Case("two values", (torch.tensor([1.0, -2.0]),)),
         Case("a matrix", (torch.arange(6.0).view(2, 3),))]


def _check_double(fn) -> CheckResult:
    return check("double", fn, arg_names=("x",), cases=CASES, reference=lambda x: 2 * x, compare=compare_close,
                 mistakes=[Mistake(lambda x: x * x, "squared instead of doubled")], hint="multiply by 2",
                 summary="three shapes")


def double(x):
    return x + x


def test_a_pass_reads_pass_and_is_truthy():
    result = _check_double(double)
    assert result.status == PASSED and result.passed and bool(result) and result.cases_run == 3
    assert result.message == "PASS  double: 3 cases agree (three shapes)"
    assert repr(result) == str(result) == result.message


def test_a_failure_shows_the_case_input_expected_got_and_the_mistake():
    result = _check_double(lambda x: x * x)
    assert result.status == FAILED and not result and result.cases_run == 1
    assert result.message.splitlines() == [
        "FAIL  double, case 1 of 3 (one value): values differ: relative error 5.00e-01 (tolerance 1e-05)",
        "  input x = tensor of shape (1,), float32: [1.0]",
        "  expected: tensor of shape (1,), float32: [2.0]",
        "  got     : tensor of shape (1,), float32: [1.0]",
        "  likely mistake: squared instead of doubled",
    ]


def test_an_unknown_mistake_gets_the_hint():
    result = _check_double(lambda x: 3 * x)
    assert result.message.endswith("  likely mistake: multiply by 2")


def test_an_exception_is_reported_not_raised():
    def crashes(x):
        raise ValueError("boom")

    result = _check_double(crashes)
    assert result.status == FAILED
    assert result.message.splitlines()[1:] == ["  crashes() raised ValueError: boom",
                                               "  input x = tensor of shape (1,), float32: [1.0]",
                                               "  hint: multiply by 2"]


def test_a_stub_is_unsolved_wherever_it_gives_up():
    calls = []

    def half_done(x):
        calls.append(1)
        if len(calls) > 1:
            raise NotImplementedError
        return double(x)

    # NotImplementedError is "not solved yet" wherever it is raised: the learner is still writing.
    result = _check_double(half_done)
    assert result.status == UNSOLVED and not result
    assert result.message == ("not solved yet: double — write the body of half_done() (replace "
                              "`raise NotImplementedError`), then run this cell again")
    assert "write the body of your function" in _check_double(lambda x: None).message


def test_none_after_the_first_case_is_a_failure():
    calls = []

    def forgets_to_return(x):
        calls.append(1)
        return double(x) if len(calls) == 1 else None

    result = _check_double(forgets_to_return)
    assert result.status == FAILED and "  forgets_to_return() returned None" in result.message


def test_the_learner_cannot_spoil_the_cases():
    """A solution that writes into its input still sees fresh inputs on the next call, and so does the
    reference."""

    def in_place(x):
        return x.mul_(2)

    assert _check_double(in_place).passed
    assert _check_double(in_place).passed
    assert torch.equal(CASES[1].args[0], torch.tensor([1.0, -2.0]))


def test_not_callable_raises_type_error():
    with pytest.raises(TypeError, match="fn must be the function you wrote for 'double', got int"):
        _check_double(42)


# ----------------------------------------------------------------------------------------------------
# Comparisons and formatting
# ----------------------------------------------------------------------------------------------------
def test_comparisons():
    ints = torch.tensor([1, 2, 3])
    assert compare_ints(ints.int(), ints) is None  # any integer dtype
    assert compare_ints(ints.float(), ints).startswith("dtype torch.float32 instead of an integer dtype")
    assert compare_ints(torch.tensor([1, 2, 4]), ints) == "1 of 3 entries differ"
    assert compare_ints([1, 2, 3], ints) == "expected a torch.Tensor, got list"
    assert compare_exact(ints.int(), ints) == "dtype torch.int32 instead of torch.int64"
    assert compare_exact(ints[:2], ints) == "shape (2,) instead of (3,)"
    assert compare_close(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) == "the result contains NaN"
    assert compare_close(ints, ints.float()).startswith("dtype torch.int64 instead of a floating-point")
    assert compare_number(torch.tensor(4.0), 4, integer=True) is None
    assert compare_number(4.5, 4, integer=True) == "expected a whole number, got 4.5"
    assert compare_number(True, 1) == "expected a number, got bool"
    assert compare_int_tuple((1, 3), (1, 2)) == "second value: 3 instead of 2"
    assert compare_int_tuple(1, (1, 2)) == "expected a tuple of 2 ints, got 1"


def test_fmt_is_short_and_deterministic():
    assert fmt(torch.arange(30)) == ("tensor of shape (30,), int64, flattened: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "
                                     "11, ... (18 more)]")
    assert fmt(torch.empty(0, 3)) == "tensor of shape (0, 3), float32, empty"
    assert fmt(torch.empty(2, device="meta")) == "tensor of shape (2,), float32 (meta)"
    assert fmt((1, 2.0 / 3)) == "(1, 0.666667)"


# ----------------------------------------------------------------------------------------------------
# What a learner's function cannot do to a grading run: hang it, end it, or crash the checker
# ----------------------------------------------------------------------------------------------------
def _check_double_fast(fn) -> CheckResult:
    return check("double", fn, arg_names=("x",), cases=CASES, reference=lambda x: 2 * x, compare=compare_close,
                 mistakes=[], hint="multiply by 2", summary="three shapes", time_limit_s=0.3)


def test_a_case_past_its_time_limit_fails_instead_of_hanging():
    def spins(x):
        while True:
            pass

    def sleeps(x):
        import time

        time.sleep(60)

    def swallows(x):  # catches the first interruption and keeps looping: interrupted again
        try:
            while True:
                pass
        except BaseException:
            while True:
                pass

    for fn in (spins, sleeps, swallows):
        start = time.monotonic()
        result = _check_double_fast(fn)
        assert time.monotonic() - start < 5
        assert result.status == FAILED and result.cases_run == 1
        assert f"  {fn.__name__}() did not return within 0.3 s (an endless loop, or far too slow)" in result.message
    before = signal.getsignal(signal.SIGALRM)
    assert _check_double_fast(double).passed  # the limit is per case, and a fast function passes
    assert signal.getsignal(signal.SIGALRM) is before  # the handler put back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left behind


def test_an_outer_timer_is_put_back():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        assert _check_double_fast(double).passed
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3.0 < remaining <= 5.0 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("code", [0, 1, None, "bye"])
def test_sys_exit_is_a_failed_verdict_not_the_end_of_the_run(code):
    def leaves(x):
        sys.exit(code)

    result = _check_double(leaves)
    assert result.status == FAILED and not result
    assert f"  leaves() called sys.exit({code!r}): a checked function must return its answer" in result.message


def test_meta_tensors_and_unprintable_results_fail_clearly():
    result = _check_double(lambda x: torch.empty_like(x, device="meta"))
    assert result.status == FAILED
    assert "returned a meta tensor (a shape without values)" in result.message
    assert _check_double(lambda x: (2 * x, torch.empty(1, device="meta"))).status == FAILED

    class Weird:
        def __repr__(self):
            raise RuntimeError("no repr")

    result = _check_double(lambda x: Weird())
    assert result.status == FAILED
    assert "got     : <a Weird whose repr() raised RuntimeError>" in result.message

    class Spiteful(Exception):
        def __str__(self):
            raise ValueError("no str either")

    def raises_spite(x):
        raise Spiteful

    assert "raises_spite() raised Spiteful: <a Spiteful whose str() raised ValueError>" in \
        _check_double(raises_spite).message


def test_a_result_the_comparison_chokes_on_is_a_failed_verdict():
    def chokes(got, expected):
        raise RuntimeError("cannot compare")

    result = check("double", double, arg_names=("x",), cases=CASES[:1], reference=lambda x: 2 * x, compare=chokes,
                   mistakes=[], hint="h", summary="s")
    assert result.status == FAILED
    assert "the result could not be compared with the expected one (RuntimeError: cannot compare)" in result.message


def test_a_keyboard_interrupt_still_stops_the_check():
    def interrupted(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _check_double(interrupted)

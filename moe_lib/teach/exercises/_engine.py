"""The machinery every checker shares: run the learner's function on a list of cases, compare each answer with
the reference, and on the first disagreement say what differs and which typical mistake gives the same answer.

A checker module only writes its cases (:class:`Case`), its typical wrong solutions (:class:`Mistake`) and
its reference, and hands them to :func:`check`. Nothing here raises because of the learner's code, and
nothing the learner's code does ends the check any other way than with a verdict: an exception, a call of
``sys.exit``, a case that runs past its time limit (``time_limit_s``, :data:`TIME_LIMIT_S` by default), a
result with no values (a meta tensor) or one whose ``repr`` raises — each is a failed verdict that says so.
Only the learner's own interrupt (the notebook's stop button: KeyboardInterrupt) goes through.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...testing import rel_err

PASSED, FAILED, UNSOLVED = "passed", "failed", "unsolved"
#: Seconds one case of the learner's function may run (its reference and comparison are not counted).
TIME_LIMIT_S = 30.0


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one checker. ``bool(result)`` is True only for a pass; it displays as ``message``."""

    exercise: str
    status: str  # "passed", "failed" or "unsolved"
    message: str
    cases_run: int = 0

    def __bool__(self) -> bool:
        return self.status == PASSED

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(self.message)


@dataclass
class Case:
    """One call of the learner's function."""

    label: str  # what is special about this case, shown on failure
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class Mistake:
    """A typical wrong solution: when the learner's answer equals its answer, ``why`` is the likely mistake."""

    fn: Callable
    why: str  # what it does wrong, and what to do instead


# ----------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------
def fmt(value, limit: int = 12) -> str:
    """A short, deterministic rendering of a value (tensors: shape, dtype and the first values)."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        head = f"tensor of shape {tuple(value.shape)}, {dtype}"
        if value.numel() == 0:
            return head + ", empty"
        if value.device.type == "meta":
            return head + " (meta)"
        flat = value.detach().cpu().flatten()
        shown = flat[:limit].tolist()
        if value.dtype.is_floating_point:
            text = ", ".join("nan" if math.isnan(v) else f"{v:.4g}" for v in shown)
        else:
            text = ", ".join(str(v) for v in shown)
        if value.numel() <= 2 * limit:
            rows = value.detach().cpu().tolist()
            if value.dtype.is_floating_point:
                rows = _round_nested(rows)
            return f"{head}: {rows}"
        more = f", ... ({value.numel() - limit} more)" if value.numel() > limit else ""
        return f"{head}, flattened: [{text}{more}]"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt(v, limit) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _safe_text(repr, value)


def _safe_text(to_text: Callable, value) -> str:
    """``repr(value)`` / ``str(value)``, or a description when the object's own method raises."""
    try:
        return to_text(value)
    except Exception as exc:  # a learner's object: its __repr__ / __str__ may do anything
        return f"<a {type(value).__name__} whose {to_text.__name__}() raised {type(exc).__name__}>"


def _round_nested(values):
    if isinstance(values, list):
        return [_round_nested(v) for v in values]
    return values if math.isnan(values) else float(f"{values:.4g}")


def _clone(value):
    """A fresh copy of an argument, so a function that writes into its input cannot spoil the next call."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _call(fn: Callable, case: Case):
    return fn(*_clone(case.args), **_clone(case.kwargs))


# ----------------------------------------------------------------------------------------------------
# Comparisons: return None when equal enough, else what differs (one line)
# ----------------------------------------------------------------------------------------------------
def _not_a_tensor(got) -> str | None:
    return None if isinstance(got, torch.Tensor) else f"expected a torch.Tensor, got {type(got).__name__}"


def _wrong_shape(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    return None


def _entries_differ(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    if torch.equal(got, expected):
        return None
    return f"{(got != expected).sum().item()} of {expected.numel()} entries differ"


def compare_close(got, expected: torch.Tensor, tol: float = 1e-5) -> str | None:
    """A floating-point tensor of the same shape within relative error ``tol``."""
    diff = _not_a_tensor(got) or _wrong_shape(got, expected)
    if diff is not None:
        return diff
    if not got.dtype.is_floating_point:
        return f"dtype {got.dtype} instead of a floating-point tensor"
    if got.numel() == 0:
        return None
    got64 = got.detach().to("cpu", torch.float64)
    exp64 = expected.detach().to("cpu", torch.float64)
    if torch.isnan(got64).any() and not torch.isnan(exp64).any():
        return "the result contains NaN"
    err = rel_err(got64.nan_to_num(), exp64.nan_to_num())
    if not err <= tol:
        return f"values differ: relative error {err:.2e} (tolerance {tol:.0e})"
    return None


def compare_exact(got, expected: torch.Tensor) -> str | None:
    """Same shape, dtype and bit-identical values (slices of a weight are copied, never computed)."""
    diff = _not_a_tensor(got) or _wrong_shape(got, expected)
    if diff is not None:
        return diff
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype} instead of {expected.dtype}"
    return _entries_differ(got.detach().cpu(), expected.cpu())


def compare_ints(got, expected: torch.Tensor) -> str | None:
    """An integer tensor (any integer dtype) of the same shape and values."""
    diff = _not_a_tensor(got)
    if diff is not None:
        return diff
    if got.dtype.is_floating_point or got.dtype == torch.bool:
        return f"dtype {got.dtype} instead of an integer dtype (int32 or int64)"
    return _wrong_shape(got, expected) or _entries_differ(got.detach().cpu().long(), expected.cpu().long())


def compare_number(got, expected, *, integer: bool = False, tol: float = 1e-6) -> str | None:
    """A Python number (or a one-element tensor): equal for ``integer``, else within relative ``tol``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {type(got).__name__}"
    if integer:
        if isinstance(got, float) and not got.is_integer():
            return f"expected a whole number, got {got}"
        return None if int(got) == expected else f"{int(got)} instead of {expected}"
    if math.isnan(got) or abs(got - expected) > tol * max(1.0, abs(expected)):
        return f"{got:.6g} instead of {expected:.6g}"
    return None


def compare_int_tuple(got, expected: tuple) -> str | None:
    """A tuple (or list) of as many whole numbers, each equal."""
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"expected a tuple of {len(expected)} ints, got {fmt(got)}"
    for name, g, e in zip(("first", "second", "third")[: len(expected)], got, expected, strict=True):
        diff = compare_number(g, e, integer=True)
        if diff is not None:
            return f"{name} value: {diff}"
    return None


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------
def check(
    exercise: str,
    fn,
    *,
    arg_names: Sequence[str],
    cases: Sequence[Case],
    reference: Callable,
    compare: Callable,
    mistakes: Sequence[Mistake],
    hint: str,
    summary: str,
    time_limit_s: float = TIME_LIMIT_S,
) -> CheckResult:
    """Run ``fn`` on every case against ``reference``; the verdict on the first case that differs, else a pass.
    Each call of ``fn`` may take ``time_limit_s`` seconds (enforced in the main thread, where notebooks run)."""
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for '{exercise}', got {type(fn).__name__}")
    try:
        name = getattr(fn, "__name__", "")
    except Exception:
        name = ""
    name = f"{name}()" if isinstance(name, str) and name.isidentifier() else "your function"
    for i, case in enumerate(cases, start=1):
        where = f"FAIL  {exercise}, case {i} of {len(cases)} ({case.label})"
        failed = _Failed(exercise, where, i)
        try:
            with _time_limit(time_limit_s):
                got = _call(fn, case)
        except NotImplementedError:
            return _unsolved(exercise, name)
        except _TimeLimit:
            return failed(f"  {name} did not return within {time_limit_s:g} s (an endless loop, or far too slow)",
                          *_describe_inputs(arg_names, case), f"  hint: {hint}")
        except SystemExit as exc:
            return failed(f"  {name} called sys.exit({_safe_text(repr, exc.code)}): a checked function must "
                          "return its answer, not end Python", *_describe_inputs(arg_names, case))
        except Exception as exc:  # the learner's code failed: report it, do not raise
            return failed(f"  {name} raised {type(exc).__name__}: {_safe_text(str, exc)}",
                          *_describe_inputs(arg_names, case), f"  hint: {hint}")
        if got is None:
            if i == 1:
                return _unsolved(exercise, name)
            return failed(f"  {name} returned None", *_describe_inputs(arg_names, case), f"  hint: {hint}")
        if _has_meta(got):
            return failed(f"  {name} returned a meta tensor (a shape without values): compute real values",
                          *_describe_inputs(arg_names, case))
        expected = _call(reference, case)
        try:
            diff = compare(got, expected)
        except Exception as exc:  # a result the comparison cannot handle is a wrong result, not a crash
            return failed(f"  the result could not be compared with the expected one ({type(exc).__name__}: "
                          f"{_safe_text(str, exc)})", *_describe_inputs(arg_names, case),
                          f"  expected: {fmt(expected)}", f"  got     : {_safe_fmt(got)}")
        if diff is None:
            continue
        return failed(*_describe_inputs(arg_names, case),
                      f"  expected: {fmt(expected)}",
                      f"  got     : {_safe_fmt(got)}",
                      f"  likely mistake: {_diagnose(got, case, mistakes, compare) or hint}", diff=f" {diff}")
    return CheckResult(exercise, PASSED, f"PASS  {exercise}: {len(cases)} cases agree ({summary})", len(cases))


@dataclass(frozen=True)
class _Failed:
    """Makes the failed verdict of one case: its first line, then ``lines``."""

    exercise: str
    where: str
    case: int

    def __call__(self, *lines: str, diff: str = "") -> CheckResult:
        return CheckResult(self.exercise, FAILED, "\n".join([f"{self.where}:{diff}", *lines]), self.case)


class _TimeLimit(BaseException):
    """A case ran out of time (a BaseException, so that the learner's ``except Exception`` does not eat it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise :class:`_TimeLimit` in this block after ``seconds`` (and again every 0.5 s if the learner's code
    swallows it). SIGALRM: only in the main thread of a platform that has it; elsewhere no limit. A timer that
    was already running (pytest-timeout's, say) is put back afterwards with the time it had left."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    active = [True]

    def on_alarm(signum, frame):
        if active[0]:
            raise _TimeLimit

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    try:
        yield
    finally:
        while True:  # an alarm may still land here: switch off until it cannot
            try:
                active[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                break
            except _TimeLimit:
                continue
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


def _has_meta(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.device.type == "meta"
    if isinstance(value, (tuple, list)):
        return any(_has_meta(v) for v in value)
    return False


def _safe_fmt(value) -> str:
    try:
        return fmt(value)
    except Exception as exc:
        return f"<a {type(value).__name__} that cannot be shown: {type(exc).__name__}>"


def _unsolved(exercise: str, name: str) -> CheckResult:
    """A stub (it raises NotImplementedError or returns None): not a failure, the notebook runs on."""
    return CheckResult(
        exercise, UNSOLVED,
        f"not solved yet: {exercise} — write the body of {name} (replace `raise NotImplementedError`), "
        "then run this cell again",
    )


def _describe_inputs(arg_names: Sequence[str], case: Case) -> list[str]:
    values = list(zip(arg_names, case.args, strict=True)) + list(case.kwargs.items())
    return [f"  input {n} = {fmt(v)}" for n, v in values]


def _diagnose(got, case: Case, mistakes: Sequence[Mistake], compare: Callable) -> str | None:
    """The explanation of the first typical mistake whose answer equals the learner's, if any."""
    for mistake in mistakes:
        try:
            if compare(got, _call(mistake.fn, case)) is None:
                return mistake.why
        except (Exception, SystemExit):
            continue
    return None


__all__ = ["CheckResult", "PASSED", "FAILED", "UNSOLVED", "TIME_LIMIT_S"]

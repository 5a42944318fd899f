"""moe_lib.teach.puzzles._engine and the package: the guards, the write map, the time limit, what a learner's
kernel cannot do to the checker (raise, exit, hang, write anywhere), the figure, and one module per notebook
re-exported by the package."""

from __future__ import annotations

import importlib
import pkgutil
import signal
import threading
import time
from pathlib import Path

import puzzle_kernels as k
import pytest
import torch

from moe_lib import runtime
from moe_lib.teach import puzzles, viz
from moe_lib.teach.exercises._engine import CheckResult
from moe_lib.teach.puzzles import _engine, check_row_softmax, check_vector_add
from moe_lib.teach.puzzles._engine import FAILED, GUARD, PASSED, UNSOLVED, PuzzleResult

MODULES = [m.name for m in pkgutil.iter_modules(puzzles.__path__) if not m.name.startswith("_")]
interpreter = pytest.mark.skipif(not runtime.INTERPRET, reason="the puzzles run in the Triton interpreter")


# ----------------------------------------------------------------------------------------------------
# The package: one module per notebook, every checker importable from the package
# ----------------------------------------------------------------------------------------------------
def test_the_package_re_exports_every_checker_of_every_module():
    exported = set(puzzles.__all__) - {"PuzzleResult"}
    by_module = {}
    for name in MODULES:
        module = importlib.import_module(f"{puzzles.__name__}.{name}")
        for checker in module.__all__:
            assert getattr(puzzles, checker) is getattr(module, checker)
            by_module[checker] = name
    assert exported == set(by_module) and len(exported) >= 10
    assert puzzles.PuzzleResult is PuzzleResult and issubclass(PuzzleResult, CheckResult)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_is_listed_and_tested(name):
    module = importlib.import_module(f"{puzzles.__name__}.{name}")
    line = next(line for line in puzzles.__doc__.splitlines() if line.split()[:1] == [name])
    assert all(checker in line for checker in module.__all__), line
    assert (Path(__file__).parent / f"test_puzzles_{name}.py").is_file()


# ----------------------------------------------------------------------------------------------------
# Guarded buffers
# ----------------------------------------------------------------------------------------------------
def test_a_tensor_sits_between_poisoned_guards_and_gaps():
    value = torch.arange(6.0).view(2, 3)
    memory = torch.empty((GUARD + 10 + GUARD) * 4, dtype=torch.uint8)
    placed = _engine._place("x", value, (0, 2), output=False, memory=memory)
    assert placed.view.shape == (2, 3) and placed.view.stride() == (5, 1)
    assert torch.equal(placed.view, value)
    assert placed.buf.numel() == GUARD + 10 + GUARD
    where = placed.where
    assert (where[:GUARD] == _engine._GUARD_BEFORE).all() and (where[-GUARD:] == _engine._GUARD_AFTER).all()
    assert where[GUARD:GUARD + 10].tolist() == [0, 1, 2, -2, -2, 3, 4, 5, -2, -2]
    assert torch.isnan(placed.buf[:GUARD]).all() and torch.isnan(placed.buf[GUARD + 3:GUARD + 5]).all()


def test_output_poison_and_input_poison_differ_and_are_never_computed():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out, inp = _engine._poison(dtype, output=True), _engine._poison(dtype, output=False)
        assert torch.isnan(out).all() and torch.isnan(inp).all()
        assert not _engine._same_bits(out, inp).any()
        computed = torch.tensor([float("nan")], dtype=dtype)
        assert not _engine._same_bits(out, computed).any()
    out = _engine._poison(torch.int32, output=True)
    assert int(out) == _engine.OUT_INT_POISON != _engine.INPUT_INT_POISON


# ----------------------------------------------------------------------------------------------------
# Verdicts: pass, stub, writes outside the output, the write map
# ----------------------------------------------------------------------------------------------------
@interpreter
def test_a_pass_reads_pass_and_is_truthy():
    result = check_vector_add(k.vector_add)
    assert result.status == PASSED and bool(result) and result.cases_run >= 7
    assert result.message.startswith("PASS  masked vector add: ") and result.figure is None


@interpreter
def test_a_kernel_that_writes_nothing_is_not_solved_yet_and_so_is_not_implemented_error():
    for kernel in (k.vector_add_stub, k.vector_add_not_implemented):
        result = check_vector_add(kernel)
        assert result.status == UNSOLVED and not result
        assert "replace `pass  # your code here`" in result.message


@interpreter
def test_writes_into_the_guard_are_reported_with_the_program_that_made_them():
    result = check_vector_add(k.vector_add_no_mask)
    lines = result.message.splitlines()
    assert lines[0].endswith("wrote outside the output") and "case 3 of" in lines[0]
    assert "  out: 3 element(s) written past its end (by program 4)" in lines
    assert "  3 load(s) past the end of x (first by program 4)" in lines


@interpreter
def test_the_write_map_knows_which_program_wrote_each_element():
    result = check_vector_add(k.vector_add_no_program_id)
    placed = result.write_map.run.placed["out"]
    inside = placed.where >= 0
    assert set(placed.writer[inside & (placed.writer >= 0)].tolist()) == {3}  # the last of 4 programs wrote last
    assert [len(b) for b in _engine._blocks(placed)] == [8, 8, 8, 8]  # each wrote the same 8 elements
    assert "8 element(s) written more than once" in result.message


@interpreter
def test_a_store_far_outside_every_tensor_is_refused_and_reported():
    result = check_vector_add(k.vector_add_wild_store)
    assert result.status == FAILED
    assert "store(s) far outside every tensor were refused" in result.message
    assert result.message.splitlines()[0].endswith("wrote outside the output")


@interpreter
def test_a_plain_function_fails_with_the_advice_to_jit_it():
    result = check_vector_add(k.vector_add_not_jitted)
    assert result.status == FAILED and "put @triton.jit on the line above its def" in result.message


# ----------------------------------------------------------------------------------------------------
# What a kernel cannot do to the checker
# ----------------------------------------------------------------------------------------------------
@interpreter
def test_a_kernel_that_raises_gets_a_failed_verdict():
    result = check_vector_add(k.vector_add_raises)
    assert result.status == FAILED
    assert "the kernel failed" in result.message.splitlines()[0]
    assert "raised NameError: name 'undefined_name' is not defined" in result.message


@interpreter
def test_a_kernel_whose_signature_does_not_fit_the_launch_is_told_to_keep_the_stubs():
    result = check_vector_add(k.vector_add_wrong_signature)
    assert result.status == FAILED and "raised TypeError" in result.message
    assert "keep the stub's signature" in result.message


@interpreter
def test_a_kernel_that_calls_sys_exit_gets_a_failed_verdict():
    result = check_vector_add(k.vector_add_exits)  # SystemExit must not escape
    assert result.status == FAILED and "called sys.exit(3)" in result.message
    assert "must not call sys.exit()" in result.message
    quiet = check_vector_add(k.vector_add_exits_quietly)  # sys.exit() exits with code None
    assert quiet.status == FAILED and "called sys.exit()" in quiet.message


@interpreter
def test_an_endless_kernel_runs_out_of_time():
    start = time.monotonic()
    result = check_vector_add(k.vector_add_endless, time_limit=0.5)
    assert time.monotonic() - start < 10
    assert result.status == FAILED and result.message.splitlines()[0].endswith("out of time")
    assert "ran longer than 0.5 s" in result.message


@interpreter
def test_the_time_limit_works_outside_the_main_thread_too():
    results = []
    worker = threading.Thread(target=lambda: results.append(check_vector_add(k.vector_add_endless, time_limit=0.5)))
    start = time.monotonic()
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive() and time.monotonic() - start < 15
    assert results[0].message.splitlines()[0].endswith("out of time")


@interpreter
def test_an_alarm_that_was_already_set_is_given_back():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        check_vector_add(k.vector_add_no_mask)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90.0 < remaining <= 100.0
        assert signal.getsignal(signal.SIGALRM) is not previous and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@interpreter
def test_the_interpreter_is_left_as_it_was():
    from triton.runtime import interpreter as interp

    check_vector_add(k.vector_add_no_mask)
    check_vector_add(k.vector_add_endless, time_limit=0.2)
    builder = interp.interpreter_builder
    for name in ("create_masked_load", "create_masked_store", "create_atomic_rmw", "set_grid_idx", "set_grid_dim"):
        assert name not in vars(builder), name


# ----------------------------------------------------------------------------------------------------
# The picture
# ----------------------------------------------------------------------------------------------------
@interpreter
def test_a_failure_draws_its_write_map(no_pyplot_figures):
    from matplotlib.figure import Figure

    result = check_row_softmax(k.row_softmax_no_store_mask)
    fig = result.figure
    assert isinstance(fig, Figure) and "row softmax, case 2" in fig.texts[0].get_text()
    panel = fig.axes[0]
    assert panel.get_title(loc="left") == "out (3, 13)"
    assert "guard" in [t.get_text() for t in panel.get_yticklabels()]


@interpreter
def test_a_notebook_shows_the_message_then_the_picture(capsys, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    result = check_vector_add(k.vector_add_no_mask)
    result._ipython_display_()
    assert capsys.readouterr().out.strip() == result.message
    assert len(shown) == 1 and type(shown[0]).__name__ == "Image" and shown[0].data[:4] == b"\x89PNG"


def test_the_figure_checks_its_panels():
    good = viz.WritePanel("out", torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 2, dtype=torch.int64),
                          torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.bool), ("0",))
    viz.puzzle_write_map([good], programs=["0"])
    with pytest.raises(TypeError, match="panels"):
        viz.puzzle_write_map(good, programs=["0"])
    with pytest.raises(ValueError, match="programs lists 0"):
        viz.puzzle_write_map([good], programs=[])
    bad = viz.WritePanel("out", good.writer, torch.full((1, 2), 7), good.wrong, good.twice, ("0",))
    with pytest.raises(ValueError, match="region"):
        viz.puzzle_write_map([bad], programs=["0"])
    short = viz.WritePanel("out", good.writer, good.region, good.wrong, good.twice, ())
    with pytest.raises(ValueError, match="row_labels"):
        viz.puzzle_write_map([short], programs=["0"])


# ----------------------------------------------------------------------------------------------------
# On a GPU the kernels run compiled; only the poisoned buffers are inspected
# ----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_compiled_kernels_are_checked_through_their_guards():
    assert check_vector_add(k.vector_add).passed
    assert check_row_softmax(k.row_softmax).passed
    result = check_vector_add(k.vector_add_no_mask)
    assert result.status == FAILED and "written past its end" in result.message
    assert result.figure is not None


@interpreter
def test_where_a_wrong_pointer_lands_does_not_depend_on_the_allocator():
    """All tensors of a case share one arena at fixed offsets: loads of experts that do not exist land past the
    end of B, are refused and counted the same, whatever else the process allocated."""
    from moe_lib.teach.puzzles import check_grouped_gemm

    first = check_grouped_gemm(k.grouped_gemm_expert_from_pid).message
    clutter = [torch.empty(n * 1013) for n in range(1, 40)]  # move the allocator's free lists around
    assert check_grouped_gemm(k.grouped_gemm_expert_from_pid).message == first
    assert "load(s) past the end of b (some far from it: refused)" in first
    del clutter

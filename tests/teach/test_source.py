"""moe_lib.teach.source: show_source returns syntax-highlighted source whose plain text (what nbval compares)
is exactly the function's source, unwraps Triton kernels, and names a bad argument."""

from __future__ import annotations

import inspect
import textwrap

import pytest

pytest.importorskip("IPython")  # a dependency of ipywidgets; skip rather than error where it is missing

from IPython.display import Code  # noqa: E402

from moe_lib.kernels.align import align_count_kernel  # noqa: E402
from moe_lib.kernels.routing import topk_softmax, topk_softmax_kernel  # noqa: E402
from moe_lib.teach import show_source, source_text  # noqa: E402


def _documented(x):
    """A docstring
    on two lines."""
    return x + 1


class _Holder:
    def method(self):
        return 2


def test_a_function_is_shown_as_highlighted_python():
    code = show_source(topk_softmax)
    assert isinstance(code, Code) and code.language == "python"
    assert repr(code) == inspect.getsource(topk_softmax)  # text/plain: the source, nothing machine-dependent
    html = code._repr_html_()
    assert "<style>" in html and "topk_softmax" in html and 'class="k"' in html  # Pygments spans: highlighted


@pytest.mark.parametrize("kernel", [topk_softmax_kernel, align_count_kernel])
def test_a_triton_kernel_shows_its_python_function(kernel):
    text = repr(show_source(kernel))
    assert text == inspect.getsource(kernel.fn)
    assert text.startswith("@triton.jit") and f"def {kernel.fn.__name__}(" in text


def test_the_same_object_gives_the_same_output():
    a, b = show_source(topk_softmax_kernel), show_source(topk_softmax_kernel)
    assert repr(a) == repr(b) and a._repr_html_() == b._repr_html_()


def test_methods_are_dedented_and_the_docstring_can_be_left_out():
    assert source_text(_Holder.method) == textwrap.dedent(inspect.getsource(_Holder.method))
    assert source_text(_Holder.method).startswith("def method")
    short = source_text(_documented, docstring=False)
    assert "docstring" not in short and "on two lines" not in short
    assert short == "def _documented(x):\n    return x + 1\n"
    assert "on two lines" in source_text(_documented)


@pytest.mark.parametrize("bad,exc,match", [
    (3, TypeError, "obj must be a function"),
    ("def f(): pass", TypeError, "obj must be a function"),
    (len, ValueError, "source of 'len' is not available"),
])
def test_bad_input_is_named(bad, exc, match):
    with pytest.raises(exc, match=match):
        show_source(bad)


def test_show_lines_keeps_only_the_lines_of_one_switch():
    from moe_lib.kernels.fused_moe import _moe_tile
    from moe_lib.teach.source import show_lines

    text = show_lines(_moe_tile, "TMA").data
    lines = text.splitlines()
    assert all(("TMA" in line) or line == "    ..." for line in lines) and any("TMA" in line for line in lines)
    assert any(line.split()[0].isdigit() for line in lines)  # numbered as in the function
    with pytest.raises(ValueError, match="no line"):
        show_lines(_moe_tile, "no such switch")
    with pytest.raises(ValueError, match="needles"):
        show_lines(_moe_tile)

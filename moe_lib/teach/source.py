"""Source code shown in a notebook, syntax-highlighted: ``show_source(topk_softmax_kernel)``.

A notebook that prints ``inspect.getsource(...)`` shows plain text on stdout. :func:`show_source` returns an
:class:`IPython.display.Code` instead: Jupyter renders its HTML (highlighted by Pygments), and its plain-text
form — what nbval compares and what a terminal shows — is exactly the source, so the output is the same on
every machine.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from IPython.display import Code


def _unwrap(obj):
    """The Python function under a ``@triton.jit`` (or ``@triton.autotune`` / ``@triton.heuristics``)
    wrapper: each keeps it in ``.fn``; anything else is returned as it is."""
    seen = set()
    while hasattr(obj, "fn") and not inspect.isroutine(obj) and id(obj) not in seen:
        seen.add(id(obj))
        obj = obj.fn
    return obj


def source_text(obj, *, docstring: bool = True) -> str:
    """The source of a function, method or class (of a Triton kernel: its Python function), dedented.

    With ``docstring=False`` the function's docstring is left out (its first statement, if it is a string)
    — for long library docstrings that the notebook explains in its own words.
    """
    target = _unwrap(obj)
    if not (inspect.isroutine(target) or inspect.isclass(target)):
        raise TypeError(f"obj must be a function, method, class or Triton kernel, got {type(obj).__name__}")
    try:
        text = textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError) as err:  # defined in a REPL, or a builtin
        raise ValueError(f"the source of {getattr(target, '__qualname__', target)!r} is not available: {err}") from err
    if not docstring:
        doc = inspect.getdoc(target)
        raw = getattr(target, "__doc__", None)
        if doc is not None and raw is not None:
            for quote in ('"""', "'''"):
                block = f"{quote}{raw}{quote}"
                start = text.find(block)
                if start >= 0:
                    line_start = text.rfind("\n", 0, start) + 1
                    end = start + len(block)
                    line_end = text.find("\n", end)
                    text = text[:line_start] + text[(line_end + 1 if line_end >= 0 else end):]
                    break
    return text


def show_source(obj, *, docstring: bool = True) -> Code:
    """The source of ``obj`` as a syntax-highlighted :class:`IPython.display.Code` (language python).

    End a notebook cell with it to show it. ``obj`` is a function, method or class; for a ``@triton.jit``
    kernel its Python function (``kernel.fn``) is shown. ``docstring=False`` leaves the docstring out.
    """
    from IPython.display import Code  # here, not at import: ``moe_lib.teach`` stays light

    return Code(source_text(obj, docstring=docstring), language="python")


def show_lines(obj, *needles: str) -> Code:
    """Only the lines of ``obj``'s source that contain one of ``needles`` (with their line numbers in the
    function, ``...`` for the lines skipped): the part of a long kernel that one switch changes."""
    from IPython.display import Code

    if not needles or not all(isinstance(n, str) and n for n in needles):
        raise ValueError(f"needles must be one or more non-empty strings, got {needles!r}")
    lines = source_text(obj).splitlines()
    keep = [i for i, line in enumerate(lines) if any(n in line for n in needles)]
    if not keep:
        raise ValueError(f"no line of {getattr(_unwrap(obj), '__qualname__', obj)!r} contains {needles}")
    out, last = [], -1
    for i in keep:
        if i > last + 1:
            out.append("    ...")
        out.append(f"{i + 1:4d}  {lines[i]}")
        last = i
    return Code("\n".join(out), language="python")


__all__ = ["show_source", "show_lines", "source_text"]

"""Kernel puzzles: the learner writes a ``@triton.jit`` kernel, the checker runs it in the Triton interpreter on
fixed and random cases and explains the first failure.

Every ``check_*`` function takes the learner's kernel, launches it the way its docstring shows (the grid and the
constexprs are the puzzle's, the kernel's signature is the learner's to match) and returns a result whose text is
one of

* ``PASS  <puzzle>: ...`` — every case agreed with the library's answer, and nothing was written outside the
  outputs;
* ``not solved yet: <puzzle> ...`` — the kernel is still the stub (its body is ``pass``: it wrote nothing):
  nothing fails, the notebook runs on;
* ``FAIL  <puzzle>, case i of n (...)`` followed by the launch, the inputs, what went wrong — elements written
  outside an output (into the poisoned guards around it or the gaps between its rows), elements left unwritten,
  loads past an input, wrong values (expected against got) — and the likely mistake: a missing mask, a
  ``program_id`` off by one or unused, a wrong stride, arithmetic in bf16, or the puzzle's own typical mistakes.
  In a notebook the result also draws which program wrote each element (``result.figure``).

A checker never raises because of the kernel: an exception, a ``sys.exit``, a time-out (each case has a time
limit) or an access outside every tensor of the case is reported as a failure. It raises TypeError only when it
is handed something that is not callable; a plain Python function (no ``@triton.jit``) fails with that advice.
The cases are seeded: the same kernel always gets the same verdict and the same message. The engine is
:mod:`._engine`; one module per notebook:

    primer            notebook 02   check_vector_add, check_row_softmax
    routing           notebook 03   check_topk_kernel, check_renormalize_kernel
    alignment         notebook 05   check_expert_histogram, check_scatter_sorted
    fused_kernel      notebook 06   check_moe_tile, check_silu_mul_epilogue, check_grouped_gemm
    tensor_parallel   notebook 08   check_tp_partial_sum
    fp8               notebook 11   check_fp8_matmul_epilogue
"""

from __future__ import annotations

from ._engine import PuzzleResult
from .alignment import check_expert_histogram, check_scatter_sorted
from .fp8 import check_fp8_matmul_epilogue
from .fused_kernel import check_grouped_gemm, check_moe_tile, check_silu_mul_epilogue
from .primer import check_row_softmax, check_vector_add
from .routing import check_renormalize_kernel, check_topk_kernel
from .tensor_parallel import check_tp_partial_sum

__all__ = [
    "PuzzleResult",
    "check_vector_add",
    "check_row_softmax",
    "check_topk_kernel",
    "check_renormalize_kernel",
    "check_expert_histogram",
    "check_scatter_sorted",
    "check_moe_tile",
    "check_silu_mul_epilogue",
    "check_grouped_gemm",
    "check_tp_partial_sum",
    "check_fp8_matmul_epilogue",
]

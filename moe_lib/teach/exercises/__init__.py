"""Checkers for the notebooks' exercises: run the learner's function on fixed cases and explain the first
failure.

Every ``check_*`` function takes the learner's function, calls it on a fixed list of cases (small hand-picked
edge cases first, then seeded random ones) and returns a :class:`CheckResult` whose text is one of

* ``PASS  <exercise>: ...`` — every case agreed with the library's answer;
* ``not solved yet: <exercise> ...`` — the function still raises ``NotImplementedError`` or returns
  ``None`` (the stubs in the notebooks do): nothing fails, the notebook runs on;
* ``FAIL  <exercise>, case i of n (...)`` followed by the input, the expected and the obtained output, and
  the likely mistake: the first of a list of typical wrong solutions whose output equals the learner's.

A checker never raises because of the learner's code (an exception inside it is reported as a failure);
it raises TypeError only when it is handed something that is not callable. The result is truthy only when
the exercise passed, and it displays as its text, so a notebook cell can end with ``check_xxx(my_fn)``.
The cases are seeded: the same function always gets the same verdict and the same message.

One module per notebook, on a shared engine (:mod:`._engine`); every checker is importable from here:

    gate              notebook 01   check_gate_logits, check_logit_std
    routing           notebook 03   check_renormalize, check_topk_ids
    reference         notebook 04   check_silu_and_mul, check_moe_forward
    alignment         notebook 05   check_expert_slots, check_padded_total
    fused_kernel      notebook 06   check_tile_a_rows, check_b_offsets
    performance       notebook 07   check_decode_floor
    tensor_parallel   notebook 08   check_shard_w13, check_shard_w2
    fp8               notebook 11   check_e4m3_round, check_quantize_block
"""

from __future__ import annotations

from ._engine import CheckResult
from .alignment import check_expert_slots, check_padded_total
from .fp8 import check_e4m3_round, check_quantize_block
from .fused_kernel import check_b_offsets, check_tile_a_rows
from .gate import check_gate_logits, check_logit_std
from .performance import check_decode_floor
from .reference import check_moe_forward, check_silu_and_mul
from .routing import check_renormalize, check_topk_ids
from .tensor_parallel import check_shard_w2, check_shard_w13

__all__ = [
    "CheckResult",
    "check_gate_logits",
    "check_logit_std",
    "check_renormalize",
    "check_topk_ids",
    "check_silu_and_mul",
    "check_moe_forward",
    "check_expert_slots",
    "check_padded_total",
    "check_tile_a_rows",
    "check_b_offsets",
    "check_decode_floor",
    "check_shard_w13",
    "check_shard_w2",
    "check_e4m3_round",
    "check_quantize_block",
]

"""moe_lib.teach.exercises: every checker accepts a correct solution, rejects typical wrong ones with the right
explanation, and reports an unsolved stub as "not solved yet" without raising."""

from __future__ import annotations

import math

import pytest
import torch

from moe_lib.teach import exercises as ex


# ----------------------------------------------------------------------------------------------------
# Correct solutions, written the way a learner would (not by calling the library)
# ----------------------------------------------------------------------------------------------------
def gate_logits(x, weight):
    return x @ weight.T


def logit_std(init_std, hidden_size):
    return init_std * math.sqrt(hidden_size)


def renormalize(topk_probs):
    total = topk_probs.sum(dim=-1, keepdim=True)
    return topk_probs / torch.where(total > 0, total, torch.ones_like(total))


def topk_ids(probs, k):
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]


def silu_and_mul(gate_up):
    g, u = gate_up.chunk(2, dim=-1)
    return g * torch.sigmoid(g) * u


def moe_forward(x, w13, w2, topk_weights, topk_ids):
    inter = w2.shape[2]
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        if tok.numel():
            gu = x[tok] @ w13[e].T
            y = (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ w2[e].T
            out.index_add_(0, tok, topk_weights[tok, slot, None] * y)
    return out


def expert_slots(topk_ids, expert, block_m):
    flat = topk_ids.flatten()
    ids = (flat == expert).nonzero().flatten()
    padded = -(-ids.numel() // block_m) * block_m
    return torch.cat([ids, torch.full((padded - ids.numel(),), flat.numel(), dtype=ids.dtype)])


def padded_total(counts, block_m):
    return sum(-(-n // block_m) * block_m for n in counts)


def tile_a_rows(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    slots = pid_m * block_m + torch.arange(block_m)
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    inside = slots < sorted_token_ids.numel()
    flat[inside] = sorted_token_ids[slots[inside]].long()
    return torch.where(flat < num_valid, flat // top_k, -1)


def b_offsets(expert, n, k, strides, inter):
    be, bn, bk = strides
    gate = expert * be + n * bn + k * bk
    return gate, gate + inter * bn


def shard_w13(w13, tp_size, rank):
    inter = w13.shape[1] // 2
    p = inter // tp_size
    return torch.cat([w13[:, rank * p:(rank + 1) * p], w13[:, inter + rank * p:inter + (rank + 1) * p]], dim=1)


def shard_w2(w2, tp_size, rank):
    p = w2.shape[2] // tp_size
    return w2[:, :, rank * p:(rank + 1) * p]


def stub(*args):
    raise NotImplementedError


def returns_none(*args):
    pass


# ----------------------------------------------------------------------------------------------------
# Typical wrong solutions and a phrase the explanation must contain
# ----------------------------------------------------------------------------------------------------
def _swap_halves(x):
    g, u = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(u) * g


def _moe_unweighted(x, w13, w2, topk_weights, topk_ids):
    return moe_forward(x, w13, w2, torch.ones_like(topk_weights), topk_ids)


def _moe_swapped(x, w13, w2, topk_weights, topk_ids):
    inter = w2.shape[2]
    return moe_forward(x, torch.cat([w13[:, inter:], w13[:, :inter]], dim=1), w2, topk_weights, topk_ids)


def _slots_token_ids(topk_ids, expert, block_m):
    flat = topk_ids.flatten()
    ids = (flat == expert).nonzero().flatten() // topk_ids.shape[1]
    padded = -(-ids.numel() // block_m) * block_m
    return torch.cat([ids, torch.full((padded - ids.numel(),), flat.numel(), dtype=ids.dtype)])


def _slots_minus_one(topk_ids, expert, block_m):
    flat = topk_ids.flatten()
    ids = (flat == expert).nonzero().flatten()
    padded = -(-ids.numel() // block_m) * block_m
    return torch.cat([ids, torch.full((padded - ids.numel(),), -1, dtype=ids.dtype)])


def _slots_extra_block(topk_ids, expert, block_m):
    flat = topk_ids.flatten()
    ids = (flat == expert).nonzero().flatten()
    padded = (ids.numel() // block_m + 1) * block_m
    return torch.cat([ids, torch.full((padded - ids.numel(),), flat.numel(), dtype=ids.dtype)])


def _a_rows_flat(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    rows = tile_a_rows(sorted_token_ids, pid_m, block_m, 1, num_valid)
    return rows


def _a_rows_slot(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    flat = tile_a_rows(sorted_token_ids, pid_m, block_m, 1, num_valid)  # the flat ids, -1 for padding
    return torch.where(flat >= 0, flat % top_k, -1)


def _a_rows_unmasked(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    slots = pid_m * block_m + torch.arange(block_m)
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    inside = slots < sorted_token_ids.numel()
    flat[inside] = sorted_token_ids[slots[inside]].long()
    return flat // top_k


def _w13_chunked(w13, tp_size, rank):
    return w13.chunk(tp_size, dim=1)[rank]


def _w13_up_first(w13, tp_size, rank):
    inter = w13.shape[1] // 2
    return shard_w13(torch.cat([w13[:, inter:], w13[:, :inter]], dim=1), tp_size, rank)


def decode_floor_us(hidden, inter, top_k, tp, bandwidth_tbps):
    return top_k * 3 * hidden * (inter // tp) * 2 / (bandwidth_tbps * 1e12) * 1e6


CHECKS = {
    "gate_logits": (ex.check_gate_logits, gate_logits, [
        (lambda x, w: x @ w, "x @ weight.T"),
        (lambda x, w: w @ x.transpose(-1, -2), "one row per token"),
        (lambda x, w: x.reshape(-1, x.shape[-1]) @ w.T, "leading dimensions"),
    ]),
    "logit_std": (ex.check_logit_std, logit_std, [
        (lambda s, h: s * s * h, "variance"),
        (lambda s, h: s * h, "variances do"),
        (lambda s, h: s / math.sqrt(h), "grows with H"),
    ]),
    "renormalize": (ex.check_renormalize, renormalize, [
        (lambda p: p / p.sum(dim=-1, keepdim=True), "NaN"),
        (lambda p: p / p.sum(dim=0, keepdim=True), "over the tokens"),
        (lambda p: p / p.sum(), "whole tensor"),
        (lambda p: torch.softmax(p, dim=-1), "softmax"),
        (lambda p: p, "divide each row by its own sum"),  # no known mistake: the general hint
    ]),
    "topk_ids": (ex.check_topk_ids, topk_ids, [
        (lambda p, k: torch.topk(p, k).indices, "stable"),
        (lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, :k], "k smallest"),
        (lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, -k:].flip(-1), "higher id first"),
        (lambda p, k: torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :k].float(), "integer dtype"),
    ]),
    "silu_and_mul": (ex.check_silu_and_mul, silu_and_mul, [
        (_swap_halves, "halves are swapped"),
        (lambda x: torch.sigmoid(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1], "sigmoid is not SiLU"),
        (lambda x: torch.nn.functional.silu(x.chunk(2, -1)[0]), "product with the up half"),
        (lambda x: torch.nn.functional.silu(x[..., 0::2]) * x[..., 1::2], "even and odd"),
    ]),
    "moe_forward": (ex.check_moe_forward, moe_forward, [
        (_moe_unweighted, "routing weights"),
        (_moe_swapped, "w1 and w3 are swapped"),
        (lambda x, w13, w2, w, ids: w13 @ x, "raised RuntimeError"),  # a crash is reported, not raised
    ]),
    "expert_slots": (ex.check_expert_slots, expert_slots, [
        (_slots_token_ids, "token ids"),
        (_slots_minus_one, "not -1"),
        (_slots_extra_block, "no padding"),
        (lambda t, e, b: (t.flatten() == e).nonzero().flatten(), "padding is missing"),
    ]),
    "padded_total": (ex.check_padded_total, padded_total, [
        (lambda c, b: sum((n // b + 1) * b for n in c if n), "ceil(n / BLOCK_M)"),
        (lambda c, b: sum(max(1, -(-n // b)) * b for n in c), "no block"),
        (lambda c, b: sum(c) + len(c) * (b - 1), "worst case"),
        (lambda c, b: -(-sum(c) // b) * b, "padded separately"),
    ]),
    "tile_a_rows": (ex.check_tile_a_rows, tile_a_rows, [
        (_a_rows_flat, "flat_id // top_k"),
        (_a_rows_slot, "slot j"),
        (_a_rows_unmasked, "padding slots"),
        (lambda s, p, b, k, v: tile_a_rows(s, 0, b, k, v) if p else tile_a_rows(s, 1, b, k, v), "pid_m * block_m"),
    ]),
    "b_offsets": (ex.check_b_offsets, b_offsets, [
        (lambda e, n, k, s, i: (n * s[1] + k * s[2], n * s[1] + k * s[2] + i * s[1]), "expert * stride_be"),
        (lambda e, n, k, s, i: (b_offsets(e, n, k, s, i)[0], b_offsets(e, n, k, s, i)[0] + i), "not inter elements"),
        (lambda e, n, k, s, i: (e * s[0] + n * s[2] + k * s[1], e * s[0] + n * s[2] + k * s[1] + i * s[2]),
         "row n goes with stride_bn"),
    ]),
    "decode_floor": (ex.check_decode_floor, decode_floor_us, [
        (lambda h, i, k, tp, bw: k * 3 * h * i * 2 / (bw * 1e12) * 1e6, "divide the intermediate size by tp"),
        (lambda h, i, k, tp, bw: k * 2 * h * (i // tp) * 2 / (bw * 1e12) * 1e6, "three matrices"),
        (lambda h, i, k, tp, bw: k * 3 * h * (i // tp) / (bw * 1e12) * 1e6, "2 bytes"),
        (lambda h, i, k, tp, bw: k * 3 * h * (i // tp) * 2 / (bw * 1e9) * 1e6, "1e12 bytes"),
    ]),
    "shard_w13": (ex.check_shard_w13, shard_w13, [
        (_w13_chunked, "one block of 2I rows"),
        (_w13_up_first, "gate rows come first"),
        (lambda w, tp, r: w.chunk(tp, dim=2)[r], "not along H"),
        (lambda w, tp, r: w[:, r::tp], "every tp-th row"),
    ]),
    "shard_w2": (ex.check_shard_w2, shard_w2, [
        (lambda w, tp, r: w.chunk(tp, dim=1)[r], "row-parallel"),
        (lambda w, tp, r: w[:, :, r::tp], "every tp-th column"),
    ]),
}


def test_every_checker_is_covered():
    exported = {name for name in ex.__all__ if name.startswith("check_")}
    assert exported == {CHECKS[key][0].__name__ for key in CHECKS}


@pytest.mark.parametrize("name", list(CHECKS))
def test_accepts_the_solution(name):
    check, solution, _ = CHECKS[name]
    result = check(solution)
    assert result.passed and bool(result), result.message
    assert result.status == ex.PASSED and result.message.startswith("PASS  ")
    assert repr(result) == result.message


@pytest.mark.parametrize("name", list(CHECKS))
@pytest.mark.parametrize("unsolved", [stub, returns_none], ids=["NotImplementedError", "None"])
def test_unsolved_stub_says_not_solved_yet(name, unsolved):
    check, _, _ = CHECKS[name]
    result = check(unsolved)
    assert result.status == ex.UNSOLVED and not result
    assert result.message.startswith("not solved yet")


@pytest.mark.parametrize("name,index", [(n, i) for n, (_, _, wrong) in CHECKS.items() for i in range(len(wrong))])
def test_rejects_a_typical_mistake_and_explains_it(name, index):
    check, _, wrong = CHECKS[name]
    fn, phrase = wrong[index]
    result = check(fn)
    assert result.status == ex.FAILED and not result, result.message
    first = result.message.splitlines()[0]
    assert first.startswith("FAIL  ") and "case " in first
    assert "input " in result.message, result.message
    assert phrase in result.message, result.message


def test_failure_message_shows_input_expected_and_got():
    result = ex.check_renormalize(lambda p: p / p.sum(dim=-1, keepdim=True))
    text = result.message
    assert "a token whose chosen probabilities are all 0" in text
    assert "input topk_probs = tensor of shape (2, 2), float32: [[0.6, 0.3], [0.0, 0.0]]" in text
    assert "expected: tensor of shape (2, 2), float32: [[0.6667, 0.3333], [0.0, 0.0]]" in text
    assert "got     : tensor of shape (2, 2), float32: [[0.6667, 0.3333], [nan, nan]]" in text
    assert "likely mistake: " in text


def test_verdicts_are_deterministic():
    wrong = lambda p, k: torch.topk(p, k).indices  # noqa: E731
    assert ex.check_topk_ids(wrong).message == ex.check_topk_ids(wrong).message


def test_learner_function_cannot_spoil_the_cases():
    """A solution that writes into its input still sees fresh inputs on the next call."""

    def in_place(topk_probs):
        total = topk_probs.sum(dim=-1, keepdim=True)
        return topk_probs.div_(torch.where(total > 0, total, torch.ones_like(total)))

    assert ex.check_renormalize(in_place).passed
    assert ex.check_renormalize(renormalize).passed


def test_a_stub_that_fails_later_is_a_failure_not_unsolved():
    calls = []

    def half_done(topk_probs):
        calls.append(1)
        if len(calls) > 1:
            raise NotImplementedError
        return renormalize(topk_probs)

    # NotImplementedError is "not solved yet" wherever it is raised: the learner is still writing.
    assert ex.check_renormalize(half_done).status == ex.UNSOLVED


@pytest.mark.parametrize("check", [CHECKS[n][0] for n in CHECKS])
def test_not_callable_raises_type_error(check):
    with pytest.raises(TypeError, match="fn must be"):
        check(42)

"""moe_lib.teach.widgets: each explorer draws when built, and redraws when a control changes (no kernel needed)."""

from __future__ import annotations

import base64

import pytest
from matplotlib.figure import Figure

from moe_lib.config import MIXTRAL_8X7B, TINY

pytest.importorskip("ipywidgets")  # not on the GPU machine: skip there, never error
from moe_lib.teach import widgets  # noqa: E402


def _png(explorer) -> bytes:
    (image,) = [o for o in explorer.output.outputs if o["output_type"] == "display_data"]
    return base64.b64decode(image["data"]["image/png"])


def _stdout(explorer) -> str:
    return "".join(o["text"] for o in explorer.output.outputs if o.get("name") == "stdout")


def _check_drawn(explorer) -> None:
    assert isinstance(explorer.figure, Figure)
    assert _png(explorer).startswith(b"\x89PNG")
    assert _stdout(explorer).strip() == explorer.text
    assert [o["output_type"] for o in explorer.output.outputs] == ["stream", "display_data"]


@pytest.mark.parametrize(
    "factory,control,new_value,expect",
    [
        (widgets.routing_explorer, "top_k", 3, "top_k = 3"),
        (widgets.routing_explorer, "num_tokens", 100, "100 tokens"),
        (widgets.routing_explorer, "seed", 5, None),
        (widgets.alignment_explorer, "block_m", 16, "BLOCK_M = 16"),
        (widgets.alignment_explorer, "num_tokens", 40, "80 rows"),
        (widgets.tp_explorer, "tp_size", 8, "I/tp = 1792"),
        (widgets.tp_explorer, "num_tokens", 1024, "(1024, 4096) partial outputs"),
    ],
)
def test_changing_a_control_redraws(factory, control, new_value, expect):
    explorer = factory()
    _check_drawn(explorer)
    before_png, before_text, before_fig = _png(explorer), explorer.text, explorer.figure
    explorer.controls[control].value = new_value  # what moving the slider in the browser does
    _check_drawn(explorer)
    assert explorer.values[control] == new_value
    assert explorer.figure is not before_fig
    if expect is not None:
        assert expect in explorer.text and expect not in before_text, explorer.text
    assert explorer.text != before_text or _png(explorer) != before_png


def test_output_is_replaced_not_appended():
    explorer = widgets.routing_explorer()
    for k in (1, 2, 3, 4):
        explorer.controls["top_k"].value = k
    assert len(explorer.output.outputs) == 2


def test_same_values_draw_the_same_picture():
    a, b = widgets.routing_explorer(seed=3), widgets.routing_explorer(seed=3)
    assert a.text == b.text and _png(a) == _png(b)
    a.controls["seed"].value = 4
    a.controls["seed"].value = 3
    assert _png(a) == _png(b)


def test_routing_text_matches_the_library():
    from moe_lib.kernels.routing import topk_softmax
    from moe_lib.testing import randn, seeded

    explorer = widgets.routing_explorer(num_tokens=40, top_k=3, seed=11)
    _, ids = topk_softmax(randn(40, 8, generator=seeded(11)), 3)
    load = ids.flatten().bincount(minlength=8)
    assert f"busiest expert {int(load.argmax())} with {int(load.max())} rows" in explorer.text
    assert "40 tokens x top_k = 3 = 120 rows over 8 experts\n" in explorer.text


def test_alignment_text_matches_the_library():
    from moe_lib.kernels.align import moe_align_block_size_torch
    from moe_lib.kernels.routing import topk_softmax
    from moe_lib.testing import randn, seeded

    explorer = widgets.alignment_explorer(num_tokens=20, block_m=4, seed=2)
    _, ids = topk_softmax(randn(20, 8, generator=seeded(2)), 2)
    total = int(moe_align_block_size_torch(ids, 4, 8)[2].item())
    assert f"40 rows -> {total} slots in use, {total - 40} of them padding" in explorer.text


def test_tp_table_uses_the_library_shards():
    text = widgets.tp_shard_table(MIXTRAL_8X7B, 4, 16)
    assert "per rank (8, 7168, 4096)" in text  # w13: 2I/tp = 2 * 14336 / 4
    assert "per rank (8, 4096, 3584)" in text  # w2: I/tp
    per_rank = 3 * 4096 * 14336 // 4 * 8 * 2  # bytes of bf16 weights on one rank
    assert f"{per_rank / 1e9:.2f} GB" in text
    assert f"each rank sends {2 * 3 / 4 * 16 * 4096 * 2 / 1e6:.3f} MB" in text
    assert "none (one rank)" in widgets.tp_shard_table(MIXTRAL_8X7B, 1, 16)
    assert "I/tp = 64" in widgets.tp_shard_table(TINY, 2, 1)


def test_explorer_values_and_controls():
    explorer = widgets.alignment_explorer(block_m=32, num_tokens=5, seed=1)
    assert explorer.values == {"block_m": 32, "num_tokens": 5, "seed": 1}
    assert "moe-lib-explorer" in explorer._dom_classes
    assert explorer.output in explorer.children


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: widgets.routing_explorer(top_k=9), ValueError, "top_k"),
        (lambda: widgets.routing_explorer(num_tokens=0), ValueError, "num_tokens"),
        (lambda: widgets.routing_explorer(seed=1.5), TypeError, "seed"),
        (lambda: widgets.routing_explorer(num_experts=1), ValueError, "num_experts"),
        (lambda: widgets.alignment_explorer(block_m=3), ValueError, "block_m"),
        (lambda: widgets.alignment_explorer(num_tokens="4"), TypeError, "num_tokens"),
        (lambda: widgets.tp_explorer(tp_size=3), ValueError, "tp_size"),
        (lambda: widgets.tp_explorer(num_tokens=3), ValueError, "num_tokens"),
        (lambda: widgets.tp_explorer("mixtral"), TypeError, "config"),
        (lambda: widgets.tp_shard_table(TINY, 3, 1), ValueError, "tp_size"),
        (lambda: widgets.tp_shard_table(TINY, 2, 0), ValueError, "num_tokens"),
    ],
)
def test_bad_arguments_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


"""moe_lib.model: the tiny transformers Mixtral with every MoE block swapped for a MixtralMoE — same logits and
greedy tokens as the unmodified model and its golden outputs, all-or-nothing swaps — and record_routing."""

from __future__ import annotations

import pytest
import torch

from moe_lib import checkpoint as ckpt_mod
from moe_lib import runtime
from moe_lib.kernels.experts import fused_experts
from moe_lib.kernels.routing import topk_softmax
from moe_lib.layer import MixtralMoE
from moe_lib.model import (
    EXPERTS_IMPLEMENTATION,
    hf_experts_forward,
    load_mixtral,
    moe_blocks,
    record_routing,
    register_experts_implementation,
    replace_moe_blocks,
)
from moe_lib.testing import assert_close, rel_err, tolerance

E, K, H, I = 8, 2, 64, 128  # the tiny checkpoint's layer
TINY = ckpt_mod.TINY_MIXTRAL


@pytest.fixture(scope="module")
def golden():
    return ckpt_mod.read_golden(TINY)[0]


def test_swapped_model_matches_hf_and_golden(golden, device):
    hf = ckpt_mod.load_hf_model(TINY).to(device)
    model = ckpt_mod.load_hf_model(TINY).to(device)
    assert [name for name, _ in moe_blocks(model)] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    layers = replace_moe_blocks(model, TINY)
    assert len(layers) == 2 and not moe_blocks(model)
    assert [type(layer.mlp) for layer in model.model.layers] == [MixtralMoE, MixtralMoE]
    ids = golden["input_ids"].to(device)
    with torch.no_grad():
        ref, ours = hf(ids).logits, model(ids).logits
    tol = tolerance(torch.float32)
    assert_close(ref, golden["logits"], tol=tol, what="unmodified HF model vs golden")
    assert_close(ours, ref, tol=tol, what="swapped vs HF")
    assert_close(ours, golden["logits"], tol=tol, what="swapped vs golden")
    # (the greedy tokens of swapped layers: test_load_mixtral_in_one_call_gives_the_golden_greedy_tokens)

    # The comparison is sensitive: one expert of the last layer with its output halved moves the logits.
    with torch.no_grad():
        layers[1].w2[3].mul_(0.5)
        perturbed = model(ids).logits
    assert rel_err(perturbed, golden["logits"]) > 100 * tol


def greedy_tokens(model, golden, device) -> torch.Tensor:
    """The tiny model's greedy continuation of the golden prompts (what golden_run generates)."""
    prompt = golden["prompt_ids"].to(device)
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=ckpt_mod.GOLDEN_NEW_TOKENS,
                              min_new_tokens=ckpt_mod.GOLDEN_NEW_TOKENS, do_sample=False).cpu()


def test_load_mixtral_in_one_call_gives_the_golden_greedy_tokens(golden, device):
    model = load_mixtral(TINY, device=device)
    assert not moe_blocks(model) and not model.training
    assert [type(layer.mlp) for layer in model.model.layers] == [MixtralMoE, MixtralMoE]
    assert model.model.layers[0].mlp.w13.device.type == torch.device(device).type
    assert torch.equal(greedy_tokens(model, golden, device), golden["greedy_ids"])


def test_moe_lib_is_an_experts_implementation_of_transformers(golden, device, monkeypatch):
    """transformers 5.x's ExpertsInterface: from_pretrained(..., experts_implementation="moe_lib") keeps HF's
    blocks and router and runs every expert computation through fused_experts."""
    from moe_lib import model as model_mod

    assert register_experts_implementation() and register_experts_implementation()  # idempotent
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return fused_experts(*args, **kwargs)

    monkeypatch.setattr(model_mod, "fused_experts", counted)
    model = ckpt_mod.load_hf_model(TINY, experts_implementation=EXPERTS_IMPLEMENTATION).to(device)
    assert len(moe_blocks(model)) == 2 and model.config._experts_implementation == EXPERTS_IMPLEMENTATION
    with torch.no_grad():
        logits = model(golden["input_ids"].to(device)).logits
    assert calls == [(32, H), (32, H)]  # both layers, batch 2 x 16 tokens
    assert_close(logits, golden["logits"], tol=tolerance(torch.float32))
    assert (logits.argmax(-1).cpu() == golden["logits"].argmax(-1)).all()  # the same next token everywhere
    with pytest.raises(RuntimeError, match="inference.*torch.no_grad"):
        model(golden["input_ids"][:, :4].to(device))  # gradients on: refused, not silently gradient-free


def test_the_experts_implementation_refuses_other_layouts():
    dev = runtime.default_device()

    class Experts(torch.nn.Module):
        gate_up_proj = torch.zeros(2, 8, 4, device=dev)
        down_proj = torch.zeros(2, 4, 4, device=dev)
        has_bias = True

    x, ids, w = (torch.zeros(3, 4, device=dev), torch.zeros(3, 1, dtype=torch.long, device=dev),
                 torch.ones(3, 1, device=dev))
    with pytest.raises(NotImplementedError, match="'has_bias': True"):
        hf_experts_forward(Experts(), x, ids, w)
    Experts.has_bias = False
    with torch.no_grad():
        assert hf_experts_forward(Experts(), x, ids, w).shape == (3, 4)


def test_swap_from_the_models_own_weights(golden, device):
    """checkpoint=None: each layer loads from the block it replaces (transformers 5.x names)."""
    model = ckpt_mod.tiny_mixtral_model(seed=1).to(device)  # other weights than the checkpoint's
    ids = golden["input_ids"].to(device)
    with torch.no_grad():
        ref = model(ids).logits
        replace_moe_blocks(model)
        ours = model(ids).logits
    assert_close(ours, ref, tol=tolerance(torch.float32))
    assert rel_err(ours, golden["logits"]) > 0.1  # and not the checkpoint's model


def test_swap_is_all_or_nothing(tmp_path):
    """A checkpoint whose layer 1 is broken leaves every block of the model in place."""
    from safetensors.torch import save_file

    tensors = ckpt_mod.read_moe_weights(TINY, 0) | {
        n: t for n, t in ckpt_mod.read_moe_weights(TINY, 1).items() if ".experts.6." not in n
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = ckpt_mod.load_hf_model(TINY)
    with pytest.raises(ValueError, match=r"missing \(3\): model\.layers\.1\.block_sparse_moe\.experts\.6\."):
        replace_moe_blocks(model, tmp_path)
    assert len(moe_blocks(model)) == 2


def test_replace_bad_args():
    with pytest.raises(TypeError, match="model"):
        replace_moe_blocks("model")
    with pytest.raises(ValueError, match="no MixtralSparseMoeBlock"):
        replace_moe_blocks(torch.nn.Linear(2, 2))


def test_replace_needs_a_layer_index_to_read_a_checkpoint():
    """A block that is not under ``layers.<i>.`` cannot be matched with a checkpoint layer; the model is kept."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    model = ckpt_mod.load_hf_model(TINY)
    model.extra = MixtralSparseMoeBlock(model.config)  # a third block, outside the decoder layers
    with pytest.raises(ValueError, match="cannot tell the layer index of MoE block 'extra'"):
        replace_moe_blocks(model, TINY)
    assert len(moe_blocks(model)) == 3


def test_record_routing_logs_what_the_layer_used(gen, device):
    layer, other = (MixtralMoE(E, K, H, I, device=device, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    x1, x2 = torch.randn(6, H, generator=gen).to(device), torch.randn(2, 3, H, generator=gen).to(device)
    with record_routing([layer, other]) as log:
        layer(x1)
        layer(x2)
    layer(x1)  # outside: not recorded
    assert [len(calls) for calls in log] == [2, 0]
    for (w, ids), x in zip(log[0], (x1, x2.reshape(-1, H)), strict=True):
        ref_w, ref_ids = topk_softmax(x @ layer.gate.weight.T, K)
        assert torch.equal(ids, ref_ids)
        assert_close(w, ref_w, tol=1e-6)
    assert layer._routing_log is None
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        with record_routing([layer, torch.nn.Linear(2, 2)]):
            pass

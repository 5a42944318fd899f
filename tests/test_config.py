import pytest
import torch

from moe_lib.config import MIXTRAL_8X7B, TINY, MoEConfig, QuantConfig


def test_mixtral_numbers():
    c = MIXTRAL_8X7B
    assert (c.num_experts, c.top_k, c.hidden_size, c.intermediate_size) == (8, 2, 4096, 14336)
    assert c.params_per_expert == 3 * 4096 * 14336
    assert c.total_params == 8 * 3 * 4096 * 14336 + 8 * 4096
    assert c.active_params == 2 * 3 * 4096 * 14336 + 8 * 4096
    # 2 experts of a bf16 layer: ~704 MB, all 8: ~2.82 GB (../shared/README.md §3)
    assert round(2 * c.params_per_expert * 2 / 1e6) == 705
    assert round(c.weight_bytes / 1e9, 2) == 2.82
    assert c.flops_per_token() == 2 * c.active_params


def test_tiny_is_small_fp32():
    assert TINY.dtype == torch.float32 and TINY.hidden_size * TINY.intermediate_size <= 2**14


@pytest.mark.parametrize(
    "field,value,exc",
    [
        ("num_experts", 0, ValueError),
        ("top_k", 0, ValueError),
        ("top_k", 9, ValueError),
        ("hidden_size", -1, ValueError),
        ("intermediate_size", 2.5, TypeError),
        ("num_experts", True, TypeError),
        ("dtype", torch.int32, TypeError),
    ],
)
def test_invalid_values_name_the_field(field, value, exc):
    with pytest.raises(exc, match=field):
        MIXTRAL_8X7B.replace(**{field: value})


def test_replace_keeps_other_fields():
    c = MIXTRAL_8X7B.replace(intermediate_size=14336 // 4)
    assert c.intermediate_size == 3584 and c.hidden_size == 4096 and c.dtype == torch.bfloat16
    assert isinstance(c, MoEConfig)


# ----------------------------------------------------------------------------------------------------
# QuantConfig: FP8 experts
# ----------------------------------------------------------------------------------------------------
def test_quant_config_defaults_and_forms():
    q = QuantConfig()
    assert (q.quant_method, q.activation_scheme, q.weight_block_size, q.static, q.block_shape) == (
        "fp8", "dynamic", None, False, None)
    assert QuantConfig(activation_scheme="static").static
    b = QuantConfig(weight_block_size=[128, 128])  # a list, as JSON has it
    assert b.weight_block_size == (128, 128) and b.block_shape == [128, 128]
    assert b == QuantConfig(weight_block_size=(128, 128)) and hash(b) == hash(QuantConfig(weight_block_size=(128, 128)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(quant_method="int8"), "quant_method must be 'fp8'"),
    (dict(activation_scheme="Static"), "activation_scheme must be 'dynamic' or 'static'"),
    (dict(weight_block_size=[128]), r"weight_block_size must be None or \[bn, bk\]"),
    (dict(weight_block_size=[96, 128]), "powers of two"),
    (dict(weight_block_size=[0, 128]), "weight_block_size"),
    (dict(weight_block_size=[True, 128]), "weight_block_size"),
    (dict(weight_block_size="128x128"), "weight_block_size"),
    (dict(weight_block_size=[128, 128], activation_scheme="static"), "'static' does not go with weight_block_size"),
])
def test_quant_config_refuses_bad_values_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)

"""moe_lib.kernels.configs: vLLM's table names, strict tables, lookup order and the nearest row."""

import json

import pytest

from moe_lib.kernels import configs
from moe_lib.kernels.configs import (
    CONFIG_DIR,
    config_file_name,
    default_config,
    get_config,
    load_config_table,
    nearest_row,
    read_config_table,
    split_config,
)

ROW = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
       "num_stages": 4}


def test_file_names_are_vllms():
    assert config_file_name(8, 14336, "NVIDIA H200") == "E=8,N=14336,device_name=NVIDIA_H200.json"
    assert config_file_name(8, 1792, "NVIDIA H200", "fp8_w8a8") == \
        "E=8,N=1792,device_name=NVIDIA_H200,dtype=fp8_w8a8.json"
    assert config_file_name(8, 1792, "NVIDIA H200", "fp8_w8a8", [128, 128]) == \
        "E=8,N=1792,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json"


def test_every_shipped_table_is_valid():
    paths = sorted(CONFIG_DIR.glob("*.json"))
    assert paths
    for path in paths:
        assert read_config_table(path)


def test_a_vllm_table_is_read_from_a_directory_setting(tmp_path, monkeypatch):
    # vLLM's tables hold only the six keys: "TMA" and "down" take their defaults.
    (tmp_path / config_file_name(8, 1000, "GPU X")).write_text(json.dumps({"1": ROW, "64": ROW | {"BLOCK_SIZE_M": 32}}))
    assert load_config_table(8, 1000, "GPU X") is None
    table = load_config_table(8, 1000, "GPU X", config_dir=tmp_path)
    assert table[64]["BLOCK_SIZE_M"] == 32
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tmp_path))
    assert get_config(50, 8, 1000, 4096, 2, device_name="GPU X", interpret=False)["BLOCK_SIZE_M"] == 32
    up, down = split_config(get_config(2, 8, 1000, 4096, 2, device_name="GPU X", interpret=False))
    assert "TMA" not in up and down == ROW


def test_nearest_row_is_the_nearest_ratio_and_the_smaller_m_on_a_tie():
    table = {1: {"x": 1}, 4: {"x": 4}, 8: {"x": 8}, 4096: {"x": 4096}}
    assert [nearest_row(table, m)["x"] for m in (0, 1, 2, 3, 5, 6, 7, 100, 181, 182, 10**6)] == [
        1, 1, 1, 4, 4, 8, 8, 8, 8, 4096, 4096]  # 2: 2/1 = 4/2, a tie; 181 * 181 < 8 * 4096 < 182 * 182


@pytest.mark.parametrize("row,match", [
    (ROW | {"waves_per_eu": 0}, "unknown keys"),
    ({k: v for k, v in ROW.items() if k != "num_warps"}, "lacks"),
    (ROW | {"GROUP_SIZE_M": 0}, "GROUP_SIZE_M"),
    (ROW | {"GROUP_SIZE_M": -1}, "GROUP_SIZE_M"),
    (ROW | {"num_warps": 3}, "num_warps"),
    (ROW | {"num_stages": 0}, "num_stages"),
    (ROW | {"BLOCK_SIZE_N": 24}, "BLOCK_SIZE_N"),
    (ROW | {"BLOCK_SIZE_K": 8}, "BLOCK_SIZE_K"),
    (ROW | {"BLOCK_SIZE_M": 16.0}, "BLOCK_SIZE_M"),
    (ROW | {"BLOCK_SIZE_M": True}, "BLOCK_SIZE_M"),
    (ROW | {"down": {"BLOCK_SIZE_M": 32}}, "unknown keys"),
    (ROW | {"down": {"TMA": True}}, "unknown keys"),
    (ROW | {"down": {"num_warps": 5}}, "num_warps"),
])
def test_a_bad_row_names_the_file_and_m(row, match, tmp_path):
    path = tmp_path / "E=8,N=64,device_name=G.json"
    path.write_text(json.dumps({"1": ROW, "32": row}))
    with pytest.raises(ValueError, match=rf"E=8,N=64,device_name=G\.json: config for M=32: .*{match}"):
        read_config_table(path)


@pytest.mark.parametrize("text,match", [("[]", "JSON object"), ("{", "not valid JSON"), ('{"x": {}}', "key 'x'"),
                                        ('{"0": {}}', "M must be")])
def test_a_bad_file_is_refused(text, match, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_config_table(path)


def test_tma_must_be_a_bool():
    with pytest.raises(TypeError, match="TMA"):
        split_config(ROW | {"TMA": 1})
    up, down = split_config(ROW | {"TMA": True})
    assert up["TMA"] and "TMA" not in down


def test_default_config_is_valid_for_all_sizes():
    for interpret in (False, True):
        for m in (1, 16, 33, 97, 513, 4096, 100000):
            split_config(default_config(m, 8, 14336, 4096, 2, interpret=interpret))

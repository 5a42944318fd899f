"""moe_lib.parallel.golden: the whole tiny Mixtral with every MoE block a TP=2 MixtralMoE shard on real processes
(gloo on the CPU, NCCL on two GPUs), against its golden logits and greedy tokens; and its command line."""

from __future__ import annotations

import json

import pytest
import torch

from moe_lib import runtime
from moe_lib.parallel import golden


@pytest.mark.skipif(runtime.HAS_CUDA and torch.cuda.device_count() < 2, reason="NCCL TP=2 needs two GPUs")
def test_whole_tiny_model_tensor_parallel_on_two_processes():
    """Issue 6 end to end: every MoE block a TP=2 shard on real processes, logits and greedy tokens as HF's."""
    result = golden.check_tiny_model_tp(2)
    assert result["passed"], result
    assert [r["rank"] for r in result["ranks"]] == [0, 1]
    assert result["backend"] == ("nccl" if runtime.HAS_CUDA else "gloo")


@pytest.mark.parametrize("passed", [True, False])
def test_cli_prints_writes_and_exits_with_the_verdict(passed, tmp_path, capsys, monkeypatch):
    """The command line's own part (the run itself is the test above): arguments, JSON out, exit status."""
    calls = []

    def fake_check(tp_size, backend=None, checkpoint_dir=None):
        calls.append((tp_size, backend))
        return {"tp": tp_size, "backend": backend, "device": "cpu",
                "ranks": [{"rank": 0, "logits_rel_err": 0.0, "greedy_equal": passed}], "passed": passed}

    monkeypatch.setattr(golden, "check_tiny_model_tp", fake_check)
    out = tmp_path / "result.json"
    assert golden.main(["--tp", "4", "--backend", "gloo", "--out", str(out)]) == (0 if passed else 1)
    printed = capsys.readouterr().out
    assert calls == [(4, "gloo")]
    assert json.loads(printed) == json.loads(out.read_text()) == fake_check(4, "gloo")
    assert out.read_text() == printed  # the same text: indent=1 and a final newline
    golden.main([])
    assert calls[-1] == (2, None)  # defaults: TP=2, the backend chosen by the device

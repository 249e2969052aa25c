"""benchmarks/train_throughput.py's MoE A/B at a tiny scale on CPU: temper's trainer with Hugging Face's
grouped-GEMM experts, then with HF's loop over the experts, on the same batches in one process; both train
the same (same losses and entropies), and the report holds both rows, the ratio and MFU over active params."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moe_benchmark_runs_grouped_gemm_then_the_expert_loop(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TEMPER_EXPERTS", raising=False)
    bench = load_benchmark()
    out = tmp_path / "moe.json"
    argv = ["--model-shape", "tiny", "--arch", "qwen3_moe", "--model-dir", str(tmp_path / "model"), "--samples", "8",
            "--prompt-len", "4", "8", "--response-len", "4", "8", "--max-tokens-per-gpu", "128", "--rollouts", "1",
            "--skip-hf", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    assert "TEMPER_EXPERTS" not in os.environ  # the later tests' MoE models load with grouped GEMMs again
    printed = capsys.readouterr().out
    assert "experts grouped_mm" in printed and "experts eager" in printed
    assert "MoE experts, grouped_mm / eager (HF's loop):" in printed
    results = json.loads(out.read_text())
    grouped, loop = results["temper"], results["temper_eager"]
    assert grouped["name"] == "temper grouped_mm" and loop["name"] == "temper eager"
    assert grouped["tokens"] == loop["tokens"] > 0
    for key in ("loss", "entropy"):
        assert grouped["per_rollout"][0][key] == pytest.approx(loop["per_rollout"][0][key], rel=1e-4, abs=1e-6)


def test_moe_flops_count_the_active_experts():
    """A Qwen3-MoE layer's per-token weights: attention, the router, top_k experts (not all of them)."""
    from transformers import AutoConfig

    bench = load_benchmark()
    config = AutoConfig.for_model("qwen3_moe", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, num_hidden_layers=3, num_experts=8, num_experts_per_tok=2,
                                  moe_intermediate_size=32, intermediate_size=96, mlp_only_layers=[1])  # fmt: skip
    attention = 64 * 16 * (2 * 4 + 2 * 2)
    moe, dense = 8 * 64 + 2 * 3 * 64 * 32, 3 * 64 * 96
    assert bench.active_layer_params(config) == 3 * attention + 2 * moe + dense

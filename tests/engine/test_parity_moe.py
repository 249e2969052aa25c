"""`temper.testing.parity.compare_with_hf` on mixtures of experts in bf16, on CPU: HF teacher-forced with the
engine's own routing (R3) meets the bf16 criteria, HF routing freely is reported beside it; a dense model gets
no routing figures. The GPU parity tests and the MoE benchmark's parity parts use the same comparison."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine
from temper.testing.parity import compare_with_hf, passes_bf16


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3", "glm4_moe", "qwen3"])
def test_bf16_engine_against_hf_routed_as_the_engine_routed(arch, model_dir, hf):
    path = model_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    engine = LLMEngine(EngineArgs(model=str(path), device="cpu", dtype="bfloat16", kernels="torch",
                                  num_kv_blocks=64, max_model_len=128))
    report = compare_with_hf(model, engine, hf.prompts(6, 4, 40, seed=21), 12)
    assert passes_bf16(report), report
    if arch == "qwen3":
        assert "logprob_mean_abs_diff_free" not in report
    else:
        assert 0 <= report["logprob_mean_abs_diff"] <= report["logprob_mean_abs_diff_free"] + 0.005, report

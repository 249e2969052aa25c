"""Qwen3-MoE and GLM4 over two tensor-parallel ranks on CPU (gloo): the experts' share of
moe_intermediate_size, GLM4's fused gate-up split per rank; greedy decoding as Hugging Face's, with a
prefix-cache hit, and weights that load from full tensors on every rank."""

from __future__ import annotations

import pytest
import torch

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.weights import iter_safetensors

NEW_TOKENS = 10
SHARED = list(range(100, 140))  # 40 tokens: two full blocks of 16 are cached for the second prompt
GREEDY = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)


def tp_engine(path) -> LLMEngine:
    return LLMEngine(EngineArgs(model=str(path), tensor_parallel_size=2, max_model_len=128, num_kv_blocks=48,
                                max_num_seqs=8))


def assert_matches_hf(engine, path, hf, prompts) -> list:
    outs = engine.generate(prompts, GREEDY)
    for out, prompt in zip(outs, prompts):
        assert out.output_token_ids == hf.greedy(path, prompt, NEW_TOKENS), prompt
    return outs


@pytest.mark.parametrize("arch, overrides", [("qwen3_moe", dict(mlp_only_layers=(1,))), ("glm4", {})])
def test_two_ranks_match_hf(arch, overrides, model_dir, hf):
    path, new_path = model_dir(arch, **overrides), model_dir(arch, seed=1, **overrides)
    engine = tp_engine(path)
    try:
        assert_matches_hf(engine, path, hf, hf.prompts(4, 3, 40, seed=1) + [SHARED + [1, 2, 3]])
        (out,) = assert_matches_hf(engine, path, hf, [SHARED + [7, 8]])
        assert out.cached_tokens == 32
        new = dict(iter_safetensors(new_path))
        engine.load_weights(new.items())  # full tensors from rank 0; each rank keeps its rows
        assert_matches_hf(engine, new_path, hf, hf.prompts(2, 5, 20, seed=3))
        names = (["model.layers.0.mlp.experts.3.up_proj.weight", "model.layers.0.mlp.gate.weight",
                  "model.layers.1.mlp.gate_proj.weight"] if arch == "qwen3_moe"
                 else ["model.layers.0.mlp.gate_up_proj.weight", "model.layers.1.mlp.down_proj.weight"])
        for name in names:  # read back whole: gathered over the ranks
            assert torch.equal(engine.get_weights_by_name(name), new[name]), name
    finally:
        engine.close()

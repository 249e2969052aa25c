"""``EngineArgs.load_format="dummy"`` (`temper/engine/dummy_weights.py`): an engine from a folder with only
config.json and the tokenizer, its random weights drawn as HF draws a fresh model, seeded."""

from __future__ import annotations

import pytest
import torch

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.models.layers import RMSNorm
from temper.testing.tiny_models import build_tiny_model

ENGINE = {"device": "cpu", "num_kv_blocks": 32, "max_model_len": 128, "max_num_seqs": 4}


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """A tiny GLM4 (biases, extra norms) folder without weights."""
    return build_tiny_model(tmp_path_factory.mktemp("glm4-config-only"), "glm4", weights=False)


def _weights(engine: LLMEngine) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in engine.model_runner.model.named_parameters()}


def test_dummy_engine_generates_from_a_folder_without_weights(config_only):
    assert not list(config_only.glob("*.safetensors"))
    engine = LLMEngine(EngineArgs(model=str(config_only), load_format="dummy", seed=3, **ENGINE))
    out = engine.generate([[1, 2, 3, 4], [5, 6]], SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True))
    assert [len(o.output_token_ids) for o in out] == [6, 6]
    assert all(torch.isfinite(torch.tensor(o.output_logprobs)).all() for o in out)
    model = engine.model_runner.model
    weights = _weights(engine)
    assert all(torch.isfinite(w).all() for w in weights.values())
    norms = [m.weight for m in model.modules() if isinstance(m, RMSNorm)]
    assert norms and all((w == 1).all() for w in norms)
    assert all((w == 0).all() for name, w in weights.items() if name.endswith(".bias"))
    embed = weights["model.embed_tokens.weight"]
    assert abs(embed.std().item() - 0.02) < 0.002 and abs(embed.mean().item()) < 0.002  # HF's initializer_range

    same = _weights(LLMEngine(EngineArgs(model=str(config_only), load_format="dummy", seed=3, **ENGINE)))
    other = _weights(LLMEngine(EngineArgs(model=str(config_only), load_format="dummy", seed=4, **ENGINE)))
    assert all(torch.equal(weights[n], same[n]) for n in weights)
    assert not torch.equal(weights["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_dummy_moe_engine_generates(tmp_path):
    path = build_tiny_model(tmp_path, "qwen3_moe", weights=False)
    engine = LLMEngine(EngineArgs(model=str(path), load_format="dummy", **ENGINE))
    experts = engine.model_runner.model.model.layers[0].mlp.experts.gate_up_proj.weight
    assert torch.isfinite(experts).all() and experts.std() > 0.01
    out = engine.generate([[7, 8, 9]], SamplingParams(temperature=1.0, max_new_tokens=4, ignore_eos=True))
    assert len(out[0].output_token_ids) == 4


def test_load_format_is_checked(config_only):
    with pytest.raises(ValueError, match=r"load_format must be one of \('auto', 'dummy'\).*got 'pt'"):
        EngineArgs(model=str(config_only), load_format="pt")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors files"):  # auto needs the checkpoint's weights
        LLMEngine(EngineArgs(model=str(config_only), **ENGINE))

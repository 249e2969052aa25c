"""Weight loading by HF name: coverage, fused shards, tied head, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from temper.engine import EngineArgs, LLMEngine
from temper.engine.weights import iter_safetensors


@pytest.fixture(scope="module")
def engine(model_dir):
    return LLMEngine(EngineArgs(model=str(model_dir("qwen2")), num_kv_blocks=16, max_model_len=128))


def test_every_checkpoint_tensor_round_trips_by_name(engine, model_dir):
    state = load_file(model_dir("qwen2") / "model.safetensors")
    assert set(engine.model_runner.weight_map.hf_names()) == set(state) - {"lm_head.weight"}
    for name, tensor in state.items():
        assert torch.equal(engine.get_weights_by_name(name), tensor), name


def test_tied_lm_head_is_the_embedding(engine):
    assert torch.equal(engine.get_weights_by_name("lm_head.weight"),
                       engine.get_weights_by_name("model.embed_tokens.weight"))


def test_load_weights_copies_into_fused_shards_from_any_dtype(engine):
    name = "model.layers.1.self_attn.k_proj.weight"
    old = engine.get_weights_by_name(name)
    new = torch.randn_like(old).to(torch.bfloat16)
    q_before = engine.get_weights_by_name("model.layers.1.self_attn.q_proj.weight")
    engine.load_weights([(name, new)])
    assert torch.equal(engine.get_weights_by_name(name), new.float())
    assert torch.equal(engine.get_weights_by_name("model.layers.1.self_attn.q_proj.weight"), q_before)
    engine.load_weights([(name, old)])


def test_get_returns_a_copy(engine):
    name = "model.norm.weight"
    w = engine.get_weights_by_name(name)
    w.add_(1)
    assert not torch.equal(engine.get_weights_by_name(name), w)


def test_unknown_name_and_wrong_shape_are_named(engine):
    with pytest.raises(ValueError, match="model.layers.9.mlp.up_proj.weight"):
        engine.load_weights([("model.layers.9.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="'model.layers.0.mlp.up_proj.weight'.*shape"):
        engine.load_weights([("model.layers.0.mlp.up_proj.weight", torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="no_such"):
        engine.get_weights_by_name("model.no_such.weight")


def test_rotary_inv_freq_buffers_are_ignored(engine):
    engine.load_weights([("model.layers.0.self_attn.rotary_emb.inv_freq", torch.zeros(16))])


def test_missing_safetensors_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        list(iter_safetensors(tmp_path))


def test_stacked_experts_load_update_and_read_by_their_checkpoint_names(model_dir):
    """Qwen3-MoE's experts are stacked [E, ...] in the engine; each is still loaded, updated and read
    by its own checkpoint name, and an update touches that expert's rows only."""
    path = model_dir("qwen3_moe")
    engine = LLMEngine(EngineArgs(model=str(path), num_kv_blocks=16, max_model_len=128))
    state = load_file(path / "model.safetensors")
    weight_map = engine.model_runner.weight_map
    assert set(weight_map.hf_names()) == set(state) - {"lm_head.weight"}
    assert "model.layers.0.mlp.experts.gate_up_proj.weight" in weight_map.params
    for name, tensor in state.items():
        assert torch.equal(engine.get_weights_by_name(name), tensor), name
    name = "model.layers.1.mlp.experts.5.up_proj.weight"
    new = torch.randn_like(state[name])
    engine.load_weights([(name, new)])
    assert torch.equal(engine.get_weights_by_name(name), new)
    for other in ("model.layers.1.mlp.experts.5.gate_proj.weight", "model.layers.1.mlp.experts.4.up_proj.weight",
                  "model.layers.1.mlp.experts.6.up_proj.weight", "model.layers.0.mlp.experts.5.up_proj.weight"):
        assert torch.equal(engine.get_weights_by_name(other), state[other]), other
    num_experts = sum(n.startswith("model.layers.0.mlp.experts.") and n.endswith(".down_proj.weight") for n in state)
    with pytest.raises(ValueError, match=f"model.layers.0.mlp.experts.{num_experts}.down_proj.weight"):
        engine.load_weights([(f"model.layers.0.mlp.experts.{num_experts}.down_proj.weight", torch.zeros(1))])


def test_batched_copies_equal_one_by_one_loading_in_order(engine, model_dir):
    """`WeightMap.load` batches plain same-dtype copies into one foreach call: the result equals loading the
    tensors one by one through their loaders, with other-dtype tensors (the loaders' path) interleaved and a
    name given twice in one call (the later tensor wins)."""
    state = load_file(model_dir("qwen2") / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    new = {name: torch.randn(t.shape, generator=generator) for name, t in state.items() if name != "lm_head.weight"}
    fused = "model.layers.0.self_attn.v_proj.weight"
    twice = "model.layers.1.mlp.up_proj.weight"
    pairs = [(name, t.to(torch.bfloat16) if name == fused else t) for name, t in new.items()]
    pairs.append((twice, torch.full_like(new[twice], 3.0)))
    weight_map = engine.model_runner.weight_map
    try:
        assert weight_map.load(pairs) == set(new)
        for name, tensor in new.items():
            expected = {fused: tensor.to(torch.bfloat16).float(), twice: torch.full_like(tensor, 3.0)}.get(name, tensor)
            assert torch.equal(engine.get_weights_by_name(name), expected), name
        with pytest.raises(ValueError, match=r"weight 'model.layers.0.mlp.down_proj.weight': expected shape"):
            weight_map.load([("model.layers.0.mlp.down_proj.weight", torch.zeros(3, 5))])
    finally:
        engine.load_weights(state.items())

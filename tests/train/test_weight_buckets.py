"""Weight export buckets: bounded sizes, Hugging Face names, the model's exact tensors."""

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_cfg

from temper.testing import tiny_model_dir
from temper.train import Actor


@pytest.mark.parametrize("tied", [True, False])
def test_buckets_hold_hf_names_and_the_models_tensors_within_the_size_bound(tied):
    path = tiny_model_dir("qwen3", tie_word_embeddings=tied)
    actor = Actor(make_cfg(path, "--recompute-activations"))  # wrappers must not leak into names
    on_disk = load_file(path / "model.safetensors")
    embedding_bytes = on_disk["model.embed_tokens.weight"].numel() * 4
    bucket_bytes = embedding_bytes // 4  # smaller than the embedding: it must travel alone
    buckets = list(actor.iter_weight_buckets(bucket_bytes))
    sizes = [sum(t.numel() * t.element_size() for _, t in b) for b in buckets]
    for bucket, size in zip(buckets, sizes):
        assert size <= bucket_bytes or len(bucket) == 1
    assert any(len(b) == 1 and b[0][0] == "model.embed_tokens.weight" for b in buckets)
    assert any(len(b) > 1 for b in buckets)  # small tensors share buckets
    names = [n for b in buckets for n, _ in b]
    assert len(names) == len(set(names)) and set(names) == set(on_disk)  # tied lm_head not sent twice
    for name, tensor in (pair for b in buckets for pair in b):
        assert tensor.dtype == torch.float32 and torch.equal(tensor, on_disk[name]), name
    as_bf16 = next(actor.iter_weight_buckets(bucket_bytes, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for _, t in as_bf16)
    with pytest.raises(ValueError, match="positive"):
        next(actor.iter_weight_buckets(-1))


def test_moe_experts_go_out_under_their_checkpoint_names_and_the_engine_loads_them():
    """transformers keeps Qwen3-MoE's experts fused in memory ([E, 2I, H]); the sync sends what the
    checkpoint holds (one gate/up/down per expert), which is what the engine loads by name."""
    from temper.engine import EngineArgs, LLMEngine, SamplingParams

    path = tiny_model_dir("qwen3_moe")
    actor = Actor(make_cfg(path))
    assert any(n.endswith("experts.gate_up_proj") for n, _ in actor.model.named_parameters())  # fused in memory
    on_disk = {}
    for file in path.glob("*.safetensors"):
        on_disk |= load_file(file)
    pairs = [pair for bucket in actor.iter_weight_buckets(1 << 20) for pair in bucket]
    assert sorted(n for n, _ in pairs) == sorted(on_disk)
    for name, tensor in pairs:
        assert torch.equal(tensor, on_disk[name]), name
    engine = LLMEngine(EngineArgs(model=str(path), num_kv_blocks=64, max_model_len=128))
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    before = engine.generate([[5, 6, 7]], params)[0].output_token_ids
    engine.load_weights(iter(pairs))  # the same weights, by the checkpoint's names
    assert engine.generate([[5, 6, 7]], params)[0].output_token_ids == before

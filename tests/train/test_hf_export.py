"""Hugging Face export of a trained actor, and offline conversion of a checkpoint: same weights, same logits."""

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_cfg, toy_batch
from transformers import AutoModelForCausalLM, AutoTokenizer

from temper.testing import tiny_model_dir
from temper.train import Actor, convert_checkpoint_to_hf
from temper.train.hf_export import write_safetensors


def logits(path, tokens):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens[None]).logits


@pytest.mark.parametrize("tied", [True, False])
def test_export_and_conversion_load_with_transformers_and_give_identical_logits(tmp_path, tied):
    source = tiny_model_dir("llama", tie_word_embeddings=tied)
    cfg = make_cfg(source, save=str(tmp_path / "ckpt"), save_hf=str(tmp_path / "hf_{rollout_id}"), lr=1e-2)
    actor = Actor(cfg)
    actor.train(0, toy_batch(8))
    actor.save(0)  # also writes --save-hf with {rollout_id} filled in
    trained = {n: t for b in actor.iter_weight_buckets(1 << 30) for n, t in b}
    exported = tmp_path / "hf_0"

    assert set(load_file(exported / "model.safetensors")) == set(load_file(source / "model.safetensors"))
    tokens = toy_batch(1, seed=9).tokens[0]
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    reference.load_state_dict(trained, strict=False)
    with torch.no_grad():
        want = reference(tokens[None]).logits
    assert torch.equal(logits(exported, tokens), want)
    assert not torch.equal(logits(source, tokens), want)  # training changed the model
    assert (
        AutoTokenizer.from_pretrained(exported)("hello").input_ids
        == AutoTokenizer.from_pretrained(source)("hello").input_ids
    )

    converted = convert_checkpoint_to_hf(tmp_path / "ckpt", source, tmp_path / "converted")
    assert torch.equal(logits(converted, tokens), want)
    assert (converted / "tokenizer_config.json").exists() and (converted / "generation_config.json").exists()


def test_large_exports_are_sharded_with_an_index(tmp_path):
    tensors = [(f"w{i}", torch.full((256,), float(i))) for i in range(5)]  # 1 KiB each
    write_safetensors(iter(tensors), tmp_path, max_shard_bytes=2048)
    index = (tmp_path / "model.safetensors.index.json").read_text()
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert [s.name for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    loaded = {k: v for s in shards for k, v in load_file(s).items()}
    assert all(torch.equal(loaded[n], t) for n, t in tensors)
    assert '"w4": "model-00003-of-00003.safetensors"' in index

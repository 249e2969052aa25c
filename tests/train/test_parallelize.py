"""Parallelism applied from outside: which blocks get sharded, and parameter names that stay HF names."""

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from temper.train.env import TrainEnv
from temper.train.hf_model import load_causal_lm
from temper.train.parallelize import decoder_layer_lists, hf_name, parallelize


def test_shards_every_decoder_layer_and_keeps_hf_names(qwen3_dir):
    model = load_causal_lm(qwen3_dir, torch.float32)
    names = [n for n, _ in model.named_parameters()]
    (layers,) = decoder_layer_lists(model)
    assert len(layers) == model.config.num_hidden_layers
    parallelize(model, TrainEnv.current().mesh, activation_checkpointing=True)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert all(type(layer).__name__ == "FSDPCheckpointWrapper" for layer in layers)
    assert [hf_name(n) for n, _ in model.named_parameters()] == names
    assert model.model.embed_tokens.weight is model.lm_head.weight  # tying survives sharding


def test_a_model_without_decoder_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match="no decoder layers"):
        decoder_layer_lists(nn.Sequential(nn.Linear(2, 2)))

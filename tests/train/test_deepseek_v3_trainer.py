"""The FSDP trainer on the tiny DeepSeek-V3 (Hugging Face's model: MLA, grouped routing, shared experts):
log-probs of packed rows equal a plain transformers forward, a GRPO step trains, and its weights -- sent
under the checkpoint's names -- make the engine's log-probs those of the trainer."""

import torch
from train_helpers import make_cfg, toy_batch
from transformers import AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.testing import tiny_model_dir
from temper.train import Actor


def plain_log_probs(model, tokens, response_length):
    with torch.no_grad():
        logits = model(tokens[None]).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, tokens[1:, None]).squeeze(-1)[-response_length:]


def test_trainer_log_probs_equal_a_plain_transformers_forward():
    path = tiny_model_dir("deepseek_v3")
    batch = toy_batch(6, seed=1)
    got = Actor(make_cfg(path, use_dynamic_batch_size=True, max_tokens_per_gpu=40)).compute_log_probs(batch)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for tokens, response_length, log_probs in zip(batch.tokens, batch.response_lengths, got):
        torch.testing.assert_close(log_probs, plain_log_probs(plain, tokens, response_length), rtol=0, atol=1e-5)


def test_a_trained_step_reaches_the_engine_with_the_trainers_log_probs():
    path = tiny_model_dir("deepseek_v3")
    actor = Actor(make_cfg(path, lr=1e-2))
    batch = toy_batch(8, seed=2)
    metrics = actor.train(0, batch)
    assert metrics["grad_norm"] > 0
    engine = LLMEngine(EngineArgs(model=str(path), num_kv_blocks=64, max_model_len=128))
    prompt = batch.tokens[0][:8].tolist()
    params = SamplingParams(temperature=1.0, max_new_tokens=8, ignore_eos=True, seed=5)
    before = engine.generate([prompt], params)[0]
    engine.load_weights(pair for bucket in actor.iter_weight_buckets(1 << 20) for pair in bucket)
    out = engine.generate([prompt], params)[0]
    assert out.output_logprobs != before.output_logprobs  # the update arrived
    tokens = torch.tensor(prompt + out.output_token_ids)
    batch_of_one = toy_batch(1)
    batch_of_one.tokens, batch_of_one.response_lengths = [tokens], [len(out.output_token_ids)]
    batch_of_one.loss_masks = [torch.ones(len(out.output_token_ids))]
    trainer = actor.compute_log_probs(batch_of_one)[0]
    assert (torch.tensor(out.output_logprobs) - trainer).abs().max() <= 1e-4

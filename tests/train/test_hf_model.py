"""The trainer's log-probs against a plain transformers forward, and packed against unpacked rows."""

import pytest
import torch
from train_helpers import make_cfg, toy_batch
from transformers import AutoModelForCausalLM

from temper.testing import tiny_model_dir
from temper.train import Actor
from temper.train.hf_model import load_causal_lm, policy_log_probs
from temper.train.packing import pack


def plain_log_probs(model, tokens, response_length, temperature):
    """log softmax(logits / T) of each response token, from one unpacked HF forward."""
    with torch.no_grad():
        logits = model(tokens[None]).logits[0].float() / temperature
    log_probs = torch.log_softmax(logits[:-1], -1).gather(-1, tokens[1:, None]).squeeze(-1)
    return log_probs[-response_length:]


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_trainer_log_probs_equal_a_plain_transformers_forward(arch):
    path = tiny_model_dir(arch)
    cfg = make_cfg(
        path, use_dynamic_batch_size=True, max_tokens_per_gpu=40, rollout_temperature=0.8, log_probs_chunk_size=3
    )
    batch = toy_batch(8, seed=1)
    got = Actor(cfg).compute_log_probs(batch)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for tokens, response_length, log_probs in zip(batch.tokens, batch.response_lengths, got):
        want = plain_log_probs(plain, tokens, response_length, 0.8)
        assert log_probs.dtype == torch.float32
        torch.testing.assert_close(log_probs, want, rtol=0, atol=1e-5)


def test_packed_and_unpacked_rows_give_the_same_log_probs_and_gradients(qwen3_dir):
    model = load_causal_lm(qwen3_dir, torch.float32)
    batch = toy_batch(5, seed=2)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(r, generator=g) for r in batch.response_lengths]

    def run(groups):
        model.zero_grad(set_to_none=True)
        out = {}
        for positions in groups:
            mb = pack(batch.tokens, batch.response_lengths, positions)
            log_probs, _ = policy_log_probs(model, mb, temperature=0.9, chunk_size=4)
            pieces = mb.split(log_probs)
            sum(w.dot(p) for w, p in zip((weights[i] for i in positions), pieces)).backward()
            out.update(zip(positions, (p.detach() for p in pieces)))
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    packed_lp, packed_grads = run([[0, 1, 2, 3, 4]])
    single_lp, single_grads = run([[i] for i in range(5)])
    for i in range(5):
        torch.testing.assert_close(packed_lp[i], single_lp[i], rtol=0, atol=1e-5)
    for name in single_grads:
        torch.testing.assert_close(packed_grads[name], single_grads[name], rtol=0, atol=1e-5, msg=name)
    # the packed row really is one row: attention across its boundaries would change these numbers
    leaky = pack(batch.tokens, batch.response_lengths, [0, 1])
    leaky.position_ids = torch.arange(leaky.num_tokens)[None]  # one long sequence: crosses boundaries
    leaky.cu_seqlens, leaky.max_seqlen = torch.tensor([0, leaky.num_tokens], dtype=torch.int32), leaky.num_tokens
    with torch.no_grad():
        crossed = leaky.split(policy_log_probs(model, leaky, temperature=0.9)[0])[1]
    assert (crossed - packed_lp[1]).abs().max() > 1e-3

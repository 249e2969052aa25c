"""Rollout routing replay in the trainer (--use-rollout-routing-replay, R3; temper/train/moe_routing.py's
`use_routing`, packing's per-token routing): on the tiny Qwen3-MoE in fp32 on CPU, with samples of temper's
engine, every token routes in the old-log-prob and training forwards as the engine routed it."""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_cfg, toy_batch

from temper.testing import tiny_model_dir
from temper.train import Actor
from temper.types import RolloutBatch, Sample


@pytest.fixture(scope="module")
def moe_dir():
    return tiny_model_dir("qwen3_moe")


def engine_batch(path, num_samples: int = 8) -> RolloutBatch:
    """Samples of temper's engine (fp32, CPU) with its log-probs and routed experts, as a rollout batch."""
    from temper.engine import EngineArgs, LLMEngine, SamplingParams

    engine = LLMEngine(EngineArgs(model=str(path), num_kv_blocks=64, max_model_len=128))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 500, (int(n),), generator=g).tolist() for n in torch.randint(4, 12, (num_samples,), generator=g)]
    ids = [engine.add_request(p, SamplingParams(temperature=1.0, max_new_tokens=6, ignore_eos=True, seed=i),
                              return_routed_experts=True) for i, p in enumerate(prompts)]
    final = {}
    while engine.has_unfinished_requests():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    samples = []
    for i, (prompt, rid) in enumerate(zip(prompts, ids)):
        out = final[rid]
        samples.append(Sample(tokens=prompt + out.output_token_ids, response_length=len(out.output_token_ids),
                              rollout_log_probs=out.output_logprobs, rollout_routed_experts=out.routed_experts,
                              group_index=i // 2, index=i, reward=float(i % 3)))
    rewards = [s.reward for s in samples]
    return RolloutBatch.from_samples(samples, rewards, rewards)


def test_rollout_routing_replay_routes_every_token_as_the_engine(moe_dir, monkeypatch):
    """R3: the engine's routed experts reach the trainer's routers for every token and MoE layer, in the
    old-log-prob pass and in training (the routers perturbed first, so that their own choice differs);
    each sample's last token, which the engine never computed, routes freely. The train/rollout log-prob
    gap is reported."""
    from temper.train import moe_routing

    batch = engine_batch(moe_dir)
    assert all(r.shape[0] == len(t) - 1 for r, t in zip(batch.rollout_routed_experts, batch.tokens))
    calls = []
    original = moe_routing.RouterHooks._hook

    def spy(self, name, module, args, output):
        logits, scores, indices = original(self, name, module, args, output)
        own = torch.topk(torch.softmax(logits.detach().float(), -1), indices.shape[-1]).indices
        calls.append((name, self.mode, self.given, indices.detach(), own, torch.is_grad_enabled()))
        return logits, scores, indices

    monkeypatch.setattr(moe_routing.RouterHooks, "_hook", spy)
    actor = Actor(make_cfg(moe_dir, use_rollout_routing_replay=True, num_steps_per_rollout=2, micro_batch_size=2))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, router in actor.routing.routers:  # one rank: the DTensor's local part is the whole weight
            router.weight.to_local().add_(0.5 * torch.randn(router.weight.shape, generator=g))
    metrics = actor.train(0, batch)
    assert {grad for *_, grad in calls} == {False, True}  # old log-probs, then training
    differs = 0
    for name, mode, given, indices, own, _ in calls:
        layer = given[:, moe_routing.router_layer(name)]
        replayed = layer[:, 0] >= 0
        assert mode == "given" and torch.equal(indices[replayed], layer[replayed].to(indices.dtype))
        assert torch.equal(indices[~replayed], own[~replayed])
        assert (~replayed).sum() == given.shape[0] - replayed.sum() > 0  # the samples' last tokens
        differs += int((indices.sort(-1).values != own.sort(-1).values).any(-1).sum())
    assert differs > 0  # the perturbed routers would have routed some tokens elsewhere
    assert "train_rollout_logprob_abs_diff" in metrics


def test_rollout_routing_replay_needs_the_engines_routing(moe_dir):
    actor = Actor(make_cfg(moe_dir, use_rollout_routing_replay=True))
    with pytest.raises(ValueError, match="--use-rollout-routing-replay: the rollout batch carries no routed experts"):
        actor.train(0, toy_batch(8))

"""MoE in the trainer: grouped-GEMM experts, routing replay (--use-routing-replay), the routers' losses
(--moe-aux-loss-coeff, --moe-z-loss-coeff, --moe-router-load-balancing-type seq_aux_loss) and fp32 routing
(--moe-router-dtype fp32), on the tiny Qwen3-MoE; DeepSeek-V3's sigmoid router's replayed scores. Rollout
routing replay: test_rollout_routing_replay.py."""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_cfg, toy_batch
from transformers import AutoModelForCausalLM

from temper.config import ConfigError
from temper.testing import build_tiny_model, tiny_model_dir
from temper.train import Actor
from temper.train.hf_model import load_causal_lm
from temper.train.moe_routing import (
    RouterHooks,
    balance_probs,
    find_routers,
    load_balancing_loss,
    sequence_load_balancing_loss,
    z_loss,
)


@pytest.fixture(scope="module")
def moe_dir():
    return tiny_model_dir("qwen3_moe")


def test_trainer_runs_the_experts_as_grouped_gemms_with_hf_logits(moe_dir):
    reference = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = load_causal_lm(moe_dir, torch.float32, "sdpa")
    assert model.config._experts_implementation == "grouped_mm"
    ids = torch.randint(0, 200, (2, 19), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_replay_routes_as_recorded_with_scores_from_the_current_logits(moe_dir):
    """Recorded in one forward, the routing is replayed after the routers changed: the experts are the
    recorded ones, their scores the new softmax at those experts (renormalized); free routing differs."""
    model = load_causal_lm(moe_dir, torch.float32, "sdpa")
    hooks = RouterHooks(model)
    ids = torch.randint(0, 200, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hooks.record("mb")
        model(ids)
        recorded = {name: hooks.recorded[("mb", name)].clone() for name, _ in hooks.routers}
        for _, router in hooks.routers:
            router.weight.add_(torch.randn_like(router.weight, generator=torch.Generator().manual_seed(2)))
        seen = {}

        def spy(name, module, args, output):
            seen[name] = output

        spies = [r.register_forward_hook(lambda m, a, o, n=n: spy(n, m, a, o)) for n, r in hooks.routers]
        hooks.replay("mb")
        model(ids)
        replayed = dict(seen)
        hooks.route_freely()
        model(ids)
        free = dict(seen)
        for s in spies:
            s.remove()
    assert len(recorded) == len(find_routers(model)) > 0
    for name, router in hooks.routers:
        logits, scores, indices = replayed[name]
        assert torch.equal(indices, recorded[name])
        probs = torch.softmax(logits, dim=-1).gather(-1, indices)
        torch.testing.assert_close(scores, probs / probs.sum(-1, keepdim=True) if router.norm_topk_prob else probs)
    assert any(not torch.equal(free[n][2], recorded[n]) for n in recorded)  # the change does move tokens


def test_router_losses_match_their_formulas():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    indices = torch.tensor([[0, 3], [1, 0], [2, 1]])
    probs = torch.softmax(logits, -1)
    share = torch.tensor([2, 2, 1, 1]) / 6
    assert load_balancing_loss(probs, indices).item() == pytest.approx(4 * (share * probs.mean(0)).sum().item())
    assert z_loss(logits).item() == pytest.approx(torch.logsumexp(logits, -1).square().mean().item())


def _router_grads(actor):
    return {n: p.grad.full_tensor().clone() for n, p in actor.model.named_parameters() if "gate.weight" in n}


def test_actor_replays_the_old_log_prob_routing_and_adds_router_losses(moe_dir, monkeypatch):
    """Two optimizer steps per rollout: the old-log-prob pass records every micro-batch's routing, training
    replays it (every router call of the training forwards is a replay), and the record is dropped after
    the rollout. With --moe-aux-loss-coeff / --moe-z-loss-coeff the losses show in the metrics."""
    from temper.train import moe_routing

    modes = []
    original = moe_routing.RouterHooks._hook

    def spy(self, name, module, args, output):
        if torch.is_grad_enabled():
            modes.append(self.mode)
        return original(self, name, module, args, output)

    monkeypatch.setattr(moe_routing.RouterHooks, "_hook", spy)
    cfg = make_cfg(moe_dir, num_steps_per_rollout=2, use_routing_replay=True, moe_aux_loss_coeff=0.01,
                   moe_z_loss_coeff=0.001, micro_batch_size=2)  # fmt: skip
    actor = Actor(cfg)
    metrics = actor.train(0, toy_batch(8))
    assert modes and set(modes) == {"replay"}
    assert actor.routing.recorded == {}
    assert metrics["moe_aux_loss"] > 0 and metrics["moe_z_loss"] > 0
    assert actor.step_metrics[0]["ppo_kl"] == 0.0


def test_the_aux_loss_reaches_the_routers(moe_dir, monkeypatch):
    from temper.train.trainable import TrainableModel

    grads = {}
    for coeff in (0.0, 1.0):
        captured = []
        original = TrainableModel._clip_grad_norm
        monkeypatch.setattr(TrainableModel, "_clip_grad_norm",
                            lambda self, c=captured, o=original: c.append(_router_grads_of(self)) or o(self))  # fmt: skip
        Actor(make_cfg(moe_dir, moe_aux_loss_coeff=coeff or None, clip_grad=0)).train(0, toy_batch(8))
        grads[coeff] = captured[0]
    assert grads[0.0].keys() == grads[1.0].keys() and grads[0.0]
    assert any(not torch.allclose(grads[0.0][n], grads[1.0][n]) for n in grads[0.0])


def _router_grads_of(trainable):
    return {n: p.grad.full_tensor().clone() for n, p in trainable.model.named_parameters() if "gate.weight" in n}


def test_routing_flags_are_checked(qwen3_dir):
    with pytest.raises(ConfigError, match="--moe-aux-loss-coeff"):
        make_cfg(qwen3_dir, moe_aux_loss_coeff=-1)
    with pytest.raises(ValueError, match="--use-routing-replay: Qwen3ForCausalLM has no top-k router"):
        Actor(make_cfg(qwen3_dir, use_routing_replay=True))


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_replayed_scores_of_deepseeks_sigmoid_router_are_its_own(norm_topk_prob):
    """Replaying a DeepSeek-V3 router's own choice gives its own weights: sigmoid scores at the experts,
    renormalized when norm_topk_prob, times routed_scaling_factor (the correction bias only chooses)."""
    from transformers import AutoConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    from temper.train.moe_routing import replayed_scores

    config = AutoConfig.for_model("deepseek_v3", hidden_size=32, n_routed_experts=8, num_experts_per_tok=3, n_group=2,
                                  topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=norm_topk_prob)
    router = DeepseekV3TopkRouter(config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g))
        router.e_score_correction_bias.copy_(torch.randn(8, generator=g))
        logits, weights, indices = router(torch.randn(9, 32, generator=g))
    assert find_routers(torch.nn.ModuleDict({"gate": router})) == [("gate", router)]
    torch.testing.assert_close(replayed_scores(router, logits, indices), weights)


def _per_sequence_balance(probs, indices, bounds):
    """DeepSeek-V3's sequence-wise balance loss written out: per sequence, E x sum_e f_e P_e with f_e expert e's
    share of the sequence's top-k slots and P_e its mean probability over the sequence; the mean over sequences."""
    experts, k, losses = probs.shape[1], indices.shape[1], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        total = 0.0
        for e in range(experts):
            f = (indices[start:end] == e).sum().item() / (length * k)
            p = probs[start:end, e].mean().item()
            total += f * p
        losses.append(experts * total)
    return sum(losses) / len(losses)


def test_seq_aux_loss_is_the_balance_loss_within_each_sequence():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(20, 6, generator=g) * 2
    indices = logits.topk(2, dim=-1).indices
    bounds = [0, 3, 11, 20]
    probs = torch.softmax(logits, -1)
    got = sequence_load_balancing_loss(probs, indices, torch.tensor(bounds, dtype=torch.int32))
    assert got.item() == pytest.approx(_per_sequence_balance(probs, indices, bounds), rel=1e-6)
    assert got.item() != pytest.approx(load_balancing_loss(probs, indices).item(), rel=1e-3)  # not the row's loss
    one = sequence_load_balancing_loss(probs, indices, torch.tensor([0, 20], dtype=torch.int32))
    assert one.item() == pytest.approx(load_balancing_loss(probs, indices).item(), rel=1e-6)


def test_a_sigmoid_routers_balance_probabilities_are_its_normalised_scores():
    """Megatron's (and DeepSeek-V3's) P for a sigmoid router: sigmoid scores divided by their sum."""
    router = torch.nn.Module()
    router.e_score_correction_bias = torch.zeros(4)
    logits = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    scores = logits.sigmoid()
    torch.testing.assert_close(balance_probs(router, logits), scores / scores.sum())
    torch.testing.assert_close(balance_probs(torch.nn.Linear(1, 1), logits), torch.softmax(logits, -1))


def test_actor_adds_the_seq_aux_loss_over_each_micro_batchs_sequences(moe_dir, monkeypatch):
    """--moe-router-load-balancing-type seq_aux_loss: every router's loss is computed within the micro-batch's
    packed sequences (its cu_seqlens: one bound per sample, ending at the row's token count). With
    --moe-router-dtype fp32 the routers run the fp32 forward under FSDP."""
    from temper.train import moe_routing

    seen = []
    original = moe_routing.sequence_load_balancing_loss

    def spy(probs, indices, cu_seqlens):
        seen.append((probs.shape[0], cu_seqlens.tolist()))
        return original(probs, indices, cu_seqlens)

    monkeypatch.setattr(moe_routing, "sequence_load_balancing_loss", spy)
    cfg = make_cfg(moe_dir, moe_aux_loss_coeff=0.01, moe_router_load_balancing_type="seq_aux_loss", micro_batch_size=2,
                   moe_router_dtype="fp32")  # fmt: skip
    actor = Actor(cfg)
    assert all(r.forward.__func__ is moe_routing.fp32_softmax_router for _, r in find_routers(actor.model))
    metrics = actor.train(0, toy_batch(8))
    assert metrics["moe_aux_loss"] > 0
    assert seen and all(len(bounds) == 3 and bounds[-1] == tokens for tokens, bounds in seen)


def test_fp32_router_computes_from_bf16_inputs_in_fp32(moe_dir):
    """--moe-router-dtype fp32 on a bf16 Qwen3-MoE: each router's logits, probabilities, experts and weights are
    the fp32 computation from its bf16 input and weight; Hugging Face's own router (bf16 logits) differs."""
    model = load_causal_lm(moe_dir, torch.bfloat16, "sdpa", router_dtype="fp32")
    captured = {}
    routers = find_routers(model)
    hooks = [r.register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, (a[0], o))) for n, r in routers]
    ids = torch.randint(0, 200, (1, 41), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    for h in hooks:
        h.remove()
    assert len(captured) == len(routers) > 0
    for name, router in routers:
        hidden, (logits, weights, experts) = captured[name]
        assert hidden.dtype == torch.bfloat16 and router.weight.dtype == torch.bfloat16
        expected_logits = hidden.float() @ router.weight.float().T
        probs = torch.softmax(expected_logits, -1)
        top, top_experts = probs.topk(router.top_k, dim=-1)
        assert logits.dtype == weights.dtype == torch.float32
        torch.testing.assert_close(logits, expected_logits, rtol=1e-6, atol=1e-6)
        assert torch.equal(experts, top_experts)
        torch.testing.assert_close(weights, top / top.sum(-1, keepdim=True), rtol=1e-6, atol=1e-7)
        hf_logits, hf_weights, _ = type(router).forward(router, hidden)  # the class's own (bf16) forward
        assert hf_logits.dtype == torch.bfloat16 and not torch.equal(hf_logits.float(), logits)
        assert (hf_weights.float() - weights).abs().max() > 1e-4  # bf16 rounding of the weights


def test_replayed_scores_of_mixtrals_router_are_its_own():
    """Mixtral's router has no norm_topk_prob: it always renormalises its top k, and hands fp32 weights on."""
    from transformers import AutoConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    from temper.train.moe_routing import replayed_scores

    router = MixtralTopKRouter(AutoConfig.for_model("mixtral", hidden_size=32, num_local_experts=8,
                                                    num_experts_per_tok=2)).to(torch.bfloat16)  # fmt: skip
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g))
        logits, weights, indices = router(torch.randn(9, 32, generator=g).to(torch.bfloat16))
    assert find_routers(torch.nn.ModuleDict({"gate": router})) == [("gate", router)]
    torch.testing.assert_close(replayed_scores(router, logits, indices), weights)


def test_fp32_routing_is_refused_for_a_router_temper_does_not_know():
    from temper.train.moe_routing import route_in_fp32

    class MixtralTopKRouter(torch.nn.Module):
        top_k = 2

    with pytest.raises(ValueError, match="router gate is a MixtralTopKRouter, which temper cannot make"):
        route_in_fp32(torch.nn.ModuleDict({"gate": MixtralTopKRouter()}))


def test_deepseek_v3_trains_with_the_seq_aux_loss():
    """DeepSeek-V3's own setting (a sigmoid router, seq_aux_loss): the loss uses the normalised sigmoid scores and
    reaches the metrics."""
    cfg = make_cfg(tiny_model_dir("deepseek_v3"), moe_aux_loss_coeff=1e-3, moe_router_load_balancing_type="seq_aux_loss")
    metrics = Actor(cfg).train(0, toy_batch(4))
    assert metrics["moe_aux_loss"] > 0


def test_glm45_trains_with_routing_replay_and_the_seq_aux_loss(tmp_path):
    """GLM-4.5 (Glm4MoeForCausalLM, the factory's glm4_moe): its sigmoid router with an expert bias is found,
    replayed (the first step's ppo_kl is 0) and balanced per sequence."""
    build_tiny_model(tmp_path, "glm4_moe", hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                     head_dim=32, moe_intermediate_size=32, n_group=2, topk_group=1, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_()
    model.save_pretrained(tmp_path)
    cfg = make_cfg(tmp_path, num_steps_per_rollout=2, use_routing_replay=True, moe_aux_loss_coeff=0.01,
                   moe_router_load_balancing_type="seq_aux_loss", moe_router_dtype="fp32")  # fmt: skip
    actor = Actor(cfg)
    assert [type(r).__name__ for _, r in actor.routing.routers] == ["Glm4MoeTopkRouter"]
    metrics = actor.train(0, toy_batch(8))
    assert metrics["moe_aux_loss"] > 0 and actor.step_metrics[0]["ppo_kl"] == 0.0


def test_the_critic_loads_an_moe_backbone_as_the_actor_does(moe_dir):
    """PPO's value model on an MoE checkpoint: grouped experts, and fp32 routers under --moe-router-dtype fp32."""
    from temper.train import Critic, moe_routing

    critic = Critic(make_cfg(moe_dir, moe_router_dtype="fp32"))
    routers = find_routers(critic.model)
    assert routers and all(r.forward.__func__ is moe_routing.fp32_softmax_router for _, r in routers)
    assert critic.model.backbone.config._experts_implementation == "grouped_mm"
    plain = Critic(make_cfg(moe_dir))
    assert all(r.forward.__func__ is not moe_routing.fp32_softmax_router for _, r in find_routers(plain.model))

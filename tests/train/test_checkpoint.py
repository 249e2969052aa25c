"""Resumable checkpoints: save → load → continue is bitwise the uninterrupted run; --no-save-optim; layout."""

import pytest
import torch
from train_helpers import computed, make_cfg, params_of, toy_batch

from temper.train import Actor, Critic
from temper.train.checkpoint import TRACKER_FILE, latest_iteration, resolve_checkpoint

FLAGS = dict(
    num_steps_per_rollout=2,
    micro_batch_size=4,
    use_kl_loss=True,
    kl_loss_coef=0.1,
    ref_update_interval=2,
    lr_warmup_iters=2,
    lr_decay_style="cosine",
    min_lr=1e-4,
    num_rollout=4,
)


def batches():
    return [toy_batch(8, seed=10 + r) for r in range(4)]


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(qwen3_dir, tmp_path):
    """Rollouts 0-3 in one go vs 0-1, save, a fresh actor loading, 2-3: same losses and parameters,
    bit for bit (CPU, fp32), including the LR schedule, AdamW state and the reference model, which
    --ref-update-interval 2 refreshes after rollout 1."""
    uninterrupted = Actor(make_cfg(qwen3_dir, **FLAGS))
    want = [uninterrupted.train(r, b) for r, b in enumerate(batches())]

    first = Actor(make_cfg(qwen3_dir, save=str(tmp_path), **FLAGS))
    got = [first.train(r, b) for r, b in enumerate(batches()[:2])]
    first.save(1, extra={"data_source": {"offset": 16}})
    del first
    second = Actor(make_cfg(qwen3_dir, load=str(tmp_path), **FLAGS))
    resumed = second.load()
    assert resumed.rollout_id == 1 and resumed.extra == {"data_source": {"offset": 16}}
    got += [second.train(r, b) for r, b in enumerate(batches()) if r >= 2]

    assert [computed(m) for m in got] == [computed(m) for m in want]  # every computed metric, exactly
    want_params, got_params = params_of(uninterrupted.model), params_of(second.model)
    assert all(torch.equal(want_params[n], got_params[n]) for n in want_params)
    want_ref, got_ref = params_of(uninterrupted.reference.model), params_of(second.reference.model)
    assert all(torch.equal(want_ref[n], got_ref[n]) for n in want_ref)


def test_checkpoint_layout_and_no_save_optim(qwen3_dir, tmp_path):
    actor = Actor(make_cfg(qwen3_dir, "--no-save-optim", save=str(tmp_path)))
    actor.train(0, toy_batch(8))
    path = actor.save(0)
    assert (tmp_path / TRACKER_FILE).read_text().strip() == "0" and latest_iteration(tmp_path) == 0
    assert (path / "actor" / "model").is_dir() and not (path / "actor" / "optimizer").exists()
    assert resolve_checkpoint(tmp_path, "actor") == path / "actor"
    assert resolve_checkpoint(path, "actor") == path / "actor"

    fresh = Actor(make_cfg(qwen3_dir, load=str(tmp_path)))
    fresh.load()
    assert not fresh.trainable.optimizer.state  # weights and counters only
    assert fresh.trainable.global_step == 1
    saved, loaded = params_of(actor.model), params_of(fresh.model)
    assert all(torch.equal(saved[n], loaded[n]) for n in saved)


def test_load_of_an_empty_save_dir_starts_fresh(qwen3_dir, tmp_path):
    actor = Actor(make_cfg(qwen3_dir, load=str(tmp_path)))
    assert actor.load() is None
    (tmp_path / TRACKER_FILE).write_text("7\n")
    with pytest.raises(FileNotFoundError, match="names rollout 7"):
        actor.load()


def test_critic_round_trips_through_a_checkpoint(qwen3_dir, tmp_path):
    cfg = make_cfg(qwen3_dir, advantage_estimator="ppo", save=str(tmp_path), load=str(tmp_path))
    actor, critic = Actor(cfg), Critic(cfg)
    batch = toy_batch(8)
    batch.rewards = batch.raw_rewards.clone()
    critic.update(actor.prepare(0, batch, critic.compute_values(batch)))
    critic.save(0)
    actor.save(0)
    again = Critic(cfg)
    assert again.load().rollout_id == 0
    saved, loaded = params_of(critic.model), params_of(again.model)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)
    assert "value_head.weight" in saved


def test_ref_load_takes_the_actor_weights_of_a_temper_checkpoint(qwen3_dir, tmp_path):
    trained = Actor(make_cfg(qwen3_dir, save=str(tmp_path), lr=1e-2))
    trained.train(0, toy_batch(8))
    trained.save(0)
    actor = Actor(make_cfg(qwen3_dir, use_kl_loss=True, kl_loss_coef=0.1, ref_load=str(tmp_path)))
    want, ref, policy = params_of(trained.model), params_of(actor.reference.model), params_of(actor.model)
    assert all(torch.equal(want[n], ref[n]) for n in want)
    assert any(not torch.equal(want[n], policy[n]) for n in want)  # the policy starts from --hf-checkpoint

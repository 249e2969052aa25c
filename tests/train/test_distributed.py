"""Two-rank FSDP (gloo, CPU) against one rank: same losses, same updated weights, resharded checkpoints.

Tolerance: the two runs pack different micro-batches (each rank packs its own half of every step)
and sum gradients in another order, so they agree to fp32 rounding, not bit for bit: losses and
every metric within 1e-5, updated weights within 1e-5 after two rollouts of AdamW at lr 1e-4.
"""

import pytest
import torch
from train_helpers import computed, make_cfg, spawn_ranks, toy_batch

from temper.train import Actor

BUCKET_BYTES = 40_000
FLAGS = dict(
    rollout_batch_size=8,
    n_samples_per_prompt=2,
    num_steps_per_rollout=2,
    use_dynamic_batch_size=True,
    max_tokens_per_gpu=40,
    use_kl_loss=True,
    kl_loss_coef=0.1,
    kl_loss_type="low_var_kl",
    entropy_coef=0.01,
    lr=1e-4,
    lr_warmup_iters=1,
    recompute_activations=True,
)


def train_two_rollouts(hf_checkpoint: str, save_dir: str) -> dict:
    """The run both worlds do: 2 rollouts x 2 optimizer steps, then weight export and a checkpoint."""
    actor = Actor(make_cfg(hf_checkpoint, save=save_dir, **FLAGS))
    metrics = [actor.train(r, toy_batch(16, seed=r, max_len=20, with_rollout_log_probs=True)) for r in range(2)]
    step_metrics = actor.step_metrics
    buckets = list(actor.iter_weight_buckets(BUCKET_BYTES))
    actor.save(1, extra={"data_source": {"epoch": 3}})
    return {"metrics": metrics, "step_metrics": step_metrics, "buckets": buckets}


@pytest.mark.slow
def test_two_ranks_match_one_rank(qwen3_dir, tmp_path):
    two = spawn_ranks(train_two_rollouts, 2, "gloo", tmp_path, str(qwen3_dir), str(tmp_path / "ckpt2"))
    one = train_two_rollouts(str(qwen3_dir), str(tmp_path / "ckpt1"))

    for got, want in zip(two[0]["metrics"] + two[0]["step_metrics"], one["metrics"] + one["step_metrics"]):
        got, want = computed(got), computed(want)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-5), name
    assert one["step_metrics"][0]["ppo_kl"] == 0.0  # the first step is on-policy in both worlds
    assert two[0]["step_metrics"][0]["ppo_kl"] == 0.0

    # both ranks receive the same full tensors, under the same HF names as one rank, in the same buckets
    names = lambda buckets: [[n for n, _ in b] for b in buckets]
    assert names(two[0]["buckets"]) == names(two[1]["buckets"]) == names(one["buckets"])
    for bucket0, bucket1, bucket_one in zip(two[0]["buckets"], two[1]["buckets"], one["buckets"]):
        for (name, t0), (_, t1), (_, t_one) in zip(bucket0, bucket1, bucket_one):
            assert torch.equal(t0, t1), name
            torch.testing.assert_close(t0, t_one, rtol=0, atol=1e-5, msg=name)

    # the two-rank checkpoint loads into one rank (DCP reshards) with the caller's extra state
    actor = Actor(make_cfg(qwen3_dir, load=str(tmp_path / "ckpt2"), **FLAGS))
    resumed = actor.load()
    assert resumed.rollout_id == 1 and resumed.extra == {"data_source": {"epoch": 3}}
    assert actor.trainable.global_step == 4 and actor.trainable.scheduler.num_steps == 4
    loaded = {n: t for b in actor.iter_weight_buckets(BUCKET_BYTES) for n, t in b}
    for name, tensor in (pair for b in two[0]["buckets"] for pair in b):
        assert torch.equal(loaded[name], tensor), name

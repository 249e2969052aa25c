"""The train worker on CUDA (NCCL, bf16 mixed precision); skipped cleanly without a GPU.

Each test spawns its own NCCL ranks (this folder's default process group is a 1-rank gloo group).
"""

import pytest
import torch
from test_distributed import train_two_rollouts
from train_helpers import make_cfg, params_of, sample_batch, spawn_ranks, sync_weights, toy_batch
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from temper.train import Actor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def one_gpu_checks(hf_checkpoint: str, save_dir: str) -> dict:
    """Log-probs vs HF, a GRPO run that learns, offload/onload (bit-exact, memory freed), and a checkpoint
    round trip, on cuda:0."""
    device = torch.device("cuda", torch.cuda.current_device())
    cfg = make_cfg(
        hf_checkpoint,
        rollout_batch_size=8,
        n_samples_per_prompt=4,
        lr=2e-2,
        num_rollout=8,
        use_dynamic_batch_size=True,
        max_tokens_per_gpu=256,
        save=save_dir,
    )
    actor = Actor(cfg)
    out = {"param_device": next(actor.model.parameters()).device.type}
    batch = toy_batch(8, seed=1)
    plain = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).to(device)
    with torch.no_grad():
        diffs = []
        for tokens, response, got in zip(batch.tokens, batch.response_lengths, actor.compute_log_probs(batch)):
            logits = plain(tokens[None].to(device)).logits[0].float()
            want = torch.log_softmax(logits[:-1], -1).gather(-1, tokens[1:, None].to(device)).squeeze(-1)
            diffs.append((got - want[-response:].cpu()).abs().max().item())
    out["log_prob_max_diff"] = max(diffs)

    sampler = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 900, (4,), generator=g) for _ in range(8)]
    out["rewards"] = []
    for rollout_id in range(8):
        sync_weights(actor, sampler)
        rollout = sample_batch(sampler, prompts, 4, 6, seed=rollout_id)
        out["rewards"].append(rollout.raw_rewards.mean().item())
        actor.train(rollout_id, rollout)

    out |= offload_round_trip(actor, device)
    out["after_onload"] = actor.train(8, toy_batch(32, seed=2, group_size=4))

    actor.save(8)
    saved = params_of(actor.model)
    again = Actor(make_cfg(hf_checkpoint, load=save_dir, rollout_batch_size=8, n_samples_per_prompt=4))
    again.load()
    loaded = params_of(again.model)
    out["checkpoint_equal"] = all(torch.equal(saved[n], loaded[n]) for n in saved)
    return out


def offload_round_trip(actor, device) -> dict:
    """Offload and onload twice: bytes freed against the state's, values after, the pinned chunks."""
    tensors = actor.trainable._state_tensors()
    local = [(t.to_local() if isinstance(t, DTensor) else t).detach() for t in tensors]
    values = [t.cpu().clone() for t in local]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in local if t.is_cuda}
    before = torch.cuda.memory_allocated(device)
    actor.offload()
    out = {"offload_freed_bytes": before - torch.cuda.memory_allocated(device), "state_bytes": sum(storages.values())}
    host = actor.trainable._host
    out["pinned"] = bool(host.chunks) and all(c.is_pinned() for c in host.chunks)
    chunks = [c.data_ptr() for c in host.chunks]
    actor.onload()
    out["round_trip_exact"] = all(torch.equal(t.cpu(), v) for t, v in zip(local, values))
    actor.offload()
    actor.onload()
    out["chunks_reused"] = [c.data_ptr() for c in host.chunks] == chunks
    out["twice_exact"] = all(torch.equal(t.cpu(), v) for t, v in zip(local, values))
    return out


def test_one_gpu_bf16_training(qwen3_dir, tmp_path):
    (out,) = spawn_ranks(one_gpu_checks, 1, "nccl", tmp_path, str(qwen3_dir), str(tmp_path / "ckpt"))
    assert out["param_device"] == "cuda"
    assert out["log_prob_max_diff"] < 0.05  # bf16 compute against an fp32 forward
    assert out["rewards"][0] <= 0.15 and max(out["rewards"][-2:]) >= 0.5, out["rewards"]
    assert out["offload_freed_bytes"] >= out["state_bytes"] > 0  # parameters and AdamW state all left the GPU
    assert out["pinned"] and out["chunks_reused"]
    assert out["round_trip_exact"] and out["twice_exact"]
    assert torch.isfinite(torch.tensor(out["after_onload"]["loss"]))
    assert out["checkpoint_equal"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_match_one_gpu(qwen3_dir, tmp_path):
    """Same run as test_distributed.py on NCCL; bf16 compute, so metrics agree within 2%."""
    one = spawn_ranks(train_two_rollouts, 1, "nccl", tmp_path / "one", str(qwen3_dir), str(tmp_path / "c1"))[0]
    two = spawn_ranks(train_two_rollouts, 2, "nccl", tmp_path / "two", str(qwen3_dir), str(tmp_path / "c2"))
    for got, want in zip(two[0]["metrics"] + two[0]["step_metrics"], one["metrics"] + one["step_metrics"]):
        for name in ("loss", "pg_loss", "entropy", "grad_norm", "kl_loss"):
            assert got[name] == pytest.approx(want[name], rel=2e-2, abs=1e-3), name
    assert two[0]["step_metrics"][0]["ppo_kl"] == 0.0

"""--optimizer-cpu-offload: AdamW's state waits in CPU memory outside the optimizer step (and a checkpoint's
save and load), and training goes on exactly as without it. On CPU the mechanism runs on CPU storages; the
GPU test runs the flag itself."""

import pytest
import torch
from torch.distributed.tensor import DTensor
from train_helpers import computed, make_cfg, spawn_ranks, toy_batch

from temper.train import Actor
from temper.train.trainable import HostCopy


def optimizer_storage_bytes(actor) -> int:
    """Bytes of AdamW's state storages (0 while parked)."""
    tensors = [t for state in actor.trainable.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.untyped_storage().nbytes() for t in local)


def test_flag_is_a_no_op_on_cpu(qwen3_dir):
    """A CPU run keeps the state in CPU memory anyway: nothing to move."""
    assert Actor(make_cfg(qwen3_dir, optimizer_cpu_offload=True)).trainable.optimizer_host is None


def test_state_parked_between_steps_and_training_unchanged(qwen3_dir, tmp_path):
    actor = Actor(make_cfg(qwen3_dir, save=str(tmp_path / "ckpt")))
    twin = Actor(make_cfg(qwen3_dir))
    actor.trainable.optimizer_host = HostCopy(device_type="cpu", pin=False)
    for rollout_id, seed in enumerate((1, 2)):
        assert computed(actor.train(rollout_id, toy_batch(8, seed=seed))) == computed(twin.train(rollout_id, toy_batch(8, seed=seed)))
        assert actor.trainable.optimizer.state and optimizer_storage_bytes(actor) == 0  # parked after the step
    actor.save(1)
    assert optimizer_storage_bytes(actor) == 0

    again = Actor(make_cfg(qwen3_dir, load=str(tmp_path / "ckpt")))
    again.trainable.optimizer_host = HostCopy(device_type="cpu", pin=False)
    again.load()
    assert optimizer_storage_bytes(again) == 0  # loaded, then parked
    assert computed(again.train(2, toy_batch(8, seed=3))) == computed(twin.train(2, toy_batch(8, seed=3)))


def gpu_offload_checks(hf_checkpoint: str) -> dict:
    """Two actors on cuda:0, one with --optimizer-cpu-offload: GPU memory after a step, and the metrics. The
    offloading one goes first: whatever the first leaves allocated can only add to the second's count."""
    out = {}
    for name, flag in (("offload", True), ("plain", False)):
        actor = Actor(make_cfg(hf_checkpoint, optimizer_cpu_offload=flag))
        torch.manual_seed(0)
        out[name] = [actor.train(i, toy_batch(8, seed=i)) for i in range(2)]
        out[f"{name}_allocated"] = torch.cuda.memory_allocated()
        out[f"{name}_state_bytes"] = optimizer_storage_bytes(actor)
        host = actor.trainable.optimizer_host
        out[f"{name}_pinned"] = host is not None and bool(host.chunks) and all(c.is_pinned() for c in host.chunks)
        del actor
        torch.cuda.empty_cache()
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_state_leaves_the_device(qwen3_dir, tmp_path):
    (out,) = spawn_ranks(gpu_offload_checks, 1, "nccl", tmp_path, str(qwen3_dir))
    assert out["plain_state_bytes"] > 0 and out["offload_state_bytes"] == 0 and out["offload_pinned"]
    assert out["plain_allocated"] - out["offload_allocated"] >= out["plain_state_bytes"] * 0.9
    for got, want in zip(out["offload"], out["plain"]):
        for key in ("loss", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-6), key

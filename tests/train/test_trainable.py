"""`HostCopy`, the CPU side of the trainer's offload: storages parked in CPU buffers and brought back bit
for bit, aliases kept. On CPU the mechanism runs on CPU storages (unpinned); test_gpu.py runs it on CUDA."""

import pytest
import torch
from torch.distributed.tensor import DTensor
from train_helpers import computed, make_cfg, toy_batch

from temper.train import Actor
from temper.train.trainable import HostCopy


def local_clones(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(t.to_local() if isinstance(t, DTensor) else t).detach().clone() for t in tensors]


def test_round_trip_keeps_values_and_aliases():
    base = torch.randn(10)
    view = base[2:5]
    other = torch.randn(3, 4)
    want = [base.clone(), other.clone()]
    host = HostCopy(device_type="cpu", pin=False)
    freed = host.offload([view, base, other])  # nothing may read them until onload
    assert freed == 40 + 48 and len(host.parked) == 2  # the view shares base's storage
    assert base.untyped_storage().nbytes() == 0 and other.untyped_storage().nbytes() == 0
    host.onload()
    assert host.parked == [] and torch.equal(base, want[0]) and torch.equal(other, want[1])
    view.fill_(7.0)  # still a view of base
    assert torch.equal(base[2:5], torch.full((3,), 7.0))


def test_chunks_are_packed_reused_and_values_exact():
    """Storages packed end to end over 16-byte chunks (spanning them), the chunks reused, more added
    when the state grows."""
    tensors = [torch.randn(5), torch.randn(2, 2)]  # 20 + 16 bytes: three chunks
    want = [t.clone() for t in tensors]
    host = HostCopy(device_type="cpu", pin=False, chunk_bytes=16)
    assert host.offload(tensors) == 36 and len(host.chunks) == 3
    first = [c.data_ptr() for c in host.chunks]
    host.onload()
    assert all(torch.equal(t, w) for t, w in zip(tensors, want))
    for t in tensors:
        t.add_(1.0)
    grown = [*tensors, torch.randn(4)]
    want = [t.clone() for t in grown]
    host.offload(grown)
    assert [c.data_ptr() for c in host.chunks][:3] == first and len(host.chunks) == 4
    host.onload()
    assert all(torch.equal(t, w) for t, w in zip(grown, want))
    host.offload(tensors)
    with pytest.raises(RuntimeError, match="already parked"):
        host.offload(tensors)
    host.onload()


def test_other_devices_are_left_alone():
    host = HostCopy(device_type="cuda", pin=False)
    cpu = torch.randn(4)
    assert host.offload([cpu]) == 0 and cpu.untyped_storage().nbytes() == 16
    host.onload()


def test_fsdp_model_and_optimizer_round_trip_bit_exact(qwen3_dir):
    """The trainer's parameters (FSDP DTensors) and AdamW state, parked and back: the same bits, and
    training goes on exactly as without the round trip."""
    actor, twin = Actor(make_cfg(qwen3_dir)), Actor(make_cfg(qwen3_dir))
    host = HostCopy(device_type="cpu", pin=False, chunk_bytes=2**16)
    host.offload(actor.trainable._state_tensors())  # before FSDP's lazy init (the first forward)
    host.onload()
    assert computed(actor.train(0, toy_batch(8, seed=1))) == computed(twin.train(0, toy_batch(8, seed=1)))
    tensors = actor.trainable._state_tensors()
    assert any(isinstance(t, DTensor) for t in tensors) and len(tensors) > len(list(actor.model.parameters()))
    before = local_clones(tensors)
    freed = host.offload(tensors)
    assert freed >= sum(t.numel() * t.element_size() for t in before)
    host.onload()
    assert all(torch.equal(a, b) for a, b in zip(local_clones(tensors), before))
    assert computed(actor.train(1, toy_batch(8, seed=2))) == computed(twin.train(1, toy_batch(8, seed=2)))


def test_per_token_loss_shares_count_an_all_masked_sample_once():
    """slime's per-token denominator Σ_i max(mask_sum_i, 1): with masks of 2, 0 and 3 trained tokens the
    step divides by 2 + 1 + 3 = 6, so micro-batches [0, 1] and [2] weigh 3/6 and 3/6 (metrics: 2/5, 3/5)."""
    from temper.train.packing import pack
    from temper.train.trainable import StepTotals

    batch = toy_batch(3, response_len=3)
    batch.loss_masks = [torch.tensor([1.0, 1.0, 0.0]), torch.zeros(3), torch.ones(3)]
    totals = StepTotals.of(batch, [0, 1, 2], per_token_loss=True)
    assert (totals.tokens, totals.loss_tokens) == (5, 6)
    first, second = (pack(batch.tokens, batch.response_lengths, p) for p in ([0, 1], [2]))
    assert totals.shares(batch, first) == pytest.approx((3 / 6, 2 / 5))
    assert totals.shares(batch, second) == pytest.approx((3 / 6, 3 / 5))
    per_sample = StepTotals.of(batch, [0, 1, 2], per_token_loss=False)
    assert per_sample.shares(batch, first) == pytest.approx((2 / 3, 2 / 5))

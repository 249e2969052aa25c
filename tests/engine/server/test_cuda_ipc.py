"""The CUDA IPC bucket format on CPU: the trainer's buffer layout read back through the engine's checks
and views (a CPU buffer stands in for the shared CUDA one), the field-naming errors, the same-GPU
check and the mapping cache. The mapping itself needs CUDA: tests/cluster/test_weight_sync_gpu.py."""

from __future__ import annotations

import copy

import pytest
import torch

from temper.engine.server import cuda_ipc
from temper.engine.server.cuda_ipc import ALIGN, IpcSendBuffer, MappedBuffers, check_bucket, views
from temper.engine.server.protocol import CudaIpcBucket, RequestError, UpdateWeightsFromTensorReq, parse_model


class CpuSendBuffer(IpcSendBuffer):
    """The trainer's buffer on the CPU, described as the CUDA one would be (no IPC handle to take)."""

    shares = 0

    def _share(self) -> dict:
        self.shares += 1
        return {"gpu_uuid": "GPU-test", "handle": "AAAA", "size_bytes": self.capacity, "offset_bytes": 0,
                "ref_counter_handle": "/torch_1_2_3", "ref_counter_offset": 0, "event_handle": "",
                "event_sync_required": False}  # fmt: skip


def read_back(sender: CpuSendBuffer, description: dict) -> dict[str, torch.Tensor]:
    """What an engine would load from `description`: parsed as the route parses it, checked, viewed."""
    bucket = parse_model(CudaIpcBucket, description, "cuda_ipc.")
    return {name: t.clone() for name, t in views(sender.flat, check_bucket(bucket))}


def pairs() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [("a", torch.randn(3, 5, generator=g)), ("b", torch.randn(7, generator=g)),
            ("c", torch.randn(10, 4, generator=g).t()), ("d", torch.randn(2, 2, generator=g).bfloat16())]  # fmt: skip


def test_buckets_read_back_exactly_cast_and_aligned():
    sender = CpuSendBuffer(1 << 10, "cpu")
    (description,) = list(sender.fill(pairs(), torch.bfloat16))
    assert all(t["offset"] % ALIGN == 0 for t in description["tensors"])
    got = read_back(sender, description)
    for name, tensor in pairs():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor.bfloat16()), name


def test_a_full_buffer_is_sent_before_refilling_and_a_big_tensor_grows_it():
    sender = CpuSendBuffer(200, "cpu")  # 208 aligned: a (60 bytes) + b (28), then c (160) + d (8)
    loaded: dict[str, torch.Tensor] = {}
    descriptions = []
    for description in sender.fill(pairs()):  # own dtypes: float32 and one bfloat16
        descriptions.append(copy.deepcopy(description))
        loaded |= read_back(sender, description)  # the engine loads before the buffer is refilled
    assert [[t["name"] for t in d["tensors"]] for d in descriptions] == [["a", "b"], ["c", "d"]]
    assert all(loaded[name].dtype == t.dtype and torch.equal(loaded[name], t) for name, t in pairs())
    assert sender.shares == 1  # shared once, refilled twice
    big = torch.arange(64, dtype=torch.float32)  # 256 bytes > the 208-byte buffer
    (description,) = list(sender.fill([("big", big)]))
    assert sender.capacity >= 256 and description["buffer"]["size_bytes"] == sender.capacity
    assert torch.equal(read_back(sender, description)["big"], big) and sender.shares == 2


def test_buckets_share_one_handoff_when_the_buffer_holds_them_all():
    sender = CpuSendBuffer(1 << 10, "cpu")  # the whole model: every bucket in one handoff
    buckets = [pairs()[:1], pairs()[1:3], [], pairs()[3:]]
    (description,) = list(sender.fill_buckets(iter(buckets), torch.bfloat16))
    assert [t["name"] for t in description["tensors"]] == ["a", "b", "c", "d"]
    got = read_back(sender, description)
    assert all(torch.equal(got[name], tensor.bfloat16()) for name, tensor in pairs())
    small = CpuSendBuffer(100, "cpu")  # 112 aligned: a (30 bytes in bf16) + b (14) + c (80) do not fit together
    names = [[t["name"] for t in d["tensors"]] for d in small.fill_buckets(iter(buckets), torch.bfloat16)]
    assert names == [["a", "b"], ["c", "d"]]  # handed over when full, across the buckets' edges


def bucket(**tensor) -> dict:
    entry = {"name": "model.norm.weight", "dtype": "bfloat16", "shape": [4, 8], "offset": 0} | tensor
    return {"buffer": {"gpu_uuid": "GPU-test", "handle": "AAAA", "size_bytes": 1024, "offset_bytes": 0,
                       "ref_counter_handle": "/torch_1_2_3", "ref_counter_offset": 0, "event_handle": "",
                       "event_sync_required": False},
            "tensors": [entry]}  # fmt: skip


def check(description: dict) -> list:
    body = parse_model(UpdateWeightsFromTensorReq, {"load_format": "cuda_ipc", "cuda_ipc": description})
    return check_bucket(body.cuda_ipc)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dtype": "int64"}, r"cuda_ipc.tensors\[0\] \('model.norm.weight'\).dtype: 'int64' is not allowed"),
        ({"dtype": "float99"}, r"\.dtype: 'float99' is not allowed; expected one of \['bfloat16', 'float16'"),
        ({"offset": 1000}, r"\.offset: bytes \[1000, 1064\) of shape \[4, 8\] run past the buffer \(size_bytes 1024\)"),
        ({"shape": [4, 200]}, r"run past the buffer"),
        ({"offset": 3}, r"\.offset: expected a byte offset >= 0 and a multiple of 2"),
        ({"offset": -2}, r"\.offset: expected a byte offset >= 0"),
        ({"shape": [-1, 8]}, r"\.shape: negative dimension"),
        ({"offset": 1.5}, r"cuda_ipc.tensors.0.offset: Input should be a valid integer"),
    ],
)
def test_bad_tensor_fields_are_named(change, message):
    with pytest.raises(RequestError, match=message):
        check(bucket(**change))


def test_missing_fields_are_named():
    description = bucket()
    del description["tensors"][0]["offset"]
    with pytest.raises(RequestError, match=r"cuda_ipc.tensors.0.offset: Field required"):
        check(description)
    del description["buffer"]["handle"]
    with pytest.raises(RequestError, match=r"cuda_ipc.buffer.handle: Field required"):
        check(description)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"size_bytes": 0}, r"cuda_ipc.buffer.size_bytes: expected a positive byte count"),
        ({"offset_bytes": -1}, r"cuda_ipc.buffer.offset_bytes: expected >= 0"),
        ({"handle": "%%%"}, r"cuda_ipc.buffer.handle: not valid base64"),
        ({"handle": ""}, r"cuda_ipc.buffer.handle: expected 1 to 65536 bytes"),
        ({"event_handle": "A" * 200}, r"cuda_ipc.buffer.event_handle: expected at most 128 bytes"),
        ({"ref_counter_handle": "/etc/passwd"}, r"cuda_ipc.buffer.ref_counter_handle: expected torch's"),
        ({"ref_counter_offset": 10000}, r"cuda_ipc.buffer.ref_counter_offset: expected 0 <= offset < 10000"),
        ({"event_sync_required": 1}, r"cuda_ipc.buffer.event_sync_required: Input should be a valid boolean"),
    ],
)
def test_bad_buffer_fields_are_named(change, message):
    description = bucket()
    description["buffer"] |= change
    with pytest.raises(RequestError, match=message):
        check(description)


def test_an_engine_off_the_senders_gpu_is_told_what_to_use():
    description = parse_model(CudaIpcBucket, bucket())
    with pytest.raises(RequestError, match=r"cuda_ipc needs an engine on the same CUDA GPU .* runs on cpu"):
        cuda_ipc.make_load(description, torch.device("cpu"), MappedBuffers(), lambda items: None)


def test_mapped_buffers_are_opened_once_and_bounded(monkeypatch):
    opened = []
    monkeypatch.setattr(cuda_ipc, "_map", lambda buffer, device: opened.append(buffer.handle) or torch.zeros(4))
    buffers = MappedBuffers(capacity=2)
    first, second, third = (parse_model(CudaIpcBucket, bucket()).buffer.model_copy(update={"handle": h})
                            for h in ("AAAA", "BBBB", "CCCC"))  # fmt: skip
    flat = buffers.open(first, torch.device("cpu"))
    assert buffers.open(first, torch.device("cpu")) is flat and opened == ["AAAA"]
    buffers.open(second, torch.device("cpu"))
    buffers.open(first, torch.device("cpu"))  # most recent again
    buffers.open(third, torch.device("cpu"))  # evicts the least recent: second
    assert len(buffers) == 2 and buffers.opened == 3
    buffers.open(second, torch.device("cpu"))
    assert opened == ["AAAA", "BBBB", "CCCC", "BBBB"]

"""CUDA IPC weight buckets: a trainer and an engine on the same GPU share one flat buffer, no host copy.

Trainer end (`IpcSendBuffer`): one flat ``uint8`` CUDA buffer, allocated once (grown only for a
tensor larger than it) and shared once through torch's ``UntypedStorage._share_cuda_()`` (the
allocation's IPC handle, the storage's offset in it, torch's IPC ref counter and event). `fill`
copies tensors into 16-byte-aligned slices (the copy casts to the engine's dtype), synchronizes the
stream, and yields the bucket's description, which the caller posts to ``/update_weights_from_tensor``
with ``load_format: "cuda_ipc"``; it refills the buffer only after every engine has answered.

Engine end: `check_bucket` validates the description (allowlisted dtypes, offsets aligned and inside
the buffer), `check_same_gpu` that the engine's GPU is the sender's (UUIDs), and `MappedBuffers` maps
each buffer once by calling torch's ``rebuild_cuda_tensor`` with explicit, validated arguments —
nothing from the request is ever unpickled — and keeps the last `MAX_MAPPED` mappings, so a buffer
that is refilled bucket after bucket is opened once. `views` gives the tensors as views of the mapped
buffer for ``engine.load_weights``, which copies them into the parameters in place; `make_load`
synchronizes the engine's device afterwards, so the trainer may overwrite the buffer once the reply came.

Wire format, the request's ``cuda_ipc`` field (`protocol.CudaIpcBucket`)::

    {"buffer": {"gpu_uuid": str, "handle": base64, "size_bytes": int, "offset_bytes": int,
                "ref_counter_handle": "/torch_<pid>_<n>_<n>", "ref_counter_offset": int,
                "event_handle": base64, "event_sync_required": bool},
     "tensors": [{"name": str, "dtype": "bfloat16", "shape": [int, ...], "offset": int}, ...]}

``offset`` counts bytes from the start of the buffer's storage. A mapping of the trainer's memory
stays open while it is cached; the trainer's allocation is freed only after the engine dropped it.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch

from temper.engine.server.protocol import CudaIpcBucket, CudaIpcBuffer, CudaIpcTensor, RequestError
from temper.engine.weights import copy_all

ALIGN = 16
"""Byte alignment of every tensor in the buffer (enough for any allowed dtype and vectorized copies)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a bucket may carry."""
MAX_MAPPED = 4
"""Mapped buffers an engine keeps (a trainer normally has one; a grown buffer replaces it)."""
MAX_HANDLE_BYTES = 1 << 16  # cudaMalloc: 64 bytes (newer torch adds a header); expandable segments: more
MAX_EVENT_HANDLE_BYTES = 128  # a cudaIpcEventHandle is 64 bytes
REF_COUNTER_SLOTS = 10000  # torch's CUDA_IPC_REF_COUNTER_FILE_SIZE
_REF_COUNTER = re.compile(r"/torch_\d+_\d+_\d+")
FIELD = "cuda_ipc"


class Slice(NamedTuple):
    """One tensor of a bucket: `nbytes` bytes at byte `offset` of the buffer."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


# ---- engine end ----------------------------------------------------------------------------------


def check_bucket(bucket: CudaIpcBucket) -> list[Slice]:
    """The bucket's tensors as `Slice`s; RequestError naming the field for a bad buffer or tensor."""
    _check_buffer(bucket.buffer)
    return [_check_tensor(i, t, bucket.buffer.size_bytes) for i, t in enumerate(bucket.tensors)]


def _check_buffer(buffer: CudaIpcBuffer) -> None:
    where = f"{FIELD}.buffer"
    if buffer.size_bytes <= 0:
        raise RequestError(f"{where}.size_bytes: expected a positive byte count, got {buffer.size_bytes}")
    if buffer.offset_bytes < 0:
        raise RequestError(f"{where}.offset_bytes: expected >= 0, got {buffer.offset_bytes}")
    if not 0 <= buffer.ref_counter_offset < REF_COUNTER_SLOTS:
        raise RequestError(f"{where}.ref_counter_offset: expected 0 <= offset < {REF_COUNTER_SLOTS}, "
                           f"got {buffer.ref_counter_offset}")
    if not _REF_COUNTER.fullmatch(buffer.ref_counter_handle):
        raise RequestError(f"{where}.ref_counter_handle: expected torch's '/torch_<pid>_<n>_<n>', "
                           f"got {buffer.ref_counter_handle[:80]!r}")
    if not 0 < len(decode_bytes(buffer.handle, f"{where}.handle")) <= MAX_HANDLE_BYTES:
        raise RequestError(f"{where}.handle: expected 1 to {MAX_HANDLE_BYTES} bytes")
    if len(decode_bytes(buffer.event_handle, f"{where}.event_handle")) > MAX_EVENT_HANDLE_BYTES:
        raise RequestError(f"{where}.event_handle: expected at most {MAX_EVENT_HANDLE_BYTES} bytes")


def _check_tensor(i: int, tensor: CudaIpcTensor, size_bytes: int) -> Slice:
    where = f"{FIELD}.tensors[{i}] ({tensor.name!r})"
    dtype = DTYPES.get(tensor.dtype.removeprefix("torch."))
    if dtype is None:
        raise RequestError(f"{where}.dtype: {tensor.dtype!r} is not allowed; expected one of {sorted(DTYPES)}")
    if any(d < 0 for d in tensor.shape):
        raise RequestError(f"{where}.shape: negative dimension in {tensor.shape}")
    nbytes = math.prod(tensor.shape) * dtype.itemsize
    if tensor.offset < 0 or tensor.offset % dtype.itemsize:
        raise RequestError(f"{where}.offset: expected a byte offset >= 0 and a multiple of {dtype.itemsize} "
                           f"({tensor.dtype}), got {tensor.offset}")
    if tensor.offset + nbytes > size_bytes:
        raise RequestError(f"{where}.offset: bytes [{tensor.offset}, {tensor.offset + nbytes}) of shape "
                           f"{tensor.shape} run past the buffer (size_bytes {size_bytes})")
    return Slice(tensor.name, dtype, tuple(tensor.shape), tensor.offset, nbytes)


def decode_bytes(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field}: not valid base64") from None


def check_same_gpu(buffer: CudaIpcBuffer, device: torch.device) -> None:
    """RequestError unless `device` (the engine's) is the CUDA GPU whose UUID the sender gave."""
    if device.type != "cuda":
        raise RequestError(
            f"cuda_ipc needs an engine on the same CUDA GPU as the trainer; this engine runs on {device}: "
            "use --update-weight-transport tensor (same host) or broadcast"
        )
    mine = gpu_uuid(device)
    if mine != buffer.gpu_uuid:
        raise RequestError(
            f"cuda_ipc: the trainer's buffer is on GPU {buffer.gpu_uuid} but this engine runs on {device} "
            f"(GPU {mine}); CUDA IPC hands weights over on one GPU only: use --update-weight-transport broadcast"
        )


def gpu_uuid(device: torch.device) -> str:
    """The UUID of a CUDA device, the same in every process whatever CUDA_VISIBLE_DEVICES numbers it."""
    return str(torch.cuda.get_device_properties(device).uuid)


class MappedBuffers:
    """The engine's mappings of trainer buffers: flat ``uint8`` CUDA tensors by IPC handle, the most
    recently used `capacity` of them (an evicted one is unmapped once no view of it is left)."""

    def __init__(self, capacity: int = MAX_MAPPED):
        self.capacity = capacity
        self._mapped: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.opened = 0  # mappings made (a reused buffer does not count again)

    def open(self, buffer: CudaIpcBuffer, device: torch.device) -> torch.Tensor:
        """The buffer as a flat ``uint8`` tensor on `device` (a validated `buffer`; see `check_bucket`)."""
        key = (buffer.handle, buffer.offset_bytes, buffer.size_bytes)
        flat = self._mapped.pop(key, None)
        if flat is None:
            flat = _map(buffer, device)
            self.opened += 1
        self._mapped[key] = flat
        while len(self._mapped) > self.capacity:
            self._mapped.popitem(last=False)
        return flat

    def __len__(self) -> int:
        return len(self._mapped)


def _map(buffer: CudaIpcBuffer, device: torch.device) -> torch.Tensor:
    """Open the IPC handle through torch's own rebuild function; every argument is spelled out here."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    return rebuild_cuda_tensor(
        torch.Tensor,  # tensor class
        (buffer.size_bytes,), (1,), 0,  # size, stride, offset in the storage
        torch.UntypedStorage, torch.uint8,
        device.index,  # this engine's index of the GPU (the trainer may number it differently)
        decode_bytes(buffer.handle, f"{FIELD}.buffer.handle"), buffer.size_bytes, buffer.offset_bytes,
        False,  # requires_grad
        buffer.ref_counter_handle.encode("ascii"), buffer.ref_counter_offset,
        decode_bytes(buffer.event_handle, f"{FIELD}.buffer.event_handle"), buffer.event_sync_required,
    )  # fmt: skip


def views(flat: torch.Tensor, slices: Iterable[Slice]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each slice: views of `flat`, no copy."""
    for s in slices:
        yield s.name, flat[s.offset : s.offset + s.nbytes].view(s.dtype).view(s.shape)


def make_load(bucket: CudaIpcBucket, device: torch.device, buffers: MappedBuffers,
              load_weights: Callable[[Iterable[tuple[str, torch.Tensor]]], None]) -> Callable[[], None]:
    """Validate a request's bucket for an engine on `device` (RequestError naming the field) and return
    the load to run on the engine loop: map (or reuse) the buffer, `load_weights` its views, then
    synchronize the device, so that the trainer may refill the buffer after the reply."""
    slices = check_bucket(bucket)
    check_same_gpu(bucket.buffer, device)

    def load() -> None:
        load_weights(views(buffers.open(bucket.buffer, device), slices))
        torch.cuda.synchronize(device)

    return load


# ---- trainer end ---------------------------------------------------------------------------------


class IpcSendBuffer:
    """The trainer's flat buffer (see the module docstring). `nbytes`: its size (--update-weight-buffer-size);
    `device`: the trainer's CUDA device, the engines' GPU."""

    def __init__(self, nbytes: int, device: torch.device | str):
        self.device = torch.device(device)
        self._allocate(nbytes)

    def _allocate(self, nbytes: int) -> None:
        self.flat = None  # the old buffer goes (engines that mapped it keep it until they evict it)
        self.capacity = _aligned(max(int(nbytes), ALIGN))
        self.flat = torch.empty(self.capacity, dtype=torch.uint8, device=self.device)
        self._views: dict[tuple, torch.Tensor] = {}  # see `_view`
        self.shared: dict | None = None  # shared on first use: a buffer grown before it was sent is freed at once

    def _share(self) -> dict:
        """The `protocol.CudaIpcBuffer` fields of `flat` (a test may share a CPU buffer its own way)."""
        device, handle, size, offset, ref, ref_offset, event, event_sync = self.flat.untyped_storage()._share_cuda_()
        return {
            "gpu_uuid": gpu_uuid(self.device), "handle": base64.b64encode(handle).decode("ascii"),
            "size_bytes": int(size), "offset_bytes": int(offset), "ref_counter_handle": ref.decode("ascii"),
            "ref_counter_offset": int(ref_offset), "event_handle": base64.b64encode(event).decode("ascii"),
            "event_sync_required": bool(event_sync),
        }  # fmt: skip

    def fill(self, pairs: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> Iterator[dict]:
        """Copy `pairs` into the buffer in order, cast to `dtype` (None: each tensor's own), and yield the
        description (`protocol.CudaIpcBucket` fields) each time the buffer is full and at the end, once
        the copies have finished. Pull the next item only when every engine has loaded the last one."""
        return self.fill_buckets([pairs], dtype)

    def fill_buckets(self, buckets: Iterable[Iterable[tuple[str, torch.Tensor]]],
                     dtype: torch.dtype | None = None) -> Iterator[dict]:
        """`fill` over the pairs of every bucket, copying each bucket as soon as it is in (so the caller may
        drop its tensors) and handing over only when the buffer is full or at the end: a buffer of the whole
        model hands it over once, whatever the buckets."""
        entries: list[dict] = []
        copies: tuple[list, list] = ([], [])  # (buffer views, tensors): copied together, a bucket at a time
        used = 0
        for pairs in buckets:
            for name, tensor in pairs:
                out = dtype or tensor.dtype
                nbytes = tensor.numel() * out.itemsize
                if entries and used + nbytes > self.capacity:
                    yield self._ready(entries, copies)
                    entries, used = [], 0
                if nbytes > self.capacity:
                    self._allocate(nbytes)
                copies[0].append(self._view(used, out, tuple(tensor.shape)))
                copies[1].append(tensor.detach())
                entries.append({"name": name, "dtype": str(out).removeprefix("torch."), "shape": list(tensor.shape),
                                "offset": used})
                used = _aligned(used + nbytes)
            copy_all(copies)
        if entries:
            yield self._ready(entries, copies)

    def _view(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """The buffer's bytes at `offset` as a `dtype` tensor of `shape`, made once per layout (a sync sends
        the same tensors at the same offsets every time)."""
        key = (offset, dtype, shape)
        view = self._views.get(key)
        if view is None:
            nbytes = math.prod(shape) * dtype.itemsize
            view = self._views[key] = self.flat[offset : offset + nbytes].view(dtype).view(shape)
        return view

    def _ready(self, entries: list[dict], copies: tuple[list, list]) -> dict:
        copy_all(copies)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the engine reads on its own stream
        if self.shared is None:
            self.shared = self._share()
        return {"buffer": self.shared, "tensors": entries}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN

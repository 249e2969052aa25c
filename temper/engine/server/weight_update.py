"""Moving new weights into a running engine: the broadcast group (both ends) and the tensor payload.

Distributed path (SGLANG_API.md §5.2). The trainer process that owns the weights is rank 0 of a
private process group and only sends; an engine with one TP rank joins as ``rank_offset`` and only
receives. The group is *stateless*: a `TCPStore` (hosted by rank 0 at ``master_address:master_port``)
plus a `ProcessGroupGloo` (CPU tensors) or `ProcessGroupNCCL` (CUDA tensors) built on it directly, so
neither process needs ``torch.distributed.init_process_group`` or a default group. Store keys are
prefixed with the group name. Tensors travel either one broadcast per tensor (``load_format`` null), or
as one ``uint8`` broadcast of their bytes concatenated in ``names`` order (``"flattened_bucket"``).

Tensor path: see `decode_tensor_payload` for the wire format (safetensors, never pickle).

`WeightBroadcaster` is the trainer end, for tests and for temper's own trainer.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.distributed import TCPStore

from temper.engine.process_group import broadcast, new_process_group

DEFAULT_GROUP = "weight_update_group"
DEFAULT_TIMEOUT_S = 300.0


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"`` (or ``"torch.bfloat16"``) → torch.bfloat16; ValueError for anything else."""
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        # A wrong value in the request (the route's 400), not a programming error: ValueError.
        raise ValueError(f"unknown dtype {name!r}; expected a torch dtype name such as 'bfloat16' or 'float32'")  # noqa: TRY004
    return dtype


class BroadcastGroup:
    """One rank of a stateless broadcast group (see the module docstring)."""

    def __init__(self, master_address: str, master_port: int, world_size: int, rank: int,
                 group_name: str = DEFAULT_GROUP, backend: str = "gloo", timeout_s: float = DEFAULT_TIMEOUT_S,
                 device: torch.device | str | None = None):
        """Join the group (blocks until all `world_size` ranks have). With NCCL, tensors live on
        `device` (default: this thread's current CUDA device); with gloo on the CPU."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a group of world_size {world_size}")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"unknown backend {backend!r}; expected 'nccl' or 'gloo'")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA; use backend 'gloo' on CPU")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.store = TCPStore(master_address, master_port, world_size, is_master=rank == 0, timeout=timeout,
                              wait_for_workers=False)
        self.pg = new_process_group(self.store, group_name, rank, world_size, backend == "nccl", timeout)
        if backend == "gloo":
            self.device = torch.device("cpu")
        else:
            device = torch.device(device or "cuda")
            self.device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Broadcast `tensor` in place from rank `src` (it must live on `self.device`)."""
        return broadcast(self.pg, tensor, src)

    def close(self) -> None:
        shutdown = getattr(self.pg, "shutdown", None)
        if self.backend == "nccl" and shutdown is not None:
            shutdown()
        self.pg = None
        self.store = None


def check_metadata(names: list[str], dtypes: list[str], shapes: list[list[int]]) -> list[torch.dtype]:
    """Validate the ``update_weights_from_distributed`` metadata; returns the parsed dtypes."""
    if not (len(names) == len(dtypes) == len(shapes)):
        raise ValueError(f"names, dtypes and shapes must have the same length, got {len(names)}, {len(dtypes)}, {len(shapes)}")
    for name, shape in zip(names, shapes):
        if any(d < 0 for d in shape):
            raise ValueError(f"shape of {name!r} has a negative dimension: {shape}")
    return [dtype_from_name(d) for d in dtypes]


def receive_tensors(group: BroadcastGroup, names: list[str], dtypes: list[torch.dtype], shapes: list[list[int]],
                    flattened: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive the broadcast of rank 0, yielding ``(name, tensor)`` in `names` order.

    Per-tensor mode receives lazily, one broadcast per item pulled; the caller must pull every item
    (see `drain`) even when loading fails, or rank 0 blocks.
    """
    if not flattened:
        for name, dtype, shape in zip(names, dtypes, shapes):
            yield name, group.broadcast(torch.empty(shape, dtype=dtype, device=group.device))
        return
    sizes = [torch.Size(s).numel() * d.itemsize for d, s in zip(dtypes, shapes)]
    flat = group.broadcast(torch.empty(sum(sizes), dtype=torch.uint8, device=group.device))
    offset = 0
    for name, dtype, shape, size in zip(names, dtypes, shapes, sizes):
        if offset % dtype.itemsize:
            raise ValueError(f"Unaligned received tensor {name!r}: byte offset {offset} is not a multiple of {dtype.itemsize}")
        yield name, flat[offset:offset + size].view(dtype).view(shape)
        offset += size


def drain(items: Iterator) -> None:
    """Consume the rest of `items` (pending broadcasts) so that the sender is not left blocked."""
    for _ in items:
        pass


# ---- tensor payload (update_weights_from_tensor) -------------------------------------------------


def encode_tensor_payload(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """The inverse of `decode_tensor_payload`: base64 of a safetensors file holding `named_tensors`."""
    from safetensors.torch import save

    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in named_tensors}
    return base64.b64encode(save(tensors)).decode("ascii")


def decode_tensor_payload(payload: str) -> dict[str, torch.Tensor]:
    """Decode one entry of ``serialized_named_tensors``.

    Wire format: standard base64 (RFC 4648 alphabet, with padding) of the bytes of a **safetensors**
    file — an 8-byte little-endian header length, a JSON header mapping each Hugging Face parameter
    name to ``{"dtype", "shape", "data_offsets"}``, then the raw little-endian tensor data. Build it
    with `encode_tensor_payload` or ``base64.b64encode(safetensors.torch.save(tensors))``. temper never
    unpickles request bytes, so SGLang's pickled CUDA-IPC payloads are rejected with a 400.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("serialized_named_tensors: not valid base64") from None
    try:
        return load(raw)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(
            "serialized_named_tensors: not a safetensors payload (temper accepts base64 safetensors bytes, "
            f"never pickled tensors; see temper.engine.server.weight_update.encode_tensor_payload): {e}"
        ) from None


# ---- trainer end ---------------------------------------------------------------------------------


class WeightBroadcaster:
    """Trainer side (rank 0) of ``update_weights_from_distributed`` for engines with one TP rank each.

    ``init_group()`` POSTs ``/init_weights_update_group`` to every engine (engine i gets
    ``rank_offset = 1 + i``) while joining the group itself; ``update(named_tensors)`` sends the
    tensors in buckets of at most `bucket_bytes` (one dtype per bucket, so flattened buckets are always
    aligned): for each bucket it POSTs the metadata to every engine and broadcasts concurrently. Every
    bucket carries the same ``weight_version``, so each engine moves to that version once. Pause
    generation first if no request may see a half-updated model. `api_key`: sent to engines started with
    ``--api-key``.
    """

    def __init__(self, engine_urls: list[str], master_address: str = "127.0.0.1", master_port: int = 0,
                 backend: str = "gloo", group_name: str = DEFAULT_GROUP, timeout_s: float = DEFAULT_TIMEOUT_S,
                 device: torch.device | str | None = None, api_key: str | None = None):
        self.urls = [u.rstrip("/") for u in engine_urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.device = device
        self.master_address, self.master_port = master_address, master_port or _free_port(master_address)
        self.backend, self.group_name, self.timeout_s = backend, group_name, timeout_s
        self.group: BroadcastGroup | None = None
        self.num_updates = 0

    def _post_all(self, path: str, bodies: list[dict]) -> list:
        import httpx

        def post(url: str, body: dict) -> dict:
            r = httpx.post(f"{url}{path}", json=body, headers=self.headers, timeout=self.timeout_s)
            data = r.json()
            if r.status_code != 200 or not data.get("success", False):
                raise RuntimeError(f"POST {url}{path} failed ({r.status_code}): {data}")
            return data

        pool = ThreadPoolExecutor(max_workers=len(self.urls))
        futures = [pool.submit(post, url, body) for url, body in zip(self.urls, bodies)]
        pool.shutdown(wait=False)
        return futures

    def init_group(self) -> None:
        """Form the group with every engine; blocks until all have joined."""
        world = 1 + len(self.urls)
        body = {"master_address": self.master_address, "master_port": self.master_port, "world_size": world,
                "group_name": self.group_name, "backend": self.backend}
        futures = self._post_all("/init_weights_update_group", [dict(body, rank_offset=1 + i) for i in range(len(self.urls))])
        self.group = BroadcastGroup(self.master_address, self.master_port, world, 0, self.group_name, self.backend,
                                    self.timeout_s, self.device)
        for f in futures:
            f.result()

    def update(self, named_tensors: Iterable[tuple[str, torch.Tensor]], weight_version: str | None = None,
               bucket_bytes: int = 256 << 20, flattened: bool = True) -> str:
        """Broadcast `named_tensors` (HF names) to every engine; returns the new weight version."""
        if self.group is None:
            raise RuntimeError("call init_group() first")
        self.num_updates += 1
        version = weight_version or str(self.num_updates)
        for bucket in _buckets(named_tensors, bucket_bytes):
            body = {"names": [n for n, _ in bucket], "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                    "shapes": [list(t.shape) for _, t in bucket], "group_name": self.group_name,
                    "weight_version": version, "load_format": "flattened_bucket" if flattened else None}
            futures = self._post_all("/update_weights_from_distributed", [body] * len(self.urls))
            tensors = [t.detach().to(self.group.device).contiguous() for _, t in bucket]
            if flattened:
                self.group.broadcast(torch.cat([t.view(-1).view(torch.uint8) for t in tensors]))
            else:
                for t in tensors:
                    self.group.broadcast(t)
            for f in futures:
                f.result()
        return version

    def destroy(self) -> None:
        """Leave the group and ask every engine to drop it."""
        futures = self._post_all("/destroy_weights_update_group", [{"group_name": self.group_name}] * len(self.urls))
        for f in futures:
            f.result()
        if self.group is not None:
            self.group.close()
            self.group = None


def _buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list]:
    """Group tensors into buckets of one dtype and at most `bucket_bytes` (a bigger tensor goes alone)."""
    buckets: dict[torch.dtype, list] = {}
    sizes: dict[torch.dtype, int] = {}
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        if buckets.get(t.dtype) and sizes[t.dtype] + nbytes > bucket_bytes:
            yield buckets.pop(t.dtype)
        if t.dtype not in buckets:
            buckets[t.dtype], sizes[t.dtype] = [], 0
        buckets[t.dtype].append((name, t))
        sizes[t.dtype] += nbytes
    yield from buckets.values()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


"""The ipc weight transport on one GPU: an engine server process on ``cuda:0`` and a `WeightSender` in
this process on the same GPU (CUDA IPC cannot map a buffer into the process that made it). Skipped
without CUDA."""

from __future__ import annotations

import httpx
import pytest
import torch

from temper.cluster.weight_sync import SyncSpec, WeightSender
from temper.engine.weights import iter_safetensors
from temper.testing import build_tiny_model
from temper.testing.server_process import engine_server_process

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
NAMES = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
         "model.norm.weight")  # fmt: skip
BUFFER_BYTES = 64 << 10  # smaller than the embedding (512 KiB): the buffer grows once, then is refilled


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("qwen3"), "qwen3")  # float32
    flags = ("--device", "cuda:0", "--dtype", "float32", "--num-kv-blocks", "64", "--max-model-len", "256",
             "--max-running-requests", "16", "--log-level", "warning")  # fmt: skip
    with engine_server_process(path, *flags, timeout_s=300) as url:
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
            yield http, path


def trained(path, shift: float, device: str = "cuda:0") -> list[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors on `device`, moved by `shift` (as a trainer's would be after a step)."""
    return [(name, t.to(device) + shift) for name, t in iter_safetensors(path)]


def in_buckets(pairs: list, n: int = 3) -> list[list]:
    return [pairs[i::n] for i in range(n)]


def engine_tensor(http: httpx.Client, name: str) -> torch.Tensor:
    r = http.post("/get_weights_by_name", json={"name": name, "truncate_size": 1 << 20})
    assert r.status_code == 200, r.text
    return torch.tensor(r.json(), dtype=torch.float32)


def test_ipc_sync_loads_exact_weights_twice_into_the_engine(engine):
    http, path = engine
    spec = SyncSpec("ipc", [str(http.base_url).rstrip("/")], {0: [0]}, bucket_bytes=BUFFER_BYTES,
                    engine_dtype="float32", check=True)  # fmt: skip
    sender = WeightSender(spec, rank=0)
    handles = []
    try:
        for version, shift in (("ipc-1", 0.5), ("ipc-2", -0.25)):  # different weights through the same buffer
            pairs = trained(path, shift)
            stats = sender.send(iter(in_buckets(pairs)), version)
            assert stats["sync/tensors"] == len(pairs) and stats["sync/buckets"] == 3
            assert stats["sync/bytes"] == sum(t.numel() * 4 for _, t in pairs)
            assert sender.check() == len(pairs)  # the checksum of every tensor, computed on the GPU
            sent = dict(pairs)
            for name in NAMES:
                assert torch.equal(engine_tensor(http, name), sent[name].cpu()), name
            assert http.get("/get_weight_version").json() == {"weight_version": version}
            out = http.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2}})
            assert out.json()["meta_info"]["weight_version"] == version
            mapped = http.get("/get_server_info").json()["cuda_ipc_buffers_mapped"]
            handles.append((sender._ipc_buffer.shared["handle"], mapped))
        assert handles[0] == handles[1] and handles[0][1] >= 1  # the same buffer, mapped once by the engine
    finally:
        sender.close()


def test_ipc_sync_reports_a_wrong_shape_by_name(engine):
    http, _ = engine
    spec = SyncSpec("ipc", [str(http.base_url).rstrip("/")], {0: [0]}, engine_dtype="float32")
    sender = WeightSender(spec, rank=0)
    try:
        with pytest.raises(RuntimeError, match=r"model.norm.weight.*expected shape"):
            sender.send(iter([[("model.norm.weight", torch.zeros(3, device="cuda:0"))]]), "bad")
    finally:
        sender.close()


@needs_two_gpus
def test_ipc_from_another_gpu_is_refused_with_what_to_use(engine):
    http, path = engine
    spec = SyncSpec("ipc", [str(http.base_url).rstrip("/")], {0: [0]}, engine_dtype="float32")
    with torch.cuda.device(1):
        sender = WeightSender(spec, rank=0)
        try:
            with pytest.raises(RuntimeError, match=r"on one GPU only: use --update-weight-transport broadcast"):
                sender.send(iter([trained(path, 0.0, "cuda:1")[:2]]), "other-gpu")
        finally:
            sender.close()

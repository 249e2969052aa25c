"""GPU weight sync: an engine server on ``cuda:0`` receiving by NCCL broadcast from a trainer on ``cuda:1``
(and by gloo from CPU). Skipped without CUDA."""

from __future__ import annotations

import httpx
import pytest
import torch
from server_helpers import TIMEOUT, greedy, start_server

from temper.engine.server import WeightBroadcaster, encode_tensor_payload
from temper.engine.weights import iter_safetensors

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
NAMES = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight")


@pytest.fixture(scope="module")
def gpu_server(model_dir):
    server = start_server(model_dir("qwen3", seed=0), device="cuda:0", dtype="float32")
    yield server
    server.stop()


def _assert_weights(http: httpx.Client, path, version: str) -> None:
    expected = dict(iter_safetensors(path))
    for name in NAMES:
        got = torch.tensor(http.post("/get_weights_by_name", json={"name": name, "truncate_size": 1000}).json())
        assert torch.equal(got, expected[name].float()), name
    out = http.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": greedy(4)}).json()
    assert out["meta_info"]["weight_version"] == version and len(out["output_ids"]) == 4


@needs_two_gpus
@pytest.mark.parametrize("flattened", [True, False])
def test_nccl_broadcast_from_another_gpu(gpu_server, model_dir, flattened):
    other, original = model_dir("qwen3", seed=1), model_dir("qwen3", seed=0)
    broadcaster = WeightBroadcaster([gpu_server.url], backend="nccl", device="cuda:1", timeout_s=120)
    broadcaster.init_group()
    try:
        with httpx.Client(base_url=gpu_server.url, timeout=TIMEOUT) as http:
            broadcaster.update(iter_safetensors(other), weight_version="nccl-1", bucket_bytes=1 << 20, flattened=flattened)
            _assert_weights(http, other, "nccl-1")
            broadcaster.update(iter_safetensors(original), weight_version="nccl-0", flattened=flattened)
            _assert_weights(http, original, "nccl-0")
    finally:
        broadcaster.destroy()


@needs_cuda
def test_gloo_and_tensor_updates_into_a_gpu_engine(gpu_server, model_dir):
    other, original = model_dir("qwen3", seed=1), model_dir("qwen3", seed=0)
    with httpx.Client(base_url=gpu_server.url, timeout=TIMEOUT) as http:
        broadcaster = WeightBroadcaster([gpu_server.url], backend="gloo", timeout_s=120)
        broadcaster.init_group()
        try:
            broadcaster.update(iter_safetensors(other), weight_version="gloo-1")
            _assert_weights(http, other, "gloo-1")
        finally:
            broadcaster.destroy()
        payload = encode_tensor_payload(iter_safetensors(original))
        r = http.post("/update_weights_from_tensor", json={"serialized_named_tensors": [payload], "weight_version": "t0"})
        assert r.json()["success"], r.text
        _assert_weights(http, original, "t0")

"""Weight updates into a running server: from disk, by broadcast (gloo), from tensors.

Each test loads one of two checkpoints of the same shape (seeds 0 and 1) and checks that greedy output
then equals Hugging Face ``generate`` of that checkpoint and that the weight version moved.
"""

from __future__ import annotations

import base64
import itertools
import pickle

import httpx
import pytest
import torch
from server_helpers import TIMEOUT, greedy, start_server

from temper.engine.server import WeightBroadcaster, encode_tensor_payload
from temper.engine.weights import iter_safetensors

PROMPT = [21, 400, 77, 5, 901, 33]
N = 10


@pytest.fixture(scope="module")
def server(model_dir):
    s = start_server(model_dir("qwen3", seed=0))
    yield s
    s.stop()


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


def _check_serves(http, path, hf, version: str) -> None:
    out = http.post("/generate", json={"input_ids": PROMPT, "sampling_params": greedy(N)}).json()
    assert out["output_ids"] == hf.greedy(path, PROMPT, N)
    assert out["meta_info"]["weight_version"] == version
    assert http.get("/get_weight_version").json() == {"weight_version": version}


def test_update_from_disk(http, model_dir, hf):
    other, original = model_dir("qwen3", seed=1), model_dir("qwen3", seed=0)
    r = http.post("/update_weights_from_disk", json={"model_path": str(other)})
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    version = http.get("/get_weight_version").json()["weight_version"]
    assert version not in ("default", "") and version in r.json()["message"]
    _check_serves(http, other, hf, version)
    r = http.post("/update_weights_from_disk", json={"model_path": str(original), "weight_version": "disk-v0"})
    assert r.json()["success"] and "num_paused_requests" in r.json()
    _check_serves(http, original, hf, "disk-v0")
    r = http.post("/update_weights_from_disk", json={"model_path": "/no/such/dir"})
    assert r.status_code == 400 and r.json()["success"] is False
    _check_serves(http, original, hf, "disk-v0")


@pytest.mark.parametrize("flattened", [True, False])
def test_update_from_distributed_gloo(http, server, model_dir, hf, flattened):
    other, original = model_dir("qwen3", seed=1), model_dir("qwen3", seed=0)
    broadcaster = WeightBroadcaster([server.url], backend="gloo", timeout_s=60)
    broadcaster.init_group()
    try:
        version = broadcaster.update(iter_safetensors(other), weight_version=f"dist-{flattened}",
                                     bucket_bytes=64 << 10, flattened=flattened)
        assert version == f"dist-{flattened}"
        _check_serves(http, other, hf, version)
        broadcaster.update(iter_safetensors(original), weight_version="dist-back", flattened=flattened)
        _check_serves(http, original, hf, "dist-back")
    finally:
        broadcaster.destroy()
    r = http.post("/destroy_weights_update_group", json={"group_name": "weight_update_group"})
    assert r.status_code == 400 and r.json() == {"success": False, "message": "The group to be destroyed does not exist."}


def test_distributed_update_without_group_fails(http):
    body = {"names": ["lm_head.weight"], "dtypes": ["float32"], "shapes": [[2, 2]]}
    r = http.post("/update_weights_from_distributed", json=body)
    assert r.status_code == 400 and "Please call `init_weights_update_group` first" in r.json()["message"]
    r = http.post("/update_weights_from_distributed", json={**body, "dtypes": ["float99"]})
    assert r.status_code == 400


def test_update_from_tensor(http, model_dir, hf, tmp_path):
    other, original = model_dir("qwen3", seed=1), model_dir("qwen3", seed=0)
    payload = encode_tensor_payload(iter_safetensors(other))
    r = http.post("/update_weights_from_tensor", json={"serialized_named_tensors": [payload], "weight_version": "t1"})
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    _check_serves(http, other, hf, "t1")
    r = http.post("/update_weights_from_tensor", json={"safetensors_path": str(original / "model.safetensors")})
    assert r.json()["success"] is True
    version = http.get("/get_weight_version").json()["weight_version"]
    assert version != "t1"
    _check_serves(http, original, hf, version)


def test_tensor_update_never_unpickles(http):
    evil = base64.b64encode(pickle.dumps([("lm_head.weight", torch.zeros(2))])).decode()
    r = http.post("/update_weights_from_tensor", json={"serialized_named_tensors": [evil]})
    assert r.status_code == 400 and "not a safetensors payload" in r.json()["message"]
    r = http.post("/update_weights_from_tensor", json={"serialized_named_tensors": ["%%%"]})
    assert r.status_code == 400 and "base64" in r.json()["message"]
    bad_name = encode_tensor_payload([("model.no_such.weight", torch.zeros(2))])
    r = http.post("/update_weights_from_tensor", json={"serialized_named_tensors": [bad_name]})
    assert r.status_code == 400 and "unknown weight name" in r.json()["message"]


def test_weight_version_changes_mid_request_are_reported(http, server, model_dir):
    """A request that spans an update reports the versions of its token ranges (partial rollout)."""
    import asyncio

    other = model_dir("qwen3", seed=1)

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as c:
            task = asyncio.create_task(c.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": greedy(2000)}))
            while server.state.engine.stats["num_running"] == 0:
                await asyncio.sleep(0.01)
            await c.post("/update_weights_from_disk", json={"model_path": str(other), "weight_version": "mid"})
            await c.post("/abort_request", json={"abort_all": True})
            return (await task).json()

    out = asyncio.run(asyncio.wait_for(scenario(), 120))
    meta = out["meta_info"]
    assert meta["weight_version"] == "mid"
    spans = meta["weight_versions"]
    assert spans[-1]["version"] == "mid" and spans[-1]["end"] == meta["completion_tokens"]
    assert spans[0]["start"] == 0 and all(a["end"] == b["start"] for a, b in itertools.pairwise(spans))


def test_init_group_failure_is_reported(http):
    body = {"master_address": "127.0.0.1", "master_port": 1, "rank_offset": 1, "world_size": 2,
            "backend": "nccl" if not torch.cuda.is_available() else "mpi"}
    r = http.post("/init_weights_update_group", json=body)
    assert r.status_code == 400 and r.json()["message"].startswith("Failed to initialize custom process group")
    r = http.post("/init_weights_update_group", json={**body, "rank_offset": 2})
    assert r.status_code == 400 and "outside a group" in r.json()["message"]


def test_cuda_ipc_update_is_refused_clearly_on_a_cpu_engine(http):
    before = http.get("/get_weight_version").json()
    tensor = {"name": "model.norm.weight", "dtype": "float32", "shape": [64], "offset": 0}
    buffer = {"gpu_uuid": "GPU-0", "handle": "AAAA", "size_bytes": 256, "offset_bytes": 0,
              "ref_counter_handle": "/torch_1_2_3", "ref_counter_offset": 0, "event_handle": "",
              "event_sync_required": False}  # fmt: skip
    body = {"load_format": "cuda_ipc", "cuda_ipc": {"buffer": buffer, "tensors": [tensor]}, "weight_version": "ipc"}
    r = http.post("/update_weights_from_tensor", json=body)
    assert r.status_code == 400 and r.json()["success"] is False
    assert "cuda_ipc needs an engine on the same CUDA GPU as the trainer; this engine runs on cpu" in r.json()["message"]
    no_offset = {k: v for k, v in tensor.items() if k != "offset"}
    r = http.post("/update_weights_from_tensor", json={**body, "cuda_ipc": {"buffer": buffer, "tensors": [no_offset]}})
    assert r.status_code == 400 and "cuda_ipc.tensors.0.offset: Field required" in r.json()["message"]
    r = http.post("/update_weights_from_tensor", json={**body, "load_format": None})
    assert r.status_code == 400 and "set load_format to 'cuda_ipc'" in r.json()["message"]
    r = http.post("/update_weights_from_tensor", json={**body, "safetensors_path": "/x.safetensors"})
    assert r.status_code == 400 and "takes the cuda_ipc field and neither" in r.json()["message"]
    assert http.get("/get_weight_version").json() == before


def test_weights_checksum_equals_the_checkpoint_s_in_the_engine_s_dtype(http, model_dir):
    """/weights_checksum: every weight, the fused q/k/v and gate/up ones by their own HF names, checksummed in the
    Hugging Face layout equals the checksum of the checkpoint tensor cast to the engine's dtype."""
    from temper.engine.weight_checksum import weight_checksum

    other, original = model_dir("qwen3", seed=1), model_dir("qwen3", seed=0)
    assert http.post("/update_weights_from_disk", json={"model_path": str(other)}).json()["success"]
    try:
        answer = http.post("/weights_checksum", json={}).json()
        dtype = getattr(torch, answer["dtype"])
        want = {name: int(weight_checksum(t, dtype)) for name, t in iter_safetensors(other)}
        assert {"model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.weight"} <= set(answer["checksums"])
        assert answer["checksums"] == {name: want[name] for name in answer["checksums"]}
        names = ["model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.rotary_emb.inv_freq"]
        r = http.post("/weights_checksum", json={"names": names})
        assert r.json()["checksums"] == {names[0]: want[names[0]], names[1]: None}  # a buffer the engine computes
        assert http.post("/weights_checksum", json={"names": []}).json() == {"dtype": answer["dtype"], "checksums": {}}
        r = http.post("/weights_checksum", json={"names": ["model.no_such.weight"]})
        assert r.status_code == 400 and "names: unknown weight name 'model.no_such.weight'" in r.json()["error"]["message"]
    finally:
        http.post("/update_weights_from_disk", json={"model_path": str(original), "weight_version": "disk-v0"})

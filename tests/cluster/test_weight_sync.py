"""Weight sync against a real engine server (tiny Qwen3, in this process): each CPU transport moves
every tensor and the version; --check-weight-update-equal catches a tensor that differs; the transport
rules of `plan_sync`. The ipc transport needs CUDA: test_weight_sync_gpu.py."""

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from temper.cluster.weight_sync import SyncSpec, WeightSender, plan_sync
from temper.command_line import parse_config
from temper.config import ConfigError
from temper.testing import tiny_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine_url():
    from temper.engine.server import ServerArgs, ServerThread

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    server = ServerThread(ServerArgs(model=str(tiny_model_dir("qwen3")), port=0, log_level="warning")).start()
    yield server.url
    server.stop()
    torch.set_num_threads(threads)


def trained_buckets(shift: float) -> list[list[tuple[str, torch.Tensor]]]:
    """The tiny model's parameters (HF names, a tied lm-head once) moved by `shift`, in two buckets."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen3"), dtype=torch.float32)
    pairs = [(name, p.detach() + shift) for name, p in model.named_parameters()]
    return [pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :]]


def generate(url: str) -> dict:
    body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2, "temperature": 0.0}}
    return httpx.post(f"{url}/generate", json=body, timeout=60, trust_env=False).json()


@pytest.mark.parametrize("transport", ["broadcast", "tensor", "disk"])
def test_each_transport_moves_weights_and_version(engine_url, transport, tmp_path):
    spec = SyncSpec(transport, [engine_url], {0: [0]}, disk_dir=str(tmp_path), engine_dtype="float32", check=True)
    sender = WeightSender(spec, rank=0)
    buckets = trained_buckets(shift=0.01 * (1 + ["broadcast", "tensor", "disk"].index(transport)))
    try:
        stats = sender.send(iter(buckets), version="7")
        assert stats["sync/tensors"] == sum(len(b) for b in buckets)
        assert 0 < stats["sync/send_s"] < 60  # the transport's own seconds
        assert 0 < stats["sync/check_record_s"] < stats["sync/send_s"]  # the checksums' share of it, reported apart
        if transport != "broadcast":  # the broadcaster posts on its own
            assert 0 < stats["sync/post_s"] < stats["sync/send_s"]  # the requests, the engine's loading included
        parts = stats["sync/gather_s"] + stats["sync/post_s"] + stats["sync/check_record_s"]
        assert 0 < stats["sync/gather_s"] and parts <= stats["sync/send_s"]  # shares of the send
        assert httpx.get(f"{engine_url}/get_weight_version", trust_env=False).json()["weight_version"] == "7"
        assert generate(engine_url)["meta_info"]["weight_version"] == "7"
        assert sender.check() == stats["sync/tensors"]  # every tensor's checksum equals the engine's copy's
        if transport == "disk":
            assert [p.name for p in tmp_path.iterdir()] == ["weights_v7"]
    finally:
        sender.close()


def test_the_check_catches_one_element_in_the_middle_of_a_large_tensor(engine_url, tmp_path):
    """The checksum covers every element: after a sync, one element in the middle of the embedding (far past the
    first rows) changed by its last bit on the engine is caught and named."""
    from temper.engine.server import encode_tensor_payload

    spec = SyncSpec("disk", [engine_url], {0: [0]}, disk_dir=str(tmp_path), engine_dtype="float32", check=True)
    sender = WeightSender(spec, rank=0)
    buckets = trained_buckets(shift=0.04)
    name = "model.embed_tokens.weight"
    changed = dict(pair for bucket in buckets for pair in bucket)[name].clone()
    row, col = changed.shape[0] // 2, changed.shape[1] // 2
    changed[row, col] = torch.nextafter(changed[row, col], torch.tensor(1e9))
    try:
        sender.send(iter(buckets), version="8")
        assert sender.check() == sum(len(b) for b in buckets)
        payload = encode_tensor_payload([(name, changed)])
        r = httpx.post(f"{engine_url}/update_weights_from_tensor", json={"serialized_named_tensors": [payload]},
                       timeout=60, trust_env=False)  # fmt: skip
        assert r.json()["success"]
        with pytest.raises(RuntimeError, match=f"1 engine tensors differ from the trainer's: {engine_url} {name}: "
                                               "checksum [0-9]+, the trainer's [0-9]+ .every element compared in float32"):  # fmt: skip
            sender.check()
    finally:
        sender.close()


def test_a_rank_without_engines_only_drains_its_buckets(engine_url):
    sender = WeightSender(SyncSpec("tensor", [engine_url], {0: [0]}), rank=1)
    pulled = []

    def buckets():  # each bucket is a collective gather on the real trainer: every rank must pull it
        for i in range(3):
            pulled.append(i)
            yield [(f"w{i}", torch.zeros(2))]

    assert sender.send(buckets(), "9") == {"sync/bytes": 0.0, "sync/tensors": 0.0, "sync/buckets": 0.0, "sync/send_s": 0.0,
                                         "sync/check_record_s": 0.0, "sync/gather_s": 0.0, "sync/post_s": 0.0}
    assert pulled == [0, 1, 2]


def sync_of(*flags, device="cpu", single_node=True, engines=2, bundles=None, ranks=2):
    cfg = parse_config(
        ["--rollout-batch-size", "2", "--num-rollout", "1", "--actor-num-gpus-per-node", "2", *flags], check_shape=False
    )
    urls = [f"http://127.0.0.1:{9000 + i}" for i in range(engines)]
    return plan_sync(cfg, engine_urls=urls, train_ranks=ranks, engine_bundles=bundles or [[i] for i in range(engines)],
                     device=device, master_address="127.0.0.1", single_node=single_node, engine_dtype=None)  # fmt: skip


def test_default_transports_and_senders():
    disaggregated = sync_of("--rollout-num-gpus", "2")
    assert disaggregated.transport == "broadcast" and disaggregated.senders == {0: [0, 1]}
    assert sync_of("--rollout-num-gpus", "2", device="cuda").backend == "nccl"
    colocated = sync_of("--colocate")
    assert colocated.transport == "tensor" and colocated.senders == {0: [0], 1: [1]}  # each rank feeds its own engine
    on_gpus = sync_of("--colocate", device="cuda")
    assert on_gpus.transport == "ipc" and on_gpus.senders == {0: [0], 1: [1]}  # CUDA IPC on each rank's own GPU
    assert sync_of("--colocate", "--update-weight-transport", "tensor", device="cuda").transport == "tensor"
    assert sync_of("--rollout-num-gpus", "2", "--update-weight-transport", "nccl").transport == "broadcast"


@pytest.mark.parametrize(
    "flags, kwargs, message",
    [
        (["--colocate", "--update-weight-transport", "broadcast"], {"device": "cuda"}, "NCCL needs distinct devices"),
        (["--rollout-num-gpus", "2", "--update-weight-transport", "tensor"], {"single_node": False}, "on one host"),
        (["--colocate", "--update-weight-transport", "ipc"], {"device": "cpu"}, "with --colocate on CUDA .*colocated on cpu"),
        (["--rollout-num-gpus", "2", "--update-weight-transport", "ipc"], {"device": "cuda"}, "disaggregated on cuda"),
        (
            ["--rollout-num-gpus", "2", "--update-weight-transport", "disk"],
            {"single_node": False},
            "--update-weight-disk-dir",
        ),
    ],
)
def test_transport_rules(flags, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sync_of(*flags, **kwargs)

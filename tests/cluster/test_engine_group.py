"""EngineGroup's words on a failed engine (its name, pid and the last lines of its log file), and the API key of
engines that listen beyond loopback."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from temper.cluster.engine_group import EngineCallError, EngineGroup, EngineSlot, engine_log_file, last_lines


def test_describe_failure_names_the_engine_and_its_last_log_lines(tmp_path):
    cfg = SimpleNamespace(run_dir=str(tmp_path / "run"))
    log = engine_log_file(cfg, "engine-1")
    assert log == str(tmp_path / "run" / "engines" / "engine-1.log")
    (tmp_path / "run" / "engines").mkdir(parents=True)
    (tmp_path / "run" / "engines" / "engine-1.log").write_text("".join(f"line {i}\n" for i in range(20)))
    group = EngineGroup(["http://127.0.0.1:1", "http://127.0.0.1:2", "http://10.0.0.9:3"])
    group.slots = [EngineSlot("engine-0", {}, (), None, pid=11), EngineSlot("engine-1", {}, (), log, pid=12)]
    text = group.describe_failure("http://127.0.0.1:2/")
    assert text.startswith(f" (engine-1, pid 12); the last lines of its log {log}:\n    line 12\n")
    assert text.endswith("line 19") and "line 11" not in text
    assert group.describe_failure("http://127.0.0.1:1") == " (engine-0, pid 11); it wrote no log"
    assert group.describe_failure("http://10.0.0.9:3") == ""  # an external engine: temper knows nothing more
    assert group.slot_of("http://127.0.0.1:2") == 1 and group.slot_of("http://10.0.0.9:3") is None
    assert last_lines(str(tmp_path / "missing.log")) == []


def keyed_config(*flags):
    from temper.command_line import parse_config
    from temper.testing import tiny_model_dir

    return parse_config(["--hf-checkpoint", str(tiny_model_dir("qwen3")), "--rollout-batch-size", "2",
                         "--num-rollout", "1", "--actor-num-gpus-per-node", "1",
                         *flags], check_shape=False)  # fmt: skip


def test_engines_beyond_loopback_get_a_random_key_for_the_run():
    from temper.cluster.engine_group import builtin_server_settings, give_engines_a_key
    from temper.config import ConfigError
    from temper.rollout.router_flags import engine_api_key, router_settings

    loopback = keyed_config()
    assert give_engines_a_key(loopback, single_node=True) is None  # one node: loopback engines, no key (unchanged)
    assert "api_key" not in loopback.engine.sglang and "worker_api_key" not in router_settings(loopback)[0]
    first, second = keyed_config(), keyed_config()
    key = give_engines_a_key(first, single_node=False)
    assert len(key) >= 40 and engine_api_key(first) == key and key != give_engines_a_key(second, single_node=False)
    assert router_settings(first)[0]["worker_api_key"] == key and builtin_server_settings(first)[0]["api_key"] == key
    assert give_engines_a_key(keyed_config("--sglang-api-key", "mine"), single_node=False) == "mine"
    external_router = keyed_config("--sglang-router-ip", "10.0.0.1", "--sglang-router-port", "30000")
    with pytest.raises(ConfigError, match="require an API key.*give --sglang-api-key KEY"):
        give_engines_a_key(external_router, single_node=False)
    with pytest.raises(ConfigError, match="--sglang-api-key needs a value"):
        give_engines_a_key(keyed_config("--sglang-api-key"), single_node=False)


def test_an_engine_beyond_loopback_requires_the_run_key_that_the_driver_router_and_sync_send():
    """An engine on 0.0.0.0 (as on a node's address) answers 401 to its weight, memory and generation routes
    without the run's key; the driver's control calls, the router and the weight sync's spec carry it."""
    import torch

    from temper.cluster.engine_group import EngineWorker, give_engines_a_key
    from temper.cluster.weight_sync import plan_sync
    from temper.rollout.router import start_router
    from temper.rollout.router_flags import router_settings

    cfg = keyed_config("--sglang-skip-server-warmup")
    key = give_engines_a_key(cfg, single_node=False)
    worker = EngineWorker(cfg, "0.0.0.0", "cpu", threads=torch.get_num_threads())
    url = worker.start()
    group = EngineGroup([url], timeout_s=60)
    try:
        for path in ("/update_weights_from_disk", "/init_weights_update_group", "/release_memory_occupation",
                     "/pause_generation", "/generate"):
            assert httpx.post(f"{url}{path}", json={}, timeout=30, trust_env=False).status_code == 401, path
        with pytest.raises(EngineCallError, match="401"):
            group.pause()
        group.use_api_key(key)
        group.pause()
        group.continue_generation()
        group.release_memory(["kv_cache"])
        group.resume_memory(["kv_cache"])
        assert group.weight_versions() == ["default"]
        with start_router([url], worker_startup_timeout=30, **router_settings(cfg)[0]) as router:
            body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
            r = httpx.post(f"{router.url}/generate", json=body, timeout=60, trust_env=False)  # the router has the key
            assert r.status_code == 200 and len(r.json()["output_ids"]) == 2
        spec = plan_sync(cfg, engine_urls=[url], train_ranks=1, engine_bundles=[[1]], device="cpu",
                         master_address="10.0.0.1", single_node=False, engine_dtype="float32")
        assert spec.api_key == key and key not in repr(spec)
    finally:
        group.stop()
        worker.stop()

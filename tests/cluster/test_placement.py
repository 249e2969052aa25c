"""The resource plan: bundles for train ranks and engines, the CPU-slot rule, GPU-count errors, and the
engine's --sglang-* settings. No Ray: `plan_resources` runs before Ray starts; only the test of the local
head's start (its token notice) starts one, in a subprocess."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from temper.cluster.engine_group import builtin_server_settings, engine_dtype
from temper.cluster.placement import CPU_OVERSUBSCRIPTION, TOKEN_NOTICE_LOGGER, DropTokenNotice, plan_resources
from temper.command_line import parse_config
from temper.config import ConfigError

BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]


def cfg_of(*flags):
    return parse_config([*BASE, *flags], check_shape=False)


def plan_cpu(*flags, cores=2):
    return plan_resources(cfg_of(*flags), cuda_available=False, cluster_gpus=None, cores=cores)


def test_disaggregated_bundles_on_cpu():
    plan = plan_cpu("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2")
    assert plan.device == "cpu" and plan.num_bundles == 4 and plan.train_bundles == [0, 1]
    assert plan.engine_bundles == [[2], [3]] and plan.num_processes == 4
    assert [plan.workers_in_bundle(b) for b in range(4)] == [1, 1, 1, 1]
    assert plan.threads == 1  # 2 cores over 4 processes


def test_colocated_engines_share_the_train_bundles():
    plan = plan_cpu("--actor-num-gpus-per-node", "2", "--colocate", "--advantage-estimator", "ppo", cores=8)
    assert plan.num_bundles == 2 and plan.engine_bundles == [[0], [1]] and plan.critic
    assert plan.workers_in_bundle(0) == 3  # actor rank, critic rank, engine
    assert plan.num_processes == 6 and plan.threads == 1


def test_cpu_slots_are_capped_per_core():
    limit = CPU_OVERSUBSCRIPTION * 2
    plan_cpu("--actor-num-gpus-per-node", "4", "--rollout-num-gpus", "4")  # 8 processes: the limit
    with pytest.raises(ConfigError) as e:
        plan_cpu("--actor-num-gpus-per-node", "8", "--colocate")
    message = str(e.value)
    assert "no GPU here, so each GPU asked for becomes a CPU worker" in message
    assert f"allow at most {limit}" in message and "16 worker processes" in message and "\n" not in message


def test_more_gpus_than_the_ray_cluster_has_is_an_error():
    cfg = cfg_of("--actor-num-gpus-per-node", "4", "--rollout-num-gpus", "4")
    with pytest.raises(
        ConfigError, match=r"asks for 8 GPUs \(4 for training .* \+ 4 for engines .*\) but the Ray cluster has 2"
    ):
        plan_resources(cfg, cuda_available=False, cluster_gpus=2, cores=2)
    plan = plan_resources(cfg, cuda_available=False, cluster_gpus=8, cores=2)
    assert plan.device == "cuda" and plan.num_bundles == 8


def test_more_gpus_than_this_machine_has_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = cfg_of("--actor-num-gpus-per-node", "8", "--colocate")
    with pytest.raises(ConfigError, match=r"asks for 8 GPUs .*colocated.* but this machine has 2"):
        plan_resources(cfg, cuda_available=True, cluster_gpus=None, cores=16)


def test_engine_layout_errors():
    with pytest.raises(ConfigError, match="no rollout engines"):
        plan_cpu("--actor-num-gpus-per-node", "1")


def test_builtin_engines_of_two_gpus_are_tensor_parallel():
    plan = plan_cpu("--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "4", "--rollout-num-gpus-per-engine", "2")
    assert plan.num_engines == 2 and plan.gpus_per_engine == 2 and plan.engine_bundles == [[1, 2], [3, 4]]
    assert plan.num_processes == 5 and [plan.workers_in_bundle(b) for b in range(5)] == [1] * 5  # a rank per GPU
    colocated = plan_cpu("--actor-num-gpus-per-node", "4", "--colocate", "--rollout-num-gpus-per-engine", "2", cores=4)
    assert colocated.engine_bundles == [[0, 1], [2, 3]] and colocated.num_processes == 8 and colocated.threads == 1
    on_gpus = plan_resources(cfg_of("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2",
                                    "--rollout-num-gpus-per-engine", "2"),
                             cuda_available=False, cluster_gpus=4, cores=2)
    assert on_gpus.device == "cuda" and on_gpus.num_bundles == 4 and on_gpus.engine_bundles == [[2, 3]]


def test_tensor_parallel_engine_worker_sees_only_its_gpus(monkeypatch):
    from temper.cluster.engine_group import EngineWorker

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # Ray's choice: the actor's own bundle
    cfg = cfg_of("--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "2", "--rollout-num-gpus-per-engine", "2")
    worker = EngineWorker(cfg, "127.0.0.1", "cuda", threads=torch.get_num_threads(), gpu_ids=[5, 6])
    assert worker.device == "cuda:0" and os.environ["CUDA_VISIBLE_DEVICES"] == "5,6"


def test_external_engines_and_debug_modes_start_no_engines():
    assert plan_cpu("--actor-num-gpus-per-node", "1", "--rollout-external-engine-addrs", "h:1").num_engines == 0
    train_only = plan_cpu("--actor-num-gpus-per-node", "1", "--load-debug-rollout-data", "r_{rollout_id}.pt")
    assert train_only.num_engines == 0 and train_only.train_ranks == 1
    rollout_only = plan_cpu("--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "2", "--debug-rollout-only")
    assert rollout_only.train_ranks == 0 and rollout_only.engine_bundles == [[0], [1]]


def test_debug_train_only_needs_saved_rollouts():
    with pytest.raises(ConfigError, match="--debug-train-only starts no engines"):
        cfg_of("--debug-train-only")


def test_sglang_flags_map_to_the_builtin_engine():
    cfg = cfg_of(
        "--actor-num-gpus-per-node", "1", "--sglang-mem-fraction-static", "0.7", "--sglang-context-length", "512",
        "--sglang-enable-metrics", "--sglang-router-ip", "127.0.0.1", "--sglang-router-port", "9",
        "--sglang-disable-custom-all-reduce",
    )  # fmt: skip
    settings, ignored = builtin_server_settings(cfg)
    assert settings == {"log_level": "warning", "mem_fraction_static": 0.7, "max_model_len": 512,
                        "disable_custom_all_reduce": True}
    assert ignored == ["--sglang-enable-metrics"]
    assert engine_dtype(cfg, "cuda") == "bfloat16" and engine_dtype(cfg, "cpu") == "float32"
    fp32_router = cfg_of("--moe-router-dtype", "fp32")  # the engines route as the trainer does
    assert builtin_server_settings(fp32_router)[0] == {"log_level": "warning", "moe_router_dtype": "float32"}


def test_driver_exits_before_any_worker_when_gpus_are_missing(monkeypatch, tmp_path):
    import ray

    import temper.cluster.cluster as cluster_module
    from temper.quickstart import load_driver

    monkeypatch.setattr(cluster_module, "local_resources", lambda: (True, 16))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    from temper.testing import tiny_model_dir

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"input": "1 + 1 ="}\n')
    argv = [*BASE, "--actor-num-gpus-per-node", "8", "--rollout-num-gpus", "8", "--run-dir", str(tmp_path / "run")]
    argv += ["--hf-checkpoint", str(tiny_model_dir("qwen3")), "--prompt-data", str(prompts)]
    with pytest.raises(SystemExit, match=r"^train.py: error: the run asks for 16 GPUs .* but this machine has 2;"):
        load_driver("train").main(argv)
    assert not ray.is_initialized() and not (tmp_path / "run").exists()


def test_zero_gpus_on_a_cpu_means_one_cpu_worker():
    plan = plan_cpu("--actor-num-gpus-per-node", "0", "--colocate")
    assert plan.train_ranks == 1 and plan.num_engines == 1 and plan.num_bundles == 1
    with pytest.raises(ConfigError, match="needs at least one GPU"):
        plan_resources(
            cfg_of("--actor-num-gpus-per-node", "0", "--colocate"), cuda_available=False, cluster_gpus=4, cores=2
        )


def test_sglang_backend_gets_every_pass_through_flag():
    from temper.cluster.engine_group import sglang_flags

    assert sglang_flags({"mem_fraction_static": 0.7, "enable_metrics": True, "disable_cuda_graph": False, "cuda_graph_bs": [1, 2]}) == [
        "--mem-fraction-static", "0.7", "--enable-metrics", "--cuda-graph-bs", "1", "2",
    ]  # fmt: skip


def test_local_ray_head_starts_without_the_token_notice_and_keeps_token_auth():
    """Issue 17: every run printed Ray's token-authentication notice; the head temper starts drops that
    line, and authentication stays on (Ray sets RAY_AUTH_MODE=token for a new local head)."""
    probe = (
        "import os, ray\n"
        "from temper.cluster.placement import start_ray\n"
        "assert start_ray(1)\n"
        "print('AUTH', os.environ.get('RAY_AUTH_MODE'), flush=True)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "AUTH token" in done.stdout and "Token authentication is enabled" not in out


def test_token_notice_filter_drops_only_that_line():
    quiet = DropTokenNotice()

    def record(msg):
        return logging.LogRecord(TOKEN_NOTICE_LOGGER, logging.WARNING, __file__, 1, msg, None, None)

    assert not quiet.filter(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=..."))
    assert quiet.filter(record("Token authentication is disabled for this Ray cluster."))

"""train.py end to end on CPU on the tiny Qwen3-MoE with rollout routing replay (--use-rollout-routing-replay,
R3): a 2-rollout GRPO run with Ray, an engine server, an FSDP train rank and broadcast weight sync, in which
the engine returns every token's routed experts, the rollout keeps them on the samples and training
replays them; the train/rollout log-prob gap is reported."""

import pytest

from temper.cluster import CPU_OVERSUBSCRIPTION
from temper.cluster.placement import local_resources
from temper.quickstart import load_driver, write_prompts
from temper.rollout.recording import read_file
from temper.testing import build_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    import ray

    ray.init(num_cpus=local_resources()[1] * CPU_OVERSUBSCRIPTION, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def test_two_rollout_grpo_run_with_rollout_routing_replay(tmp_path):
    model = build_tiny_model(tmp_path / "model", "qwen3_moe", seed=0)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    flags = [
        "--hf-checkpoint", str(model), "--prompt-data", str(prompts), "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--custom-rm-path", "temper.quickstart.reward", "--advantage-estimator", "grpo",
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--rollout-max-response-len", "8",
        "--num-rollout", "2", "--lr", "3e-2", "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096",
        "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1", "--run-dir", str(tmp_path / "run"),
        "--use-rollout-routing-replay",
    ]  # fmt: skip
    steps = load_driver("train").main(flags)
    assert [s["step"] for s in steps] == [0, 1]
    assert all(s["train/train_rollout_logprob_abs_diff"] < 1e-5 and s["train/grad_norm"] > 0 for s in steps)
    samples = read_file(tmp_path / "run" / "rollouts" / "000001.pkl.gz")
    assert samples and all(s.rollout_routed_experts.shape == (len(s.tokens) - 1, 2, 2) for s in samples)
    assert all(((s.rollout_routed_experts >= 0) & (s.rollout_routed_experts < 8)).all() for s in samples)

"""train.py end to end on CPU on the tiny MoE architectures (and GLM4, dense, of the same model families): 2-rollout
GRPO runs with Ray, an engine server, an FSDP train rank and broadcast weight sync.

- Qwen3-MoE with rollout routing replay (--use-rollout-routing-replay, R3): the engine returns every token's
  routed experts, the rollout keeps them on the samples and training replays them; the train/rollout log-prob
  gap is reported.
- DeepSeek-V3 (MLA + grouped-routing MoE), checked at every sync.
- GLM4 (dense: partial rotary, attention bias, the extra norms), checked at every sync.
- GLM-4.5 (GLM's attention + DeepSeek-V3's MoE), in bf16 on both sides (its router stays float32 in the engine),
  with R3 and checked at every sync.
- On one GPU (skipped without CUDA): each of the three, colocated, bf16, with R3 and checked at every sync (the
  engine's kernels, its CUDA graphs and the ipc transport under train.py)."""

import pytest
import torch

from temper.quickstart import load_driver, write_prompts
from temper.rollout.recording import read_file
from temper.testing import build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster", "plots_unrasterized")]


def grpo_run(tmp_path, arch: str, *extra: str, bf16: bool = False, gpu: bool = False) -> list[dict]:
    """The step records of a 2-rollout GRPO run of train.py on the tiny `arch` model (+ `extra` flags); `bf16`:
    a bf16 checkpoint, trainer and engine; `gpu`: trainer and engine colocated on one GPU (bf16 there)."""
    bf16 = bf16 or gpu
    place = ["--colocate", "--sglang-mem-fraction-static", "0.3"] if gpu else ["--rollout-num-gpus", "1"]
    model = build_tiny_model(tmp_path / "model", arch, seed=0, dtype=torch.bfloat16 if bf16 else torch.float32)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    flags = [
        "--hf-checkpoint", str(model), "--prompt-data", str(prompts), "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--custom-rm-path", "temper.quickstart.reward", "--advantage-estimator", "grpo",
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--rollout-max-response-len", "8",
        "--num-rollout", "2", "--lr", "3e-2", "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096",
        "--actor-num-gpus-per-node", "1", *place, "--run-dir", str(tmp_path / "run"), *extra,
        *(["--bf16", "--sglang-dtype", "bfloat16"] if bf16 else []),
    ]  # fmt: skip
    steps = load_driver("train").main(flags)
    assert [s["step"] for s in steps] == [0, 1]
    gap = 1e-2 if bf16 else 1e-5  # bf16: the engine's kernels and the trainer's round differently
    assert all(s["train/train_rollout_logprob_abs_diff"] < gap and s["train/grad_norm"] > 0 for s in steps)
    return steps


def test_two_rollout_grpo_run_with_rollout_routing_replay(tmp_path):
    grpo_run(tmp_path, "qwen3_moe", "--use-rollout-routing-replay")
    samples = read_file(tmp_path / "run" / "rollouts" / "000001.pkl.gz")
    assert samples and all(s.rollout_routed_experts.shape == (len(s.tokens) - 1, 2, 2) for s in samples)
    assert all(((s.rollout_routed_experts >= 0) & (s.rollout_routed_experts < 8)).all() for s in samples)


def test_two_rollout_grpo_run_of_deepseek_v3(tmp_path):
    steps = grpo_run(tmp_path, "deepseek_v3", "--check-weight-update-equal")
    assert [s["sync/weight_version"] for s in steps] == [1.0, 2.0]
    # every parameter is compared after the sync (e_score_correction_bias is a buffer the trainer never changes)
    assert all(s["sync/checked_tensors"] == 51 for s in steps)


def test_two_rollout_grpo_run_of_glm4(tmp_path):
    steps = grpo_run(tmp_path, "glm4", "--check-weight-update-equal")
    assert [s["sync/weight_version"] for s in steps] == [1.0, 2.0]
    assert all(s["sync/checked_tensors"] == 28 for s in steps)  # every tensor of the checkpoint


def test_two_rollout_grpo_run_of_glm4_moe(tmp_path):
    steps = grpo_run(tmp_path, "glm4_moe", "--use-rollout-routing-replay", "--check-weight-update-equal", bf16=True)
    assert [s["sync/weight_version"] for s in steps] == [1.0, 2.0]
    assert all(s["sync/checked_tensors"] == 55 for s in steps)  # every checkpoint tensor but the expert-bias buffer
    samples = read_file(tmp_path / "run" / "rollouts" / "000001.pkl.gz")
    assert samples and all(s.rollout_routed_experts.shape == (len(s.tokens) - 1, 2, 2) for s in samples)
    assert all((s.rollout_routed_experts[:, 0] == -1).all() for s in samples)  # layer 0 is dense


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch,checked", [("qwen3_moe", 68), ("deepseek_v3", 51), ("glm4_moe", 55)])
def test_two_rollout_grpo_run_on_one_gpu(tmp_path, arch, checked):
    steps = grpo_run(tmp_path, arch, "--use-rollout-routing-replay", "--check-weight-update-equal", gpu=True)
    assert [s["sync/weight_version"] for s in steps] == [1.0, 2.0]
    assert all(s["sync/checked_tensors"] == checked for s in steps)
    samples = read_file(tmp_path / "run" / "rollouts" / "000001.pkl.gz")
    assert samples and all(s.rollout_routed_experts.shape == (len(s.tokens) - 1, 2, 2) for s in samples)

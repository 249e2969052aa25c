"""RolloutManager: reward normalization by group_index, exclusions, plug-ins from files, state, debug data."""

from __future__ import annotations

import random

import pytest
import torch
from rollout_helpers import fake_engine_app, make_args, serve, write_jsonl, write_plugin

from temper.rollout import RolloutManager, post_process_rewards
from temper.types import Sample

ROLLOUT_PLUGIN = """
from temper.rollout import RolloutFnTrainOutput
from temper.types import Sample

def sample(g, i, reward, status=Sample.Status.COMPLETED, **kw):
    s = Sample(group_index=g, index=4 * g + i, tokens=[1, 2, 3, 4][: 2 + i % 3], response_length=1 + i % 2,
               reward=reward, status=status, **kw)
    return s

def legacy(args, rollout_id, data_source, evaluation=False):
    '''Returns bare groups (slime's legacy form), with one aborted, one failed and one removed sample.'''
    return [
        [sample(0, 0, 1.0), sample(0, 1, 0.0), sample(0, 2, 0.0, status=Sample.Status.ABORTED)],
        [sample(1, 0, 3.0, remove_sample=True), sample(1, 1, 1.0), sample(1, 2, 9.0, status=Sample.Status.FAILED)],
    ]

async def typed(args, rollout_id, data_source, evaluation=False):
    if evaluation:
        samples = [sample(0, 0, 1.0), sample(0, 1, 0.0)]
        return {"toy": {"rewards": [1.0, 0.0], "truncated": [False, True], "samples": samples}}
    return RolloutFnTrainOutput(samples=[[sample(0, 0, {"acc": 1.0}), sample(0, 1, {"acc": 0.0})]],
                                metrics={"rollout/custom": 7.0})

def post_process(args, samples):
    raw = [s.get_reward_value(args.reward_key) for s in samples]
    return raw, [r * 10 for r in raw]
"""


@pytest.fixture()
def plugin(tmp_path):
    return write_plugin(tmp_path, "rollout_plugins", ROLLOUT_PLUGIN)


@pytest.fixture()
def prompts(tmp_path):
    return write_jsonl(tmp_path / "p.jsonl", [{"input": f"q{i}"} for i in range(4)])


def expected_grpo(rewards: list[float], groups: list[int], std: bool = True) -> list[float]:
    out = []
    for r, g in zip(rewards, groups):
        members = torch.tensor([x for x, h in zip(rewards, groups) if h == g])
        value = r - members.mean().item()
        out.append(value / (members.std().item() + 1e-6) if std else value)
    return out


def shuffled_samples(seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    samples = [
        Sample(group_index=g, index=4 * g + i, reward=float(rng.randint(0, 3))) for g in range(3) for i in range(4)
    ]
    rng.shuffle(samples)
    return samples


def test_grpo_normalizes_by_group_index_not_position():
    samples = shuffled_samples()
    raw, rewards = post_process_rewards(make_args("--n-samples-per-prompt", "4"), samples)
    groups = [s.group_index for s in samples]
    assert raw == [s.reward for s in samples]
    assert rewards == pytest.approx(expected_grpo(raw, groups), abs=1e-5)


@pytest.mark.parametrize(
    "flags, std",
    [
        (["--advantage-estimator", "gspo"], True),
        (["--disable-grpo-std-normalization"], False),
        (["--advantage-estimator", "reinforce_plus_plus_baseline", "--normalize-advantages"], False),
    ],
)
def test_normalized_estimators(flags, std):
    samples = shuffled_samples(1)
    raw, rewards = post_process_rewards(make_args("--n-samples-per-prompt", "4", *flags), samples)
    assert rewards == pytest.approx(expected_grpo(raw, [s.group_index for s in samples], std=std), abs=1e-5)


@pytest.mark.parametrize(
    "flags",
    [
        ["--advantage-estimator", "ppo"],
        ["--advantage-estimator", "rloo"],
        ["--advantage-estimator", "reinforce_plus_plus", "--normalize-advantages"],
        ["--disable-rewards-normalization"],
    ],
)
def test_raw_rewards_pass_through(flags):
    samples = shuffled_samples(2)
    raw, rewards = post_process_rewards(make_args("--n-samples-per-prompt", "4", *flags), samples)
    assert rewards == raw


def test_custom_reward_post_process_from_file(plugin):
    args = make_args("--custom-reward-post-process-path", f"{plugin}:post_process")
    raw, rewards = post_process_rewards(args, [Sample(reward=1.0), Sample(reward=0.5)])
    assert (raw, rewards) == ([1.0, 0.5], [10.0, 5.0])


def test_generate_excludes_aborted_and_failed_and_keeps_removed(plugin, prompts):
    args = make_args(
        "--prompt-data", prompts, "--n-samples-per-prompt", "3", "--rollout-function-path", f"{plugin}:legacy"
    )
    manager = RolloutManager(args, "http://127.0.0.1:9")
    batch = manager.generate(0)
    assert batch.sample_indices == [0, 1, 4, 5]
    assert batch.raw_rewards.tolist() == [1.0, 0.0, 3.0, 1.0]
    assert batch.rewards.tolist() == pytest.approx(expected_grpo([1.0, 0.0, 3.0, 1.0], [0, 0, 1, 1]), abs=1e-5)
    assert batch.loss_masks[2].sum() == 0  # removed: in normalization, out of the loss
    metrics = manager.last_metrics
    assert metrics["rollout/num_excluded_aborted"] == 1 and metrics["rollout/num_excluded_failed"] == 1
    assert metrics["rollout/num_samples"] == 4 and metrics["rollout/num_removed"] == 1
    assert metrics["rollout/raw_reward"] == 1.25
    assert (args.sglang_router_ip, args.sglang_router_port) == ("127.0.0.1", 9)


def test_async_rollout_function_dict_rewards_and_eval(plugin, prompts):
    args = make_args("--prompt-data", prompts, "--rollout-function-path", f"{plugin}:typed", "--reward-key", "acc")
    manager = RolloutManager(args, "http://127.0.0.1:9")
    batch = manager.generate(0)
    assert batch.raw_rewards.tolist() == [1.0, 0.0] and manager.last_metrics["rollout/custom"] == 7.0
    metrics = manager.eval(0)
    assert metrics["eval/toy"] == 0.5 and metrics["eval/toy/truncated_ratio"] == 0.5


def test_debug_rollout_data_round_trip(plugin, prompts, tmp_path):
    template = str(tmp_path / "debug" / "rollout_{rollout_id}.pt")
    args = make_args(
        "--prompt-data", prompts, "--n-samples-per-prompt", "3", "--rollout-function-path", f"{plugin}:legacy",
        "--save-debug-rollout-data", template,
    )  # fmt: skip
    with RolloutManager(args, "http://127.0.0.1:9") as manager:  # closing waits for the background write
        saved = manager.generate(5)
    replay_args = make_args(
        "--prompt-data", prompts, "--n-samples-per-prompt", "3", "--load-debug-rollout-data", template
    )
    replayed = RolloutManager(replay_args, "http://127.0.0.1:9").generate(5)
    assert replayed.sample_indices == saved.sample_indices and torch.equal(replayed.rewards, saved.rewards)
    with pytest.raises(FileNotFoundError, match="no saved rollout 6"):
        RolloutManager(replay_args, "http://127.0.0.1:9").generate(6)


def test_save_and_load_delegate_to_the_data_source(prompts, tmp_path):
    args = make_args("--prompt-data", prompts, "--save", str(tmp_path / "ckpt"))
    manager = RolloutManager(args, "http://127.0.0.1:9")
    manager.data_source.get_samples(3)
    path = manager.save(2)
    assert path.endswith("data_source_state_2.json")
    resumed = RolloutManager(
        make_args("--prompt-data", prompts, "--load", str(tmp_path / "ckpt")), "http://127.0.0.1:9"
    )
    assert resumed.load() is True and resumed.data_source.sample_offset == 3


def test_engine_list_starts_a_router(prompts):
    with serve(fake_engine_app("a")) as a, serve(fake_engine_app("b")) as b:
        args = make_args("--prompt-data", prompts)
        with RolloutManager(args, [a, b]) as manager:
            assert manager.router is not None and manager.router_url == manager.router.url
            assert f"http://{args.sglang_router_ip}:{args.sglang_router_port}" == manager.router_url
            assert manager.engine_urls() == [a, b]
        assert manager.router is None


def test_log_passrate_gives_pass_at_k_over_training_groups_and_eval_always_has_it(plugin, prompts):
    """slime's passrate/pass@k with --log-passrate, over the trainable samples' groups (reward 1 passes)."""
    flags = ["--prompt-data", prompts, "--n-samples-per-prompt", "3", "--rollout-function-path", f"{plugin}:legacy"]
    manager = RolloutManager(make_args(*flags), "http://127.0.0.1:9")
    manager.generate(0)
    assert not any(k.startswith("passrate/") for k in manager.last_metrics)
    manager = RolloutManager(make_args(*flags, "--log-passrate"), "http://127.0.0.1:9")
    manager.generate(0)
    # group 0: rewards 1, 0 (the aborted one excluded); group 1: 3 (not 1: fails), 1
    assert {k: v for k, v in manager.last_metrics.items() if k.startswith("passrate/")} == {
        "passrate/pass@1": 0.5,
        "passrate/pass@2": 1.0,
    }
    args = make_args("--prompt-data", prompts, "--rollout-function-path", f"{plugin}:typed", "--reward-key", "acc")
    metrics = RolloutManager(args, "http://127.0.0.1:9").eval(0)
    assert metrics["eval/toy/pass@1"] == 0.5 and metrics["eval/toy/pass@2"] == 1.0


def test_rollout_metrics_lengths_quantiles_and_groups_without_signal():
    from temper.rollout.manager import rollout_metrics

    samples = [Sample(group_index=g, index=i, response_length=n) for i, (g, n) in enumerate([(0, 1), (0, 2), (1, 3), (1, 10)])]
    metrics = rollout_metrics(samples, [1.0, 1.0, 0.0, 1.0])
    assert metrics["rollout/response_len_mean"] == 4.0 and metrics["rollout/response_len_max"] == 10
    assert (metrics["rollout/response_len_p50"], metrics["rollout/response_len_p90"]) == (2.0, 10.0)
    assert metrics["rollout/zero_std_groups"] == 1.0  # group 0 rewards all 1.0: no GRPO signal

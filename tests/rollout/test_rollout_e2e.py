"""End to end on CPU: two real temper engine servers (tiny Qwen3) behind the built-in router on 127.0.0.1,
driven by RolloutManager and the default generate function."""

from __future__ import annotations

import pytest
from rollout_helpers import make_args, running_engine_servers, tiny_dir, write_jsonl, write_plugin

from temper.rollout import RolloutManager
from temper.types import Sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine_servers():
    with running_engine_servers(2) as urls:
        yield urls


LABEL_RM = """
def rm(args, sample):
    return 0.0 if sample.label == "zero" else float(sample.index % 2)
"""


def e2e_args(tmp_path, labels, *flags):
    data = write_jsonl(
        tmp_path / "train.jsonl", [{"input": f"What is {i} + {i}?", "label": lab} for i, lab in enumerate(labels)]
    )
    return make_args(
        "--prompt-data", data, "--label-key", "label", "--hf-checkpoint", str(tiny_dir()), "--apply-chat-template",
        "--n-samples-per-prompt", "4", "--rollout-max-response-len", "12", "--rollout-temperature", "1.0", *flags,
    )  # fmt: skip


def test_rollout_of_4_prompts_x_4_samples(tmp_path, engine_servers):
    args = e2e_args(tmp_path, [str(2 * i) for i in range(8)], "--rollout-batch-size", "4", "--rm-type", "math")
    with RolloutManager(args, engine_servers) as manager:
        first = manager.generate(0)
        second = manager.generate(1)
        policy = manager.router.router.policy
    assert first.group_indices == [g for g in range(4) for _ in range(4)]
    assert first.sample_indices == list(range(16)) and second.sample_indices == list(range(16, 32))
    for batch in (first, second):
        assert all(len(lp) == n for lp, n in zip(batch.rollout_log_probs, batch.response_lengths))
        assert all(0 < n <= 12 for n in batch.response_lengths)
        assert all(v == ["default"] for v in batch.weight_versions)
        assert batch.raw_rewards.tolist() == [0.0] * 16  # a random tiny model does not box answers
    # A group's 4 samples go out as one batched request, to one engine (the group's routing key).
    assert {key: (a.requests, a.reassigned) for key, a in policy.affinity.items()} == {
        f"group-{g}": (1, 0) for g in range(8)
    }
    assert sorted(w.total_requests for w in policy.workers.values()) == [4, 4]
    metrics = manager.last_metrics
    assert metrics["rollout/num_samples"] == 16 and "rollout/cached_token_ratio" in metrics
    # when the 4 requests went out and their answers came back, within the rollout's own time
    times = [metrics[f"rollout/{k}"] for k in ("first_request_sent_s", "last_request_sent_s", "last_answer_s")]
    assert metrics["rollout/requests"] == 4 and metrics["rollout/requested_samples"] == 16
    assert 0 <= times[0] <= times[1] <= times[2] <= metrics["rollout/generation_time"]
    assert times[0] <= metrics["rollout/first_answer_s"] <= times[2]
    # the engines' steps in the rollout: at least one prefill, and a decode step for each of the 12 tokens
    assert metrics["rollout/engine_prefill_steps"] >= 1 and metrics["rollout/engine_decode_steps"] >= 11
    assert 0 < metrics["rollout/engine_busy_s"] <= 2 * metrics["rollout/generation_time"]  # two engines
    assert metrics["rollout/engine_ms_per_step"] > 0 and metrics["rollout/engine_preemptions"] == 0
    # the engines' last busy period lies inside the rollout: it starts after the first request went out
    # and ends (the engines idle) before the last answer came back
    assert metrics["rollout/engine_busy_periods"] >= 2  # two engines, at least one period each
    start, idle = metrics["rollout/engine_busy_start_s"], metrics["rollout/engine_idle_at_s"]
    assert times[0] <= start <= idle <= times[2] + 0.05


def test_dynamic_filter_drops_zero_std_groups(tmp_path, engine_servers):
    rm = write_plugin(tmp_path, "label_rm", LABEL_RM)
    labels = ["zero", "zero", "mixed", "zero", "mixed", "zero", "mixed", "mixed"]
    args = e2e_args(
        tmp_path, labels, "--over-sampling-batch-size", "2", "--custom-rm-path", f"{rm}:rm",
        "--dynamic-sampling-filter-path", "temper.rollout.filters.check_reward_nonzero_std",
    )  # fmt: skip
    with RolloutManager(args, engine_servers) as manager:
        batch = manager.generate(0)
    assert len(batch) == 8 and len(set(batch.group_indices)) == 2
    assert all(labels[g % len(labels)] == "mixed" for g in batch.group_indices)
    assert batch.raw_rewards.tolist() == [float(i % 2) for i in batch.sample_indices]
    assert manager.last_metrics["rollout/dynamic_filter/drop_zero_std_0.0"] >= 2


def test_abort_and_partial_rollout_recycle_unfinished_groups(tmp_path, engine_servers):
    args = e2e_args(
        tmp_path, ["a"] * 8, "--rollout-batch-size", "1", "--over-sampling-batch-size", "4",
        "--rm-type", "f1", "--rollout-max-response-len", "48", "--sglang-server-concurrency", "1", "--partial-rollout",
    )  # fmt: skip
    with RolloutManager(args, engine_servers) as manager:
        first = manager.generate(0)
        buffered = [s for g in manager.data_source.buffer for s in g]
        assert len(first) == 4 and len(manager.data_source.buffer) == 3
        assert all(len(g) == 4 for g in manager.data_source.buffer)
        assert any(s.status == Sample.Status.ABORTED for s in buffered)
        assert all(s.metadata.get("start_rollout_id") == 0 for s in buffered if s.response_length)
        partial = {s.index: s.response_length for s in buffered if s.status == Sample.Status.ABORTED}

        second = manager.generate(1)
        leftover = [s for g in manager.data_source.buffer for s in g]
    seen = list(first.sample_indices) + list(second.sample_indices) + [s.index for s in leftover]
    assert sorted(seen) == list(range(len(seen))) and len(seen) == 20  # 5 groups pulled, none lost or repeated
    assert set(second.group_indices) <= {1, 2, 3, 4}
    for i, n in zip(second.sample_indices, second.response_lengths):
        assert n <= 48 and n >= partial.get(i, 0)  # continued from where the abort left it


def test_eval_reports_every_dataset(tmp_path, engine_servers):
    a = write_jsonl(tmp_path / "a.jsonl", [{"input": "Say hi", "label": "hi"}, {"input": "Say yes", "label": "yes"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"input": "Name a color", "label": "red"}])
    args = e2e_args(
        tmp_path, ["x"], "--rm-type", "f1", "--eval-prompt-data", "greet", a, "color", b,
        "--n-samples-per-eval-prompt", "2", "--eval-max-response-len", "6",
    )  # fmt: skip
    with RolloutManager(args, engine_servers) as manager:
        output = manager.eval_fn(args, 0, manager.data_source, evaluation=True)
        metrics = manager.eval(0)
    assert {name: len(d["rewards"]) for name, d in output.data.items()} == {"greet": 4, "color": 2}
    for data in output.data.values():
        assert all(0.0 <= r <= 1.0 for r in data["rewards"])
        assert all(s.response_length <= 6 and s.status != Sample.Status.ABORTED for s in data["samples"])
    assert {"eval/greet", "eval/color", "eval/greet/truncated_ratio"} <= set(metrics)

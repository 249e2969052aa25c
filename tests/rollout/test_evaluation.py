"""The eval rollout with --eval-config: each dataset's samples per prompt, sampling and reward reach the
generate and reward functions; pass@k per dataset (no engine: a generate plug-in that echoes its params)."""

from __future__ import annotations

import pytest
from rollout_helpers import make_args, write_jsonl, write_plugin

from temper.rollout import generate_rollout
from temper.rollout.evaluation import eval_datasets, eval_metrics, load_eval_dataset
from temper.types import Sample

PLUGIN = """
async def generate(args, sample, sampling_params):
    '''max_new_tokens tokens, cut at the length limit; the params are kept in the metadata.'''
    sample.metadata["params"] = dict(sampling_params)
    n = sampling_params["max_new_tokens"]
    sample.tokens = [1, 2]
    sample.append_response_tokens(list(range(3, 3 + n)), [-0.1] * n, finish_reason="length", text="x" * n)
    return sample

def even_passes(args, sample):
    return float(sample.index % 2 == 0)

def zero(args, sample):
    return 0.0
"""

CONFIG = """
eval:
  defaults:
    n_samples_per_eval_prompt: 2
  datasets:
    - name: hard
      path: {hard}
      input_key: question
      custom_rm_path: {plugin}:even_passes
      n_samples_per_eval_prompt: 4
      max_response_len: 3
      temperature: 0.5
      metadata_overrides: {{source: hard}}
    - name: easy
      path: {easy}
"""


def test_eval_config_settings_reach_generation_and_rewards(tmp_path):
    plugin = write_plugin(tmp_path, "echo_engine", PLUGIN)
    hard = write_jsonl(tmp_path / "hard.jsonl", [{"question": "q0"}, {"question": "q1"}])
    easy = write_jsonl(tmp_path / "easy.jsonl", [{"input": "e0"}])
    config = tmp_path / "eval.yaml"
    config.write_text(CONFIG.format(hard=hard, easy=easy, plugin=plugin))
    args = make_args(
        "--eval-config", str(config), "--custom-generate-function-path", f"{plugin}:generate",
        "--custom-rm-path", f"{plugin}:zero", "--eval-max-response-len", "5", "--rollout-temperature", "0.9",
    )  # fmt: skip
    assert eval_datasets(args) == {"hard": hard, "easy": easy}
    assert [s.prompt for s in load_eval_dataset(args, "hard", hard)] == ["q0", "q1"]  # its own input_key
    out = generate_rollout(args, 0, None, evaluation=True)

    hard_samples, easy_samples = out.data["hard"]["samples"], out.data["easy"]["samples"]
    assert [s.group_index for s in hard_samples] == [0] * 4 + [1] * 4  # 4 samples per prompt
    assert {(s.response_length, s.metadata["params"]["temperature"]) for s in hard_samples} == {(3, 0.5)}
    assert all(s.metadata["source"] == "hard" and s.status == Sample.Status.TRUNCATED for s in hard_samples)
    assert len(easy_samples) == 2  # eval.defaults
    assert {(s.response_length, s.metadata["params"]["temperature"]) for s in easy_samples} == {(5, 0.9)}  # flags
    assert out.data["hard"]["rewards"] == [1.0, 0.0] * 4 and out.data["easy"]["rewards"] == [0.0, 0.0]

    metrics = out.metrics
    assert metrics["eval/hard"] == 0.5 and metrics["eval/hard/truncated_ratio"] == 1.0
    assert metrics["eval/hard/pass@1"] == pytest.approx(0.5)
    assert metrics["eval/hard/pass@2"] == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2), both prompts
    assert metrics["eval/hard/pass@4"] == pytest.approx(1.0)
    assert "eval/hard/pass@8" not in metrics
    assert metrics["eval/easy/pass@1"] == metrics["eval/easy/pass@2"] == 0.0
    assert metrics["eval/easy/response_len_mean"] == 5.0


def test_rewards_without_samples_are_grouped_by_the_datasets_n():
    args = make_args("--eval-prompt-data", "toy", "toy.jsonl", "--n-samples-per-eval-prompt", "2")
    metrics = eval_metrics({"toy": {"rewards": [1.0, 0.0, 0.0, 0.0]}}, args)
    assert metrics == {"eval/toy": 0.25, "eval/toy/pass@1": 0.25, "eval/toy/pass@2": 0.5}

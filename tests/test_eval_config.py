"""--eval-config: slime's eval.defaults / eval.datasets format, per-dataset settings resolved against the
flags, and bad files stopped at parse time naming file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from temper.command_line import parse_config
from temper.config import ConfigError
from temper.eval_config import EvalDataset, eval_datasets_of

BASE = ["--rollout-batch-size", "2", "--num-rollout", "1", "--actor-num-gpus-per-node", "1"]


@pytest.fixture()
def data(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"input": "x", "label": "1"}\n')
    return tmp_path


def write(tmp_path, text: str) -> str:
    path = tmp_path / "eval.yaml"
    path.write_text(textwrap.dedent(text).replace("DIR", str(tmp_path)))
    return str(path)


def parse(*flags: str):
    return parse_config([*BASE, *flags], check_shape=False)


def test_slime_format_with_defaults_and_flag_fallbacks(data):
    config = write(
        data,
        """
        eval:
          defaults:
            n_samples_per_eval_prompt: 4
            max_response_len: 32
            top_p: 0.7
          datasets:
            - name: aime
              path: DIR/a.jsonl
              rm_type: deepscaler
              prompt_key: problem       # slime's older name for input_key
              temperature: 0.6
              n_samples_per_eval_prompt: 8
              stop: "</answer>"
              metadata_overrides: {difficulty: hard}
            - name: gsm8k
              path: DIR/b.jsonl@[0:1]
        """,
    )
    cfg = parse("--eval-config", config, "--eval-interval", "1", "--input-key", "q", "--label-key", "answer",
                "--n-samples-per-eval-prompt", "2", "--eval-label-key", "gold", "--apply-chat-template")  # fmt: skip
    aime, gsm8k = eval_datasets_of(cfg)
    assert aime == EvalDataset(
        name="aime", path=f"{data}/a.jsonl", input_key="problem", label_key="gold", apply_chat_template=True,
        rm_type="deepscaler", n_samples_per_eval_prompt=8, temperature=0.6, top_p=0.7, max_response_len=32,
        stop=["</answer>"], metadata_overrides={"difficulty": "hard"},
    )  # fmt: skip
    assert (gsm8k.input_key, gsm8k.n_samples_per_eval_prompt, gsm8k.max_response_len) == ("q", 4, 32)
    assert gsm8k.temperature is None and gsm8k.rm_type is None  # the eval/rollout flags, the run's reward
    assert aime.sampling_overrides() == {"temperature": 0.6, "top_p": 0.7, "max_new_tokens": 32, "stop": ["</answer>"]}
    assert aime.sample_metadata() == {"rm_type": "deepscaler", "difficulty": "hard"}


def test_root_may_be_the_eval_section_and_datasets_a_mapping(data):
    config = write(
        data,
        """
        datasets:
          aime: {path: DIR/a.jsonl, temperature: 1.0}
          gsm8k:
            path: DIR/b.jsonl
        """,
    )
    specs = eval_datasets_of(parse("--eval-config", config))
    assert [(d.name, d.temperature, d.n_samples_per_eval_prompt) for d in specs] == [("aime", 1.0, 1), ("gsm8k", None, 1)]


def test_eval_prompt_data_pairs_take_the_flags():
    cfg = parse("--eval-prompt-data", "a", "a.jsonl", "b", "b.jsonl", "--n-samples-per-eval-prompt", "3")
    assert [(d.name, d.path, d.n_samples_per_eval_prompt) for d in eval_datasets_of(cfg)] == [
        ("a", "a.jsonl", 3),
        ("b", "b.jsonl", 3),
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ("eval:\n  datasets:\n    - name: a\n      path: DIR/a.jsonl\n      tempreature: 0.5\n",
         r":5: datasets\[0\] \(a\): unknown field 'tempreature' \(did you mean temperature\?\)"),
        ("eval:\n  datasets:\n    - name: a\n      path: DIR/a.jsonl\n      n_samples_per_eval_prompt: four\n",
         r":5: datasets\[0\] \(a\): field 'n_samples_per_eval_prompt' must be an integer >= 1, got 'four'"),
        ("eval:\n  defaults:\n    top_p: 2\n  datasets:\n    - {name: a, path: DIR/a.jsonl}\n",
         r":3: defaults: field 'top_p' must be a number in \(0.0, 1.0\], got 2"),
        ("eval:\n  datasets:\n    - name: a\n",
         r":3: datasets\[0\] \(a\) has no 'path'"),
        ("eval:\n  datasets:\n    - name: a\n      path: DIR/missing.jsonl\n",
         r":4: datasets\[0\] \(a\): path '.*missing.jsonl': file not found"),
        ("eval:\n  datasets:\n    - {name: a, path: DIR/a.jsonl}\n    - {name: a, path: DIR/b.jsonl}\n",
         r":4: datasets\[1\] \(a\): dataset name 'a' is given more than once"),
        ("eval:\n  datasets:\n    - {name: a, path: DIR/a.jsonl, min_new_tokens: 4}\n",
         r":3: datasets\[0\] \(a\): field 'min_new_tokens' is slime's but not supported by temper"),
        ("eval:\n  datasets: []\n", r":2: `datasets` must list at least one dataset"),
        ("eval:\n  datasets:\n    - name: a\n     path: x\n", r":4: not valid YAML"),
    ],
)
def test_bad_files_stop_at_parse_naming_file_line_and_field(data, body, message):
    config = write(data, body)
    with pytest.raises(ConfigError, match=f"^--eval-config {config}{message}"):
        parse("--eval-config", config)


def test_eval_config_excludes_eval_prompt_data_and_satisfies_eval_interval(data):
    config = write(data, "eval:\n  datasets:\n    - {name: a, path: DIR/a.jsonl}\n")
    with pytest.raises(ConfigError, match="--eval-config and --eval-prompt-data both name eval datasets"):
        parse("--eval-config", config, "--eval-prompt-data", "b", str(data / "b.jsonl"))
    with pytest.raises(ConfigError, match="--eval-interval needs --eval-prompt-data NAME PATH or --eval-config"):
        parse("--eval-interval", "1")
    assert parse("--eval-config", config, "--eval-interval", "1").eval_interval == 1
    with pytest.raises(ConfigError, match="file not found"):
        parse("--eval-config", str(data / "nope.yaml"))

"""examples/math: the data script writes GSM8K-format rows that `--rm-type math` grades, and the README's
CPU command runs train.py on the tiny model (2 steps, with eval)."""

import asyncio
import json
import re

import pytest
import torch
from example_helpers import EXAMPLES, load_example, readme_train_commands, substituted

from temper.command_line import parse_config
from temper.quickstart import load_driver
from temper.rollout.rewards import async_rm
from temper.testing import build_tiny_model, tiny_model_dir
from temper.types import Sample

README = EXAMPLES / "math" / "README.md"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("gsm8k")
    load_example("math/make_gsm8k_data.py").main(["--out-dir", str(out), "--train-size", "40", "--test-size", "4"])
    return out


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_are_gsm8k_format_and_consistent(data):
    train = rows(data / "train.jsonl")
    assert len(train) == 40 and len(rows(data / "test.jsonl")) == 4
    assert len({row["question"] for row in train}) > 30
    for row in train:
        *steps, final = row["answer"].split("\n")
        assert final == f"#### {row['label']}" and steps
        for expr, value in re.findall(r"<<([\d+\-*/]+)=(-?\d+)>>", row["answer"]):
            assert eval(expr) == int(value), row  # the calculator annotations are right  # noqa: S307
        assert re.search(rf"<<[^>]*={row['label']}>>", steps[-1])  # the last step computes the answer
        assert row["messages"][0]["role"] == "user" and row["question"] in row["messages"][0]["content"]
        assert "\\boxed{}" in row["messages"][0]["content"]
    same = load_example("math/make_gsm8k_data.py").make_rows(40, 0)
    assert same == train  # seeded


def test_rm_type_math_grades_the_labels(data):
    args = parse_config(["--rollout-batch-size", "1", "--num-rollout", "1", "--rm-type", "math"])
    row = rows(data / "train.jsonl")[0]

    def reward(response: str) -> float:
        return asyncio.run(async_rm(args, Sample(index=0, response=response, label=row["label"])))

    assert reward(f"So the answer is \\boxed{{{row['label']}}}.") == 1.0
    assert reward(f"So the answer is \\boxed{{{int(row['label']) + 1}}}.") == 0.0
    assert reward(f"The answer is {row['label']}.") == 0.0  # no \boxed{}: no reward


def test_readme_gpu_command_parses():
    gpu, _ = readme_train_commands(README)
    cfg = parse_config(substituted(gpu, {"/path/to/Qwen3-0.6B": tiny_model_dir("qwen3")}))
    assert cfg.rm_type == "math" and cfg.colocate and cfg.n_samples_per_prompt == 8


@pytest.mark.slow
@pytest.mark.usefixtures("plots_unrasterized")
def test_readme_cpu_command_trains_two_steps(data, tmp_path):
    _, cpu = readme_train_commands(README)
    build_tiny_model(tmp_path / "model", "qwen3", seed=0)
    argv = substituted(cpu, {"tiny-model": tmp_path / "model", "data/gsm8k": data, "runs/math-tiny": tmp_path / "run"})
    saved = str(tmp_path / "rollouts" / "{rollout_id}.pt")
    steps = load_driver("train").main([*argv, "--save-debug-rollout-data", saved])
    assert [s["step"] for s in steps] == [0, 1]
    assert all(0.0 <= s["rollout/raw_reward"] <= 1.0 for s in steps)
    assert "eval/gsm8k" in steps[-1]
    samples = torch.load(tmp_path / "rollouts" / "0.pt", weights_only=False)["samples"]
    labels = {row["label"] for row in rows(data / "train.jsonl")}
    assert len(samples) == 8 and all(s["label"] in labels and s["reward"] in (0.0, 1.0) for s in samples)

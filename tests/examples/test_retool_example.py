"""examples/retool: the data's answers, tool turns through temper's sandbox against a scripted engine
(output masked, errors returned to the model), the reward, and the README's commands on the tiny model."""

import asyncio
import json
import math
import random

import pytest
import torch
from example_helpers import EXAMPLES, ROOT, load_example, readme_train_commands, run_scripted, substituted
from transformers import AutoTokenizer

from temper.command_line import parse_config
from temper.quickstart import load_driver
from temper.testing import build_tiny_model, tiny_model_dir
from temper.types import Sample

README = EXAMPLES / "retool" / "README.md"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("retool")
    load_example("retool/make_retool_data.py").main(["--out-dir", str(out), "--train-size", "30", "--test-size", "4"])
    return out


@pytest.fixture(scope="module")
def retool():
    return load_example("retool/generate_with_retool.py")


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_carry_the_tool_and_a_right_answer(data):
    make = load_example("retool/make_retool_data.py")
    train = rows(data / "train.jsonl")
    assert train == make.make_rows(30, 0)  # seeded
    assert all(row["tools"] == [make.CODE_INTERPRETER] and row["label"].isdigit() for row in train)
    row = make.retool_row(("q", 1))
    assert row["messages"][0]["content"].startswith("q ") and "\\boxed{" in row["messages"][0]["content"]
    question, answer = make.binomial(random.Random(3))  # "... choose K items from N distinct items?"
    k, n = (int(w) for w in question.split() if w.isdigit())
    assert answer == math.comb(n, k)


PROMPT = [{"role": "user", "content": "What is the sum of k^2 for k = 1, 2, ..., 37?"}]


def tool_call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter", "arguments": {"code": code}}) + "\n</tool_call>"


def test_tool_turns_run_in_the_sandbox_and_are_masked(data, retool, monkeypatch):
    tools = rows(data / "train.jsonl")[0]["tools"]
    turns = ["Let me compute it." + tool_call("print(sum(k * k for k in range(1, 38)))"),
             "<code>import socket\nsocket.create_connection(('1.1.1.1', 80))</code>",
             "Answer: \\boxed{17575}"]  # fmt: skip
    sample, engine, tokenizer = run_scripted(retool, monkeypatch, turns, "--max-turns", "4", label="17575",
                                             prompt=PROMPT, tools=tools)  # fmt: skip
    assert len(engine.payloads) == 3 and sample.status is Sample.Status.COMPLETED
    assert "<tools>" in tokenizer.decode(engine.payloads[0]["input_ids"])  # the schema is in the prompt
    assert all({"</tool_call>", "</code>"} <= set(p["sampling_params"]["stop"]) for p in engine.payloads)
    prompt_len = len(engine.payloads[0]["input_ids"])
    response, mask = sample.tokens[prompt_len:], sample.loss_mask
    observations = []
    for k in range(2):  # the ids between the end of turn k and the request of turn k + 1
        start = len(engine.payloads[k]["input_ids"]) - prompt_len + len(tokenizer.encode(turns[k]))
        end = len(engine.payloads[k + 1]["input_ids"]) - prompt_len
        assert set(mask[start:end]) == {0} and mask[start - 1] == mask[end] == 1
        observations.append(tokenizer.decode(response[start:end]))
    assert sum(mask) == sum(len(tokenizer.encode(t)) for t in turns)  # exactly the policy's tokens are trained
    assert observations[0] == "\n\n<interpreter>\n17575\n</interpreter>\n\n"
    assert "[forbidden]" in observations[1] and observations[1].endswith("</interpreter>\n\n")
    assert sample.metadata["tool_calls"] == 2
    assert asyncio.run(retool.reward(None, sample)) == 1.0


def test_malformed_calls_and_the_end_of_a_rollout(retool, monkeypatch):
    bad = "<tool_call>{not json}</tool_call>"
    sample, engine, _ = run_scripted(retool, monkeypatch, [bad, "I give up."], prompt=PROMPT)
    assert len(engine.payloads) == 2 and "[error] no code_interpreter call" in sample.response
    assert sample.metadata["tool_calls"] == 1  # a turn without a call ended the rollout
    sample, engine, _ = run_scripted(retool, monkeypatch, [tool_call("print(1)")] * 3, "--max-turns", "2",
                                     prompt=PROMPT)  # fmt: skip
    assert len(engine.payloads) == 2 and sample.metadata["tool_calls"] == 1
    sample, engine, _ = run_scripted(retool, monkeypatch, ["<code>while", "x"], finish="length", prompt=PROMPT)
    assert len(engine.payloads) == 1 and sample.status is Sample.Status.TRUNCATED


def test_reward_ignores_the_interpreter_output(retool):
    def reward(response: str) -> float:
        return asyncio.run(retool.reward(None, Sample(index=0, response=response, label="42")))

    assert reward("<code>print(6*7)</code>\n\n<interpreter>\n42\n</interpreter>\n\nAnswer: \\boxed{42}") == 1.0
    hack = "<code>print('\\\\box' + 'ed{' + str(6 * 7) + '}')</code>"  # prints \boxed{42}, does not write it
    assert reward(hack + "\n\n<interpreter>\n\\boxed{42}\n</interpreter>\n\n") == 0.0
    assert reward("Answer: \\boxed{41}") == 0.0


def test_readme_gpu_command_parses():
    gpu, _ = readme_train_commands(README)
    cfg = parse_config(substituted(gpu, {"/path/to/Qwen3-4B": tiny_model_dir("qwen3")}))
    assert cfg.tool_key == "tools" and cfg.max_turns == 4


@pytest.mark.slow
@pytest.mark.usefixtures("plots_unrasterized")
def test_readme_cpu_command_trains_two_steps(data, tmp_path):
    _, cpu = readme_train_commands(README)
    build_tiny_model(tmp_path / "model", "qwen3", seed=0)
    paths = {"tiny-model": tmp_path / "model", "data/retool": data, "runs/retool-tiny": tmp_path / "run",
             "examples": ROOT / "examples"}  # fmt: skip
    saved = str(tmp_path / "rollouts" / "{rollout_id}.pt")
    steps = load_driver("train").main([*substituted(cpu, paths), "--save-debug-rollout-data", saved])
    assert [s["step"] for s in steps] == [0, 1]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    samples = torch.load(tmp_path / "rollouts" / "0.pt", weights_only=False)["samples"]
    assert len(samples) == 8 and all(s["reward"] in (0.0, 1.0) and "tool_calls" in s["metadata"] for s in samples)
    assert all("code_interpreter" in tokenizer.decode(s["tokens"][: len(s["tokens"]) - s["response_length"]])
               for s in samples)  # fmt: skip

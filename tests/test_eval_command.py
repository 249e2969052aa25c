"""``temper eval``: the tiny model folder alone on two eval datasets (one built-in engine in this process),
metrics printed and written; mistakes are one line and exit status 2 before any engine starts."""

from __future__ import annotations

import json

import pytest

from temper.cli import main
from temper.testing import tiny_model_dir

CONFIG = """
eval:
  defaults:
    n_samples_per_eval_prompt: 2
  datasets:
    - name: greet
      path: {greet}
      label_key: label
      rm_type: f1
      n_samples_per_eval_prompt: 4
      max_response_len: 3
    - name: color
      path: {color}
      input_key: q
      label_key: a
      custom_rm_path: {rm}:one
"""


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "greet.jsonl").write_text('{"input": "Say hi", "label": "hi"}\n{"input": "Say yes", "label": "yes"}\n')
    (tmp_path / "color.jsonl").write_text('{"q": "Name a color", "a": "red"}\n')
    (tmp_path / "rm.py").write_text("def one(args, sample):\n    return 1.0\n")
    config = tmp_path / "eval.yaml"
    config.write_text(CONFIG.format(greet=tmp_path / "greet.jsonl", color=tmp_path / "color.jsonl", rm=tmp_path / "rm.py"))
    return tmp_path


@pytest.mark.slow
def test_temper_eval_on_the_tiny_model_folder_writes_the_metrics(files, capsys):
    out = files / "out"
    flags = ["--hf-checkpoint", str(tiny_model_dir("qwen3")), "--eval-config", str(files / "eval.yaml"),
             "--apply-chat-template", "--eval-max-response-len", "5", "--run-dir", str(out)]  # fmt: skip
    assert main(["eval", *flags]) == 0
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert {f"eval/greet/pass@{k}" for k in (1, 2, 4)} | {"eval/color/pass@1", "eval/color/pass@2"} <= set(metrics)
    assert "eval/greet/pass@8" not in metrics and "eval/color/pass@4" not in metrics
    assert metrics["eval/color"] == metrics["eval/color/pass@2"] == 1.0  # its own reward function
    assert 0.0 <= metrics["eval/greet/pass@1"] <= metrics["eval/greet/pass@4"] <= 1.0
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    greet = [s for s in samples if s["dataset"] == "greet"]
    color = [s for s in samples if s["dataset"] == "color"]
    assert [s["group_index"] for s in greet] == [0] * 4 + [1] * 4 and len(color) == 2  # n per dataset
    assert max(s["response_length"] for s in greet) <= 3 and max(s["response_length"] for s in color) <= 5
    assert {s["label"] for s in greet} == {"hi", "yes"} and color[0]["prompt"].count("Name a color") == 1
    printed = capsys.readouterr().out
    assert "eval/greet/pass@4 " in printed and f"wrote {out / 'eval_metrics.json'}" in printed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval-prompt-data", "g", "{greet}"], "--hf-checkpoint is not set: temper eval serves"),
        (["--hf-checkpoint", "{model}"], "temper eval needs datasets: --eval-prompt-data NAME PATH"),
        (["--hf-checkpoint", "{model}", "--eval-prompt-data", "g", "{bad}"], "bad.jsonl line 1: malformed JSON"),
        (["--hf-checkpoint", "{model}", "--eval-config", "{listed}"], "--eval-config {listed}: expected a mapping"),
        (["--hf-checkpoint", "{model}", "--eval-prompt-data", "g", "{greet}", "--load", "{files}/none"],
         "--load {files}/none: {files}/none: no temper checkpoint here"),
    ],
)
def test_mistakes_are_one_line_and_status_2(files, capsys, flags, message):
    (files / "bad.jsonl").write_text("{oops\n")
    (files / "listed.yaml").write_text("- greet\n- color\n")
    names = {"greet": files / "greet.jsonl", "bad": files / "bad.jsonl", "listed": files / "listed.yaml",
             "model": tiny_model_dir("qwen3"), "files": files}  # fmt: skip
    assert main(["eval", *(f.format(**names) for f in flags)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("temper eval: error: ") and message.format(**names) in err and err.count("\n") == 1


def test_help_lists_train_flags(capsys):
    assert main(["eval", "--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: temper eval --hf-checkpoint DIR") and "--eval-config FILE.yaml" in printed
    assert "--n-samples-per-eval-prompt" in printed and "--rm-type" in printed

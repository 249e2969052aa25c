"""`run_driver`'s checks before anything starts: no --hf-checkpoint, bad prompt files (one line naming
file:line), and a --load checkpoint already at --num-rollout (exit 0, the old report untouched). Each
case must end before Ray starts and before the run folder is made."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from temper.cluster.driver import finished
from temper.command_line import parse_config
from temper.config import ConfigError
from temper.model_shape import check_hf_checkpoint
from temper.quickstart import load_driver
from temper.testing import tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--rollout-batch-size", "1", "--num-rollout", "2", "--rollout-num-gpus", "1"]


def write_lines(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture
def run(tmp_path):
    """train.py's main on BASE + the tiny model + `flags`; returns (SystemExit message or steps, seconds)."""
    import ray

    def main(*flags: str, model: bool = True):
        argv = [*BASE, "--run-dir", str(tmp_path / "run"), *flags]
        argv += ["--hf-checkpoint", str(tiny_model_dir("qwen3"))] if model else []
        started = time.monotonic()
        try:
            result = load_driver("train").main(argv)
        except SystemExit as e:
            result = str(e.code)
        assert not ray.is_initialized(), "Ray started"
        assert not (tmp_path / "run").exists(), "the run folder was made"
        return result, time.monotonic() - started

    return main


def test_no_hf_checkpoint_is_one_line_before_ray(run, tmp_path):
    prompts = write_lines(tmp_path / "p.jsonl", '{"input": "1 + 1 ="}')
    message, seconds = run("--prompt-data", prompts, model=False)
    assert message.startswith("train.py: error: --hf-checkpoint is not set, but the trainer (its initial weights)")
    assert "\n" not in message and seconds < 10


@pytest.mark.parametrize(
    "flags, needed_by",
    [
        ([], "the trainer"),
        (["--debug-rollout-only"], "each rollout engine temper starts (--rollout-backend builtin)"),
        (["--debug-rollout-only", "--rollout-backend", "sglang"], "each rollout engine temper starts (--rollout-backend sglang)"),
        (["--debug-rollout-only", "--rollout-external-engine-addrs", "h:1"], "the default generate function"),
        (["--debug-rollout-only", "--rollout-external-engine-addrs", "h:1", "--custom-generate-function-path", "m.g"], None),
    ],
)  # fmt: skip
def test_which_runs_need_hf_checkpoint(flags, needed_by):
    cfg = parse_config([*BASE, *flags], check_shape=False)
    if needed_by is None:
        check_hf_checkpoint(cfg)  # --debug-rollout-only against engines elsewhere with its own generate
        return
    with pytest.raises(ConfigError, match="^" + re.escape(f"--hf-checkpoint is not set, but {needed_by}")):
        check_hf_checkpoint(cfg)


@pytest.mark.parametrize(
    "lines, flags, where",
    [
        (['{"input": "a"}', '{"input": "b"'], [], "line 2: malformed JSON at column 14"),
        (['{"input": "a"}', '{"input": "b"'], ["--streaming-data"], "line 2: malformed JSON at column 14"),
        (['{"input": "a"}', "", '["b"]'], [], "line 3: a JSON list, expected a JSON object"),
        (['{"text": "a"}'], [], "line 1, field 'input': missing; keys present: ['text']"),
        (['{"input": "a"}'], ["--label-key", "answer"], "line 1, field 'answer': missing"),
    ],
)  # fmt: skip
def test_bad_prompt_file_is_one_line_with_file_and_line(run, tmp_path, lines, flags, where):
    prompts = write_lines(tmp_path / "p.jsonl", *lines)
    message, seconds = run("--prompt-data", prompts, *flags)
    assert message.startswith(f"train.py: error: {prompts} {where}"), message
    assert "\n" not in message and seconds < 10


def test_missing_or_unreadable_prompt_file(run, tmp_path):
    message, _ = run("--prompt-data", str(tmp_path / "none.jsonl"))
    assert message.startswith(f"train.py: error: {tmp_path / 'none.jsonl'}: prompt file not found; check --prompt-data")
    message, _ = run("--prompt-data", str(tmp_path))
    assert message.startswith(f"train.py: error: {tmp_path}: is a directory, expected a .jsonl or .parquet file")
    message, _ = run("--prompt-data", write_lines(tmp_path / "p.json", "{}"))
    assert "unknown file extension '.json'" in message
    (tmp_path / "latin1.jsonl").write_bytes('{"input": "caf\xe9"}\n'.encode("latin-1"))
    message, _ = run("--prompt-data", str(tmp_path / "latin1.jsonl"))
    assert message.startswith(f"train.py: error: {tmp_path / 'latin1.jsonl'} line 1: bytes that are not UTF-8")


def test_bad_eval_file_is_named_with_its_dataset(run, tmp_path):
    prompts = write_lines(tmp_path / "p.jsonl", '{"input": "a"}')
    evals = write_lines(tmp_path / "e.jsonl", '{"input": "a"}', "{oops")
    message, _ = run("--prompt-data", prompts, "--eval-interval", "1", "--eval-prompt-data", "gsm8k", evals)
    assert message.startswith(f"train.py: error: --eval-prompt-data gsm8k: {evals} line 2: malformed JSON")
    assert message.endswith("eval files are read with --eval-input-key/--eval-label-key (default: the training keys)")


def finished_checkpoint(tmp_path: Path, last: int) -> Path:
    """A --save root whose tracker says rollout `last` is saved, and a previous run's report in it."""
    root = tmp_path / "ckpt"
    (root / f"iter_{last:07d}" / "actor" / "model").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text(f"{last}\n")
    (root / "report.md").write_text("# the previous run\n")
    (root / "metrics.jsonl").write_text(json.dumps({"step": last}) + "\n")
    return root


def test_finished_checkpoint_exits_0_and_leaves_the_report(tmp_path, capsys):
    import ray

    root = finished_checkpoint(tmp_path, last=1)
    prompts = write_lines(tmp_path / "p.jsonl", '{"input": "a"}')
    argv = [*BASE, "--hf-checkpoint", str(tiny_model_dir("qwen3")), "--prompt-data", prompts]
    before = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file()}
    assert load_driver("train").main([*argv, "--load", str(root), "--save", str(root)]) == []
    assert capsys.readouterr().out == (
        f"train.py: --load {root} already holds the checkpoint of rollout 1, the last of --num-rollout 2: nothing "
        f"left to train (raise --num-rollout to train further); the previous run's report in {root} is left as it "
        f"was\n"
    )
    assert {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file()} == before
    assert not ray.is_initialized()


def test_finished_reads_root_iter_and_role_folders(tmp_path):
    root = finished_checkpoint(tmp_path, last=1)
    load = lambda path, *flags: parse_config([*BASE, "--load", str(path), *flags], check_shape=False)  # noqa: E731
    for path in (root, root / "iter_0000001", root / "iter_0000001" / "actor"):
        assert finished(load(path)) is not None
    assert finished(load(root, "--num-rollout", "3")) is None  # one more rollout to train
    assert finished(load(root / "iter_0000000")) is None
    assert finished(load(tmp_path / "empty")) is None  # nothing saved yet: a fresh start
    assert finished(load(root, "--start-rollout-id", "0")) is None
    (root / "latest_checkpointed_iteration.txt").write_text("three\n")
    with pytest.raises(ConfigError, match="expected a rollout id .* found 'three'; rewrite it"):
        finished(load(root))


def test_finished_command_exits_0(tmp_path):
    """`python train.py ...` run again on a finished checkpoint: exit status 0, one line."""
    root = finished_checkpoint(tmp_path, last=1)
    prompts = write_lines(tmp_path / "p.jsonl", '{"input": "a"}')
    argv = [*BASE, "--hf-checkpoint", str(tiny_model_dir("qwen3")), "--prompt-data", prompts, "--load", str(root)]
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"train.py: --load {root} already holds the checkpoint of rollout 1")

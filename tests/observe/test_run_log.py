"""`RunLog`: phase timings, one JSONL line per step, the progress line, the end-of-run report, and the
optional sinks' missing-package errors."""

import importlib.util
import io
import json
import time

import pytest

from temper.command_line import parse_config
from temper.config import ConfigError
from temper.observe import RunLog, summarize
from temper.observe.progress import progress_line


def cfg_of(tmp_path, *flags):
    argv = ["--rollout-batch-size", "2", "--num-rollout", "4", "--run-dir", str(tmp_path / "run"), *flags]
    return parse_config(argv, check_shape=False)


def test_steps_go_to_jsonl_progress_and_report(tmp_path):
    out = io.StringIO()
    with RunLog(cfg_of(tmp_path), "python train.py ...", stream=out) as log:
        for step, reward in enumerate([0.1, 0.4, 0.85, 0.95]):
            with log.phase("rollout"):
                time.sleep(0.01)
            with log.phase("train"):
                pass
            log.step(
                step, {"rollout/raw_reward": reward, "rollout/response_len_mean": 8.0, "train/loss": 0.5, "note": "x"}
            )
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3] and "note" not in lines[0]
    assert lines[0]["time/rollout"] >= 0.01 and lines[0]["time/step"] >= lines[0]["time/rollout"]
    printed = out.getvalue().splitlines()
    assert (
        printed[0].startswith("step 0/4  reward 0.100  resp len   8.0  step ")
        and "(rollout 0.0 · train 0.0)" in printed[0]
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reward"]["start"] == pytest.approx((0.1 + 0.4 + 0.85) / 3)
    assert summary["reward"]["reached"]["0.8"]["step"] == 2 and summary["reward"]["best_step"] == 3
    report = (tmp_path / "run" / "report.md").read_text()
    assert "reward ≥ 0.8: step 2" in report and "Command: `python train.py ...`" in report


def test_resumed_run_appends_to_the_same_file(tmp_path):
    for step in (0, 1):
        with RunLog(cfg_of(tmp_path), stream=io.StringIO()) as log:
            log.step(step, {"rollout/raw_reward": 0.0})
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_progress_line_shows_eval_and_time_split():
    record = {"rollout/raw_reward": 0.5, "time/rollout": 1.0, "time/train": 2.0, "time/sync": 0.25, "time/step": 3.3,
              "time/elapsed": 120.0, "eval/gsm8k": 0.7, "eval/gsm8k/truncated_ratio": 0.1}  # fmt: skip
    assert progress_line(7, 10, record) == (
        "step  7/10  reward 0.500  step 3.3s (rollout 1.0 · train 2.0 · sync 0.2)  eval/gsm8k 0.700  2.0 min"
    )


def test_empty_run_summary():
    assert summarize([], 5.0) == {"num_steps": 0, "wall_minutes": 5.0 / 60}


@pytest.mark.parametrize("flag, package", [("--use-tensorboard", "tensorboard"), ("--use-wandb", "wandb")])
def test_optional_sink_without_its_package_is_a_config_error(tmp_path, flag, package, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    with pytest.raises(ConfigError, match=f"{flag} needs the {package} package: pip install {package}"):
        RunLog(cfg_of(tmp_path, flag))


STEPS = [{"rollout/raw_reward": 0.25, "train/loss": 1.5, "time/rollout": 2.0},
         {"rollout/raw_reward": 0.75, "train/loss": 1.25, "time/rollout": 1.5}]


def test_tensorboard_sink_writes_every_key_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLog(
        cfg_of(tmp_path, "--use-tensorboard", "--tb-project-name", str(tmp_path / "tb")), stream=io.StringIO()
    ) as log:
        for step, record in enumerate(STEPS):
            log.step(step, record)
    (events,) = {p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}
    scalars = EventAccumulator(str(events)).Reload()
    for key in STEPS[0]:
        assert [(e.step, e.value) for e in scalars.Scalars(key)] == [(i, r[key]) for i, r in enumerate(STEPS)], key


def test_wandb_offline_run_holds_every_key_and_the_config(tmp_path, monkeypatch):
    """--use-wandb --wandb-mode offline: no network; the offline run's history has each step's values."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = cfg_of(tmp_path, "--use-wandb", "--wandb-mode", "offline", "--wandb-project", "temper-test",
                 "--wandb-dir", str(tmp_path / "wb"))
    with RunLog(cfg, stream=io.StringIO()) as log:
        (sink,) = [s for s in log.sinks if type(s).__name__ == "WandbSink"]
        for step, record in enumerate(STEPS):
            log.step(step, record)
            for key, value in record.items():  # what the run holds after each step
                assert sink.run.summary[key] == value, key
        assert sink.run.offline and sink.run.step == len(STEPS)
        assert sink.run.config["rollout_batch_size"] == cfg.rollout_batch_size  # the whole config goes along
    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")  # synced later with `wandb sync`
    assert run_file.stat().st_size > 0


def test_one_run_time_everywhere(tmp_path):
    """The last progress line, the closing line, report.md and summary.json give one duration: the run
    time from the start to the end of the last step (issue 17: they gave three)."""
    out = io.StringIO()
    with RunLog(cfg_of(tmp_path), stream=out, started=time.monotonic() - 90.0) as log:
        for step in range(2):
            log.step(step, {"rollout/raw_reward": 0.5})
        time.sleep(0.05)  # after the last step: not run time
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    seconds = log.run_seconds()
    assert summary["wall_minutes"] * 60 == seconds == summary["last"]["time/elapsed"] and 90.0 <= seconds < 91.0
    minutes = f"{seconds / 60:.1f} min"
    printed = out.getvalue().splitlines()
    assert printed[-2].endswith(f"  {minutes}")
    assert printed[-1].startswith(f"run time {minutes} (wall time from the start")
    assert f"in {minutes} (wall time from the start, start-up included, to the end of the last step)" in (
        (tmp_path / "run" / "report.md").read_text()
    )


def test_throughput_per_phase(tmp_path):
    """perf/rollout_response_tok_s and perf/train_tok_s from the step's own counts and phase times
    (train/tokens is a mean over the rollout's optimizer steps)."""
    with RunLog(cfg_of(tmp_path, "--global-batch-size", "1", "--num-steps-per-rollout", "2"), stream=io.StringIO()) as log:
        record = log.step(0, {"rollout/num_samples": 4, "rollout/response_len_mean": 5.0, "time/rollout": 2.0,
                              "train/tokens": 100.0, "time/train": 0.5})
        bare = log.step(1, {"rollout/raw_reward": 0.5})
    assert record["perf/rollout_response_tok_s"] == 10.0 and record["perf/train_tok_s"] == 400.0
    assert not any(k.startswith("perf/") for k in bare)

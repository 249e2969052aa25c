"""`RunLog`: what a driver loop reports, and where it goes.

    with RunLog(cfg, command) as log:
        with log.phase("rollout"): batch = ...
        log.step(rollout_id, metrics)       # sinks + progress line; returns the step's record
        log.samples(rollout_id, samples)    # optional: a few prompts and responses for the report
    # on exit: summary.json, report.md, and the plots with report.html (report_html.py) in the run folder

The run folder is --run-dir, else --save, else runs/<date-time>. Each step's record is the driver's
metrics plus time/<phase> (seconds spent in each `phase` block during the step), time/step (from the end of the previous step, or the start of
this step's first phase) and time/elapsed (seconds since the run started, start-up included).

A run's duration has one definition, `RunLog.run_seconds`, and every output gives that number: the last
progress line's minutes, the closing line, report.md and summary.json's wall_minutes (and the quickstart's
last line).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from temper.observe.live import LiveProgress
from temper.observe.progress import ProgressPrinter, progress_line
from temper.observe.report import RUN_TIME, summarize, write_report
from temper.observe.report_html import write_html_report
from temper.observe.samples import SAMPLES_FILE, append_samples, sample_rows
from temper.observe.sinks import open_sinks

logger = logging.getLogger(__name__)


def throughput(record: dict[str, Any], steps_per_rollout: int) -> dict[str, float]:
    """perf/rollout_response_tok_s (response tokens over the rollout phase) and perf/train_tok_s (tokens
    trained over the train phase: train/tokens is a mean over the rollout's optimizer steps), where the
    record has what they need."""
    out = {}
    rollout_s, train_s = record.get("time/rollout", 0.0), record.get("time/train", 0.0)
    if rollout_s > 0 and "rollout/num_samples" in record and "rollout/response_len_mean" in record:
        out["perf/rollout_response_tok_s"] = record["rollout/num_samples"] * record["rollout/response_len_mean"] / rollout_s
    if train_s > 0 and "train/tokens" in record:
        out["perf/train_tok_s"] = record["train/tokens"] * steps_per_rollout / train_s
    return out


def run_dir_of(cfg) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if cfg.save:
        return Path(cfg.save)
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


class RunLog:
    def __init__(self, cfg, command: str = "", stream=None, started: float | None = None):
        """`started`: the run's start (time.monotonic()) when it began before the log was opened."""
        self.cfg = cfg
        self.command = command
        self.run_dir = run_dir_of(cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sinks = open_sinks(cfg, self.run_dir)
        self.printer = ProgressPrinter(stream)
        self.live = LiveProgress(stream)  # what a long phase has done so far, while it runs (live.py)
        self.started = time.monotonic() if started is None else started
        self.steps: list[dict[str, Any]] = []
        self._times: dict[str, float] = {}
        self._step_started: float | None = None  # when the step's first phase began

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the block's seconds into this step's time/<name>."""
        start = time.monotonic()
        if self._step_started is None:
            self._step_started = start
        try:
            with self.live.phase(name):
                yield
        finally:
            self._times[name] = self._times.get(name, 0.0) + time.monotonic() - start

    def step(self, rollout_id: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Record the step: write it to every sink and print the progress line."""
        now = time.monotonic()
        record = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        record.update({f"time/{k}": v for k, v in self._times.items()})
        record["time/step"] = now - (self._step_started or now)
        record["time/elapsed"] = now - self.started
        record.update(throughput(record, int(getattr(self.cfg, "num_steps_per_rollout", None) or 1)))
        self.steps.append({"step": rollout_id, **record})
        self._write(rollout_id, record)
        self.printer.print(progress_line(rollout_id, self.cfg.num_rollout, record))
        self._times, self._step_started = {}, now
        return {"step": rollout_id, **record}

    def eval(self, rollout_id: int, metrics: dict[str, Any]) -> None:
        """An evaluation outside a step (before training): its own line in the sinks."""
        record = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._write(rollout_id, record)
        self.printer.print(
            f"eval before training: {', '.join(f'{k} {v:.3f}' for k, v in record.items() if k.count('/') == 1)}"
        )

    def samples(self, rollout_id: int, samples: list, rewards: list[float] | None = None) -> None:
        """Keep a few of the step's samples for the report (samples.py): the best and worst by `rewards`
        (default: each sample's reward, --reward-key picking from a dict)."""
        if rewards is None:
            rewards = [s.get_reward_value(self.cfg.reward_key) for s in samples]
        append_samples(self.run_dir / SAMPLES_FILE, sample_rows(rollout_id, samples, rewards))

    def _write(self, step: int, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(step, record)

    def run_seconds(self) -> float:
        """The run time: wall time from the run's start (the driver's, start-up included) to the end of
        its last step (that step's save, sync and eval included); until now when no step finished."""
        return self.steps[-1]["time/elapsed"] if self.steps else time.monotonic() - self.started

    def close(self) -> Path:
        """Close the sinks and write the end-of-run report; returns the path of report.md."""
        for sink in self.sinks:
            sink.close()
        summary = summarize(self.steps, self.run_seconds())
        path = write_report(self.run_dir, summary, self.command)
        page = self._html_report()
        self.printer.print(
            f"run time {summary['wall_minutes']:.1f} min ({RUN_TIME})  metrics: {self.run_dir / 'metrics.jsonl'}  "
            f"report: {path}" + (f", {page}" if page else "")
        )
        return path

    def _html_report(self) -> Path | None:
        """Plots and report.html; a failure there is logged, not raised: the run's work is done and
        report.md is written (`temper report RUN_DIR` tries again)."""
        try:
            return write_html_report(self.run_dir).html
        except Exception as e:  # noqa: BLE001 -- any plotting error: the run itself succeeded
            logger.warning("the run report's plots were not written (temper report %s retries): %r", self.run_dir, e)
            return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

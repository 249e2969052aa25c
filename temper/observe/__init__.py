"""Observing a run: metrics sinks (JSONL always; TensorBoard, W&B on request), a progress line per step,
and the end-of-run report. `RunLog` (run_log.py) is what the drivers use."""

from temper.observe.report import summarize, write_report
from temper.observe.run_log import RunLog, run_dir_of
from temper.observe.sinks import check_sinks

__all__ = ["RunLog", "check_sinks", "run_dir_of", "summarize", "write_report"]

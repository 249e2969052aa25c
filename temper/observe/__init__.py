"""Observing a run: metrics sinks (JSONL always; TensorBoard, W&B on request), a progress line per step,
and the end-of-run report (report.md and summary.json; plots, report.png and report.html from
report_html.py, also by `temper report RUN_DIR`). `RunLog` (run_log.py) is what the drivers use."""

from temper.observe.report import summarize, write_report
from temper.observe.report_html import write_html_report
from temper.observe.run_log import RunLog, run_dir_of
from temper.observe.sinks import check_sinks

__all__ = ["RunLog", "check_sinks", "run_dir_of", "summarize", "write_html_report", "write_report"]

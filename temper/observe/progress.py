"""The progress line printed after each rollout step: reward, response length, step time and its split.

    step   4/30  reward 0.412  resp len  7.9  step 3.1s (rollout 1.0 · train 1.6 · sync 0.5)  0.9 min

Printed with rich when stdout is a terminal, as plain text otherwise (logs, CI).
"""

from __future__ import annotations

import sys
from typing import Any

PHASES = (
    "rollout", "release_engine", "onload_train", "train", "save", "sync", "offload_train", "resume_engine", "eval"
)  # fmt: skip
"""The step's parts in order; the memory moves of colocated runs, saves and evals show only when they happened."""


def progress_line(step: int, total: int | None, record: dict[str, Any]) -> str:
    width = len(str(total or step))
    parts = [f"step {step:>{width}}/{total}" if total is not None else f"step {step}"]
    if "rollout/raw_reward" in record:
        parts.append(f"reward {record['rollout/raw_reward']:.3f}")
    if "rollout/response_len_mean" in record:
        parts.append(f"resp len {record['rollout/response_len_mean']:5.1f}")
    split = " · ".join(f"{p} {record[f'time/{p}']:.1f}" for p in PHASES if f"time/{p}" in record)
    parts.append(f"step {record.get('time/step', 0.0):.1f}s ({split})")
    evals = [f"{k} {v:.3f}" for k, v in record.items() if k.startswith("eval/") and k.count("/") == 1]
    parts += evals
    parts.append(f"{record.get('time/elapsed', 0.0) / 60:.1f} min")
    return "  ".join(parts)


class ProgressPrinter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.console = None
        if getattr(self.stream, "isatty", lambda: False)():
            try:
                from rich.console import Console

                self.console = Console(file=self.stream, highlight=False)
            except ImportError:
                pass

    def print(self, line: str) -> None:
        if self.console is not None:
            self.console.print(line)
        else:
            print(line, file=self.stream, flush=True)

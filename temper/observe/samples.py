"""A few sample prompts and responses per step, for people: <run dir>/samples.jsonl.

`RunLog.samples(rollout_id, samples)` keeps the `PER_STEP` best and `PER_STEP` worst samples of a step
by reward, one JSON object a line: {"step", "reward", "prompt", "response", "status",
"response_length"}, texts cut at `MAX_CHARS`. That is a few kilobytes a step, so it is cheap at any
scale; the full rollout (token ids, log-probs) is not this file's business.

The report shows the first and the last step's best and worst. The drivers do not pass their samples
to the run log yet (train.py gives `RunLog.step` numbers only, and the batch it trains on holds token
ids, not text), so a run writes this file only where a driver calls `RunLog.samples`; the report's
section is there when the file is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
PER_STEP = 2
MAX_CHARS = 2000


def sample_rows(step: int, samples: Sequence[Any], rewards: Sequence[float], per_step: int = PER_STEP) -> list[dict]:
    """The rows kept of one step: the `per_step` highest rewards, then the `per_step` lowest (each
    sample once; all of them when there are at most 2 x `per_step`)."""
    order = sorted(range(len(samples)), key=lambda i: rewards[i], reverse=True)
    keep = order if len(order) <= 2 * per_step else order[:per_step] + order[-per_step:]
    return [_row(step, samples[i], rewards[i]) for i in keep]


def append_samples(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_samples(path: Path) -> dict[int, list[dict]]:
    """{step: rows} of a samples file; a resumed run's later rows of a step replace the earlier ones.
    Lines that are not rows are skipped, counted and logged."""
    by_step: dict[int, list[dict]] = {}
    seen_in_order: list[int] = []
    skipped = 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            skipped += 1
            continue
        step = row["step"]
        if seen_in_order[-1:] != [step]:  # a new run of this step's rows: drop the older ones
            by_step[step] = []
            seen_in_order.append(step)
        by_step[step].append(row)
    if skipped:
        logger.warning("%s: %d lines are not sample rows; skipped", path, skipped)
    return dict(sorted(by_step.items()))


def report_samples(by_step: dict[int, list[dict]], per_side: int = PER_STEP) -> list[tuple[str, list[dict]]]:
    """(heading, rows) for the first and the last step: best rewards first, then the worst."""
    if not by_step:
        return []
    steps = sorted(by_step)
    sections = []
    for label, step in (("first", steps[0]), ("last", steps[-1])) if len(steps) > 1 else (("only", steps[0]),):
        rows = sorted(by_step[step], key=lambda r: r.get("reward", 0.0), reverse=True)
        best, worst = rows[:per_side], rows[per_side:][-per_side:]
        sections.append((f"{label} step ({step}): best reward", best))
        if worst:
            sections.append((f"{label} step ({step}): worst reward", worst[::-1]))
    return sections


def _row(step: int, sample: Any, reward: float) -> dict:
    status = getattr(sample, "status", None)
    return {
        "step": step,
        "reward": float(reward),
        "prompt": _cut(_text(getattr(sample, "prompt", ""))),
        "response": _cut(str(getattr(sample, "response", ""))),
        "status": getattr(status, "value", status),
        "response_length": getattr(sample, "response_length", None),
    }


def _text(prompt: Any) -> str:
    """A prompt as text: a message list becomes 'role: content' lines."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CHARS else f"{text[:MAX_CHARS]}… ({len(text) - MAX_CHARS} more characters)"

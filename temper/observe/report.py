"""The end-of-run report: `summary.json` (numbers) and `report.md` (the same, for people) in the run folder.

It answers what a user asks after a run: did the reward go up (start and end, each the mean of the
first/last `WINDOW` steps, the best step), how long until it crossed `THRESHOLDS`, where the time went
(mean seconds per step in rollout / train / sync, and in a colocated run's memory moves when it made
any), and the last step's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REWARD = "rollout/raw_reward"
WINDOW = 3
THRESHOLDS = (0.5, 0.8, 0.9)
RUN_TIME = "wall time from the start, start-up included, to the end of the last step"
"""What wall_minutes measures (`RunLog.run_seconds`), said wherever the number is shown."""
PHASES = ("rollout", "release_engine", "onload_train", "train", "save", "sync", "offload_train", "resume_engine", "eval",
          "step")


def summarize(steps: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Numbers of a run from its step records (each with "step", metrics and time/* entries); `wall_s`
    is the run time (`RUN_TIME`)."""
    summary: dict[str, Any] = {"num_steps": len(steps), "wall_minutes": wall_s / 60}
    if not steps:
        return summary
    summary["first_step"], summary["last_step"] = steps[0]["step"], steps[-1]["step"]
    summary["time_per_step_s"] = {
        p: _mean([s[f"time/{p}"] for s in steps if f"time/{p}" in s])
        for p in PHASES
        if any(f"time/{p}" in s for s in steps)
    }
    rewards = [(s["step"], s[REWARD], s.get("time/elapsed", 0.0)) for s in steps if s.get(REWARD) is not None]
    if rewards:
        values = [r for _, r, _ in rewards]
        best = max(rewards, key=lambda x: x[1])
        summary["reward"] = {
            "start": _mean(values[:WINDOW]),
            "end": _mean(values[-WINDOW:]),
            "best": best[1],
            "best_step": best[0],
            "curve": values,
            "reached": {
                str(t): next(({"step": s, "minutes": e / 60} for s, r, e in rewards if r >= t), None)
                for t in THRESHOLDS
            },
        }
    summary["last"] = {k: v for k, v in steps[-1].items() if isinstance(v, (int, float)) and k != "step"}
    return summary


def write_report(run_dir: Path, summary: dict[str, Any], command: str) -> Path:
    """Write summary.json and report.md into `run_dir`; returns the report's path."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    path = run_dir / "report.md"
    path.write_text(render(summary, command))
    return path


def render(summary: dict[str, Any], command: str) -> str:
    lines = ["# temper run report", "", f"Command: `{command}`", ""]
    n = summary["num_steps"]
    if not n:
        return "\n".join(lines + ["No rollout step finished.", ""])
    lines.append(
        f"{n} rollout steps ({summary['first_step']}..{summary['last_step']}) in {summary['wall_minutes']:.1f} min "
        f"({RUN_TIME})."
    )
    reward = summary.get("reward")
    if reward:
        lines += [
            "",
            "## Reward",
            "",
            (
                f"- start {reward['start']:.3f} → end {reward['end']:.3f} (means of the first and last {WINDOW} "
                f"steps); best {reward['best']:.3f} at step {reward['best_step']}"
            ),
        ]
        for threshold, hit in reward["reached"].items():
            where = f"step {hit['step']}, {hit['minutes']:.1f} min after the start" if hit else "not reached"
            lines.append(f"- reward ≥ {threshold}: {where}")
        lines.append("- curve: " + " ".join(f"{r:.2f}" for r in reward["curve"]))
    times = summary.get("time_per_step_s", {})
    if times:
        lines += [
            "",
            "## Time per step (mean seconds)",
            "",
            "| " + " | ".join(times) + " |",
            "|" + "---|" * len(times),
            "| " + " | ".join(f"{t:.2f}" for t in times.values()) + " |",
        ]
    lines += ["", "## Last step", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(summary["last"].items())]
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0

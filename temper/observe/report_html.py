"""The run report with pictures: PNG plots and one self-contained HTML page, from a run folder's files.

    write_html_report(run_dir)   # at the end of every run (RunLog.close) and by `temper report RUN_DIR`

reads <run dir>/metrics.jsonl (and samples.jsonl when the run wrote one) and writes

- plots/<panel>.png: one image per panel the metrics allow (plots.py says which);
- report.png: the main panels in one image (the one to paste into a chat or a README);
- report.html: the health list (health.py), the reward summary and time split (report.summarize, the
  numbers of report.md), every plot inlined as a base64 data URI, and the first and last step's best
  and worst samples. It loads nothing from anywhere: it can be mailed or attached as one file.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from pathlib import Path

from temper.observe.health import Check, health_checks
from temper.observe.plots import Panel, build_panels, write_combined_image, write_panel_images
from temper.observe.report import RUN_TIME, WINDOW, summarize
from temper.observe.run_metrics import RunMetrics
from temper.observe.samples import SAMPLES_FILE, read_samples, report_samples

METRICS_FILE = "metrics.jsonl"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1500px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; }
ul.health { list-style: none; padding-left: 0; } ul.health li { margin: 0.3em 0; }
.ok::before { content: "✓ "; color: #1a7f37; } .warn::before { content: "⚠ "; color: #c24e00; }
.warn { color: #9a3a00; } .unmeasured { color: #777; } .unmeasured::before { content: "· "; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; } td, th { border: 1px solid #ddd; padding: 0.3em 0.6em;
       vertical-align: top; text-align: left; }
td.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.85em; max-width: 60em; }
.note { color: #777; font-style: italic; }
"""


@dataclass
class ReportFiles:
    html: Path
    combined: Path | None
    """report.png, None when no main panel could be drawn."""
    plots: dict[str, Path]
    """{panel name: plots/<name>.png}."""


def write_html_report(run_dir: Path) -> ReportFiles:
    """Plots and report.html from `run_dir`'s metrics.jsonl (FileNotFoundError naming it when absent)."""
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}: not a run folder (--run-dir, --save or runs/<time>)")
    run = RunMetrics.read(metrics_path)
    panels = build_panels(run)
    plots = write_panel_images(panels.built, run_dir / "plots")
    combined = write_combined_image(panels.built, run_dir / "report.png", title=f"temper run: {run_dir.name}")
    samples_path = run_dir / SAMPLES_FILE
    samples = report_samples(read_samples(samples_path)) if samples_path.is_file() else None
    page = render_page(run_dir, run, health_checks(run), panels.built, plots, panels.skipped, samples)
    path = run_dir / "report.html"
    path.write_text(page)
    return ReportFiles(path, combined, plots)


def render_page(run_dir: Path, run: RunMetrics, checks: list[Check], panels: list[Panel], plots: dict[str, Path],
                skipped: list[str], samples: list[tuple[str, list[dict]]] | None) -> str:  # fmt: skip
    """The HTML page; `samples` None when the run folder has no samples file."""
    summary = summarize(run.steps, run.steps[-1].get("time/elapsed", 0.0) if run.steps else 0.0)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>temper run report: {_esc(run_dir.name)}</title><style>{STYLE}</style></head><body>",
        "<h1>temper run report</h1>",
        f'<p class="meta">{_overview(run_dir, run, summary)}</p>',
        "<h2>Health</h2>",
        '<ul class="health">' + "".join(_check_item(c) for c in checks) + "</ul>",
        *_reward_section(summary),
        "<h2>Plots</h2>",
        '<div class="plots">' + "".join(_figure(p, plots[p.name]) for p in panels) + "</div>",
    ]
    if skipped:
        parts.append(f'<p class="note">Not plotted, not in the metrics: {_esc(", ".join(skipped))}.</p>')
    parts += _samples_section(samples)
    parts += _time_section(summary)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _overview(run_dir: Path, run: RunMetrics, summary: dict) -> str:
    text = f"Run folder <code>{_esc(str(run_dir))}</code>. "
    if summary["num_steps"]:
        text += (
            f"{summary['num_steps']} rollout steps ({summary['first_step']}..{summary['last_step']}) in "
            f"{summary['wall_minutes']:.1f} min ({RUN_TIME}). "
        )
    else:
        text += "No rollout step finished. "
    if run.skipped_lines:
        text += f"{run.skipped_lines} lines of {METRICS_FILE} were not metrics records and are left out. "
    return text + f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}."


def _check_item(check: Check) -> str:
    css = {"ok": "ok", "warn": "warn"}.get(check.verdict, "unmeasured")
    return f'<li class="{css}"><b>{_esc(check.name)}</b>: {_esc(check.verdict)} — {_esc(check.detail)}</li>'


def _reward_section(summary: dict) -> list[str]:
    reward = summary.get("reward")
    if not reward:
        return []
    items = [
        f"start {reward['start']:.3f} → end {reward['end']:.3f} (means of the first and last {WINDOW} steps); "
        f"best {reward['best']:.3f} at step {reward['best_step']}"
    ]
    for threshold, hit in reward["reached"].items():
        items.append(f"reward ≥ {threshold}: " + (f"step {hit['step']}, {hit['minutes']:.1f} min" if hit else "not reached"))
    return ["<h2>Reward</h2>", "<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"]


def _figure(panel: Panel, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = _esc(panel.title) + (f" — {_esc(panel.note)}" if panel.note else "")
    return (
        f'<figure id="{panel.name}"><img alt="{_esc(panel.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _samples_section(samples: list[tuple[str, list[dict]]] | None) -> list[str]:
    if samples is None:
        return [
            "<h2>Samples</h2>",
            f'<p class="note">No {SAMPLES_FILE} in this run folder: the driver did not record sample responses '
            "(RunLog.samples).</p>",
        ]
    parts = ["<h2>Samples</h2>"]
    if not samples:
        parts.append(f'<p class="note">{SAMPLES_FILE} holds no sample rows.</p>')
    for heading, rows in samples:
        parts.append(f"<h3>{_esc(heading)}</h3>")
        parts.append("<table><tr><th>reward</th><th>prompt</th><th>response</th><th>status, tokens</th></tr>")
        for row in rows:
            parts.append(
                f"<tr><td>{row.get('reward', float('nan')):.3f}</td><td class=\"text\">{_esc(row.get('prompt', ''))}</td>"
                f"<td class=\"text\">{_esc(row.get('response', ''))}</td>"
                f"<td>{_esc(str(row.get('status')))}, {_esc(str(row.get('response_length')))}</td></tr>"
            )
        parts.append("</table>")
    return parts


def _time_section(summary: dict) -> list[str]:
    times = summary.get("time_per_step_s", {})
    if not times:
        return []
    head = "".join(f"<th>{_esc(p)}</th>" for p in times)
    cells = "".join(f"<td>{t:.2f}</td>" for t in times.values())
    return ["<h2>Time per step (mean seconds)</h2>", f"<table><tr>{head}</tr><tr>{cells}</tr></table>"]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)

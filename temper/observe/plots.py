"""The report's plots: one PNG per panel under <run dir>/plots/, and one combined image of the main panels.

A `Panel` is data (its lines, title, axis labels with units), built from a run's metrics by the
`*_panel` functions; a panel whose metrics the run did not log is not built, and `build_panels` names
it among the skipped. Drawing is one generic function (lines, or stacked bars for the step-time
split), so the single images and the combined one draw the same thing. matplotlib is imported here
only, with its Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from temper.observe.health import ENTROPY, MISMATCH, TRUNCATED
from temper.observe.report import PHASES, REWARD
from temper.observe.run_metrics import RunMetrics

MARKERS_UP_TO = 40
"""Lines with at most this many points also show a marker per point."""
BARS_UP_TO = 200
"""The step-time split is drawn as bars up to this many steps, as stacked areas beyond."""
TIME_KEYS_NOT_PHASES = ("time/step", "time/elapsed")
MEMORY_UNITS = {"_bytes": 2**-30, "_mb": 1 / 1024, "_mib": 1 / 1024, "_gb": 1.0, "_gib": 1.0}
"""Memory keys end with their unit; each is shown in GiB."""


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    dashed: bool = False


@dataclass
class Panel:
    name: str
    """File stem: plots/<name>.png."""
    title: str
    ylabel: str
    lines: list[Line]
    stacked: bool = False
    """Stacked bars per step (lines share their xs), instead of lines."""
    log_y: bool = False
    ylim: tuple[float, float] | None = None
    from_zero: bool = False
    """The y axis starts at 0 (amounts: a short axis would magnify noise)."""
    note: str = ""
    """A line under the plot in the HTML page (what the numbers are)."""
    xlabel: str = "step"


@dataclass
class Panels:
    built: list[Panel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Titles of the panels whose metrics the run did not log."""


def build_panels(run: RunMetrics) -> Panels:
    out = Panels()
    for title, build in PANELS:
        panel = build(run)
        if panel is not None and any(line.ys for line in panel.lines):
            out.built.append(panel)
        else:
            out.skipped.append(title)
    return out


def _line(run: RunMetrics, key: str, label: str, dashed: bool = False) -> Line:
    xs, ys = run.eval_series(key)
    return Line(label, xs, ys, dashed)


def _panel(name: str, title: str, ylabel: str, lines: list[Line], **kw) -> Panel | None:
    lines = [line for line in lines if line.ys]
    return Panel(name, title, ylabel, lines, **kw) if lines else None


def reward_panel(run: RunMetrics) -> Panel | None:
    lines = [_line(run, REWARD, "train (rollout/raw_reward)")]
    lines += [_line(run, f"eval/{name}", f"eval {name}") for name in run.eval_sets()]
    note = "Eval points sit at the weight version they measured: an eval after step r at r + 1." if lines[1:] else ""
    return _panel("reward", "Reward", "mean reward", lines, note=note)


def pass_at_k_panel(run: RunMetrics) -> Panel | None:
    lines = [
        _line(run, key, key.replace("passrate/", "train ").replace("eval/", "eval ").replace("/pass@", " pass@"))
        for key in run.pass_at_k_keys()
    ]
    return _panel("pass_at_k", "pass@k", "pass@k (share of prompts)", lines, ylim=(-0.02, 1.02))


def response_length_panel(run: RunMetrics) -> Panel | None:
    lines = [_line(run, "rollout/response_len_mean", "train mean")]
    quantiles = run.matching(r"rollout/response_len_(p\d+|q\d+|median|min)")
    lines += [_line(run, key, f"train {key.rsplit('_', 1)[1]}", dashed=True) for key in quantiles]
    lines.append(_line(run, "rollout/response_len_max", "train max", dashed=True))
    lines += [_line(run, f"eval/{name}/response_len_mean", f"eval {name} mean") for name in run.eval_sets()]
    return _panel("response_length", "Response length", "tokens", lines, from_zero=True)


def truncation_panel(run: RunMetrics) -> Panel | None:
    lines = [_line(run, TRUNCATED, "train")]
    lines += [_line(run, f"eval/{name}/truncated_ratio", f"eval {name}") for name in run.eval_sets()]
    return _panel("truncation", "Truncated responses (cut at the length limit)", "share of responses", lines,
                  ylim=(-0.02, 1.02))  # fmt: skip


def kl_panel(run: RunMetrics) -> Panel | None:
    keys = run.matching(r"train/.*kl.*")
    return _panel("kl", "KL", "KL (nats/token)", [_line(run, key, key) for key in keys],
                  note="train/ppo_kl: current vs old policy; train/kl_loss: vs the reference model (--use-kl-loss).")  # fmt: skip


def entropy_panel(run: RunMetrics) -> Panel | None:
    return _panel("entropy", "Policy entropy", "entropy (nats/token)", [_line(run, ENTROPY, ENTROPY)])


def clipfrac_panel(run: RunMetrics) -> Panel | None:
    keys = run.matching(r"train/.*clipfrac.*")
    return _panel("clipfrac", "Clipped fraction", "share of tokens clipped", [_line(run, key, key) for key in keys])


def mismatch_panel(run: RunMetrics) -> Panel | None:
    line = _line(run, MISMATCH, "trainer vs engine")
    return _panel("logprob_mismatch", "Log-prob mismatch, trainer vs engine", "mean |Δ log-prob| (nats/token)",
                  [line], log_y=bool(line.ys) and min(line.ys) > 0, note=MISMATCH)  # fmt: skip


def grad_norm_panel(run: RunMetrics) -> Panel | None:
    return _panel("grad_norm", "Gradient norm", "L2 norm (before clipping)", [_line(run, "train/grad_norm", "grad norm")])


def throughput_panel(run: RunMetrics) -> Panel | None:
    rollout = run.ratio_series(("rollout/num_samples", "rollout/response_len_mean"), "time/rollout")
    train = run.ratio_series(("train/tokens",), "time/train")
    lines = [Line("rollout (response tokens)", *rollout), Line("train (train/tokens)", *train)]
    lines += [_line(run, key, key) for key in run.matching(r"perf/.*tok.*(per_s|_s|/s).*")]
    return _panel("throughput", "Throughput", "tokens/s", lines, from_zero=True,
                  note="rollout: response tokens / time/rollout; train: train/tokens / time/train.")  # fmt: skip


def step_time_panel(run: RunMetrics) -> Panel | None:
    present = {k for r in run.steps for k in r if k.startswith("time/") and k not in TIME_KEYS_NOT_PHASES}
    ordered = [f"time/{p}" for p in PHASES if f"time/{p}" in present] + sorted(present - {f"time/{p}" for p in PHASES})
    steps = [r for r in run.steps if isinstance(r.get("time/step"), (int, float))]
    if not steps:
        return None
    xs = [float(r["step"]) for r in steps]
    lines = [Line(key.removeprefix("time/"), xs, [_number(r.get(key)) for r in steps]) for key in ordered]
    other = [max(r["time/step"] - sum(_number(r.get(k)) for k in ordered), 0.0) for r in steps]
    if max(other) > 0.01 * max(r["time/step"] for r in steps):
        lines.append(Line("other (save, eval, ...)" if ordered else "whole step (no phases logged)", xs, other))
    return _panel("step_time", "Step time split", "seconds", lines, stacked=True,
                  note="Seconds per step in each phase (time/<phase>); other = time/step minus the phases.")  # fmt: skip


def memory_panel(run: RunMetrics) -> Panel | None:
    keys = [k for k in run.matching(r"(memory/.*|[a-z]+/.*mem.*)") if _memory_scale(k) is not None]
    lines = []
    for key in keys:
        xs, ys = run.series(key)
        label = key if key.lower().endswith(("_gb", "_gib")) else f"{key}, as GiB"
        lines.append(Line(label, xs, [y * _memory_scale(key) for y in ys]))
    return _panel("memory", "Memory", "GiB", lines, from_zero=True)


PANELS = [
    ("reward", reward_panel),
    ("pass@k", pass_at_k_panel),
    ("response length", response_length_panel),
    ("truncation", truncation_panel),
    ("KL", kl_panel),
    ("entropy", entropy_panel),
    ("clipfrac", clipfrac_panel),
    ("log-prob mismatch", mismatch_panel),
    ("grad norm", grad_norm_panel),
    ("throughput", throughput_panel),
    ("step time split", step_time_panel),
    ("memory", memory_panel),
]
MAIN = ("reward", "pass_at_k", "response_length", "entropy", "kl", "clipfrac", "logprob_mismatch", "throughput",
        "step_time", "memory")  # fmt: skip
"""The panels of the combined image, in its order."""


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _memory_scale(key: str) -> float | None:
    return next((scale for suffix, scale in MEMORY_UNITS.items() if key.lower().endswith(suffix)), None)


# ---- drawing -------------------------------------------------------------------------------------


def write_panel_images(panels: list[Panel], folder: Path) -> dict[str, Path]:
    """Each panel as folder/<name>.png; returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for panel in panels:
        fig = _figure((7.0, 3.8))
        draw(fig.add_subplot(), panel)
        paths[panel.name] = folder / f"{panel.name}.png"
        fig.savefig(paths[panel.name], dpi=100)
    return paths


def write_combined_image(panels: list[Panel], path: Path, title: str, columns: int = 3) -> Path | None:
    """The MAIN panels among `panels` in one grid image (None when there is none)."""
    main = sorted((p for p in panels if p.name in MAIN), key=lambda p: MAIN.index(p.name))
    if not main:
        return None
    columns = min(columns, len(main))
    rows = -(-len(main) // columns)
    fig = _figure((5.2 * columns, 3.4 * rows + 0.4))
    fig.suptitle(title, fontsize=14)
    for i, panel in enumerate(main):
        draw(fig.add_subplot(rows, columns, i + 1), panel)
    fig.savefig(path, dpi=90)
    return path


def draw(ax, panel: Panel) -> None:
    from matplotlib.ticker import MaxNLocator

    if panel.stacked:
        _draw_stacked(ax, panel.lines)
    else:
        for line in panel.lines:
            ax.plot(line.xs, line.ys, label=line.label, linestyle="--" if line.dashed else "-",
                    marker="o" if len(line.xs) <= MARKERS_UP_TO else None, markersize=3, linewidth=1.6)  # fmt: skip
    if panel.log_y:
        ax.set_yscale("log")
    if panel.ylim:
        ax.set_ylim(*panel.ylim)
    elif panel.from_zero:  # autoscale's margin is a share of the data's range: a flat top line would sit on the edge
        top = max((max(line.ys) for line in panel.lines if line.ys), default=0.0)
        ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(panel.lines) > 1 or panel.stacked:
        ax.legend(fontsize="small", ncols=min(len(panel.lines), 3) if panel.stacked else 1,
                  loc="upper center" if panel.stacked else "best")  # fmt: skip


def _draw_stacked(ax, lines: list[Line]) -> None:
    xs = lines[0].xs
    if len(xs) > BARS_UP_TO:
        ax.stackplot(xs, *[line.ys for line in lines], labels=[line.label for line in lines])
    else:
        bottom = [0.0] * len(xs)
        for line in lines:
            ax.bar(xs, line.ys, bottom=bottom, width=0.8, label=line.label)
            bottom = [b + y for b, y in zip(bottom, line.ys, strict=True)]
    totals = [sum(ys) for ys in zip(*(line.ys for line in lines), strict=True)]
    ax.set_ylim(0, max(max(totals, default=0.0), 1e-9) * 1.45)  # room for the legend above the bars


def _figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


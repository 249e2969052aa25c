"""Where step metrics go: a JSONL file (always), TensorBoard (`--use-tensorboard`), W&B (`--use-wandb`).

Each sink takes `write(step, record)` with a flat {name: number} record and `close()`. The JSONL file
holds one JSON object per line with the step under "step"; non-finite numbers are written as null.
The optional sinks import their package when the run starts, so a missing package stops the run
before any worker does, with the pip command that fixes it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from temper.config import ConfigError


class JsonlSink:
    """`path`: one line per record, appended (a resumed run continues the same file)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a")  # noqa: SIM115 -- kept open for the whole run

    def write(self, step: int, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars under `log_dir` (torch.utils.tensorboard; needs the `tensorboard` package)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, record: dict[str, Any]) -> None:
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run (--wandb-project/--wandb-group/--wandb-mode/--wandb-dir) with the whole config."""

    def __init__(self, cfg, run_dir: Path):
        import wandb

        self.run = wandb.init(
            project=cfg.wandb_project or "temper",
            group=cfg.wandb_group,
            mode=cfg.wandb_mode,
            dir=cfg.wandb_dir or str(run_dir),
            config={k: v for k, v in cfg.to_flat().items() if isinstance(v, (int, float, str, bool, type(None), list))},
        )

    def write(self, step: int, record: dict[str, Any]) -> None:
        self.run.log(record, step=step, commit=True)  # each step whole at once, not when the next one comes

    def close(self) -> None:
        self.run.finish()


def check_sinks(cfg) -> None:
    """ConfigError when an optional sink the config asks for lacks its package."""
    for flag, package in (("use_tensorboard", "tensorboard"), ("use_wandb", "wandb")):
        if getattr(cfg, flag) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"--{flag.replace('_', '-')} needs the {package} package: pip install {package}")


def open_sinks(cfg, run_dir: Path) -> list:
    """The sinks the config asks for (see `check_sinks`)."""
    check_sinks(cfg)
    sinks: list = [JsonlSink(run_dir / "metrics.jsonl")]
    if cfg.use_tensorboard:
        root = Path(cfg.tb_project_name or os.environ.get("TENSORBOARD_DIR") or run_dir / "tensorboard")
        sinks.append(TensorBoardSink(root / (cfg.tb_experiment_name or run_dir.name)))
    if cfg.use_wandb:
        sinks.append(WandbSink(cfg, run_dir))
    return sinks

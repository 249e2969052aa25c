"""``temper eval``: a model alone — a Hugging Face folder or a temper checkpoint — on the eval datasets,
with no training.

    temper eval --hf-checkpoint DIR [--load CKPT] --eval-prompt-data NAME PATH [NAME PATH ...]
    temper eval --hf-checkpoint DIR --eval-config FILE.yaml [--rm-type math] [--apply-chat-template] ...

It takes train.py's flags and reads them the same way: the datasets (`--eval-prompt-data` or
`--eval-config`), their keys, the reward (`--rm-type`, `--custom-rm-path`, a dataset's rm_type), samples
per prompt, sampling (`--eval-*`, else `--rollout-*`), `--sglang-*` engine flags and plug-ins
(`--custom-generate-function-path`, `--eval-function-path`). Training flags are accepted and unused;
`--rollout-batch-size` and `--num-rollout` are not needed.

The model: `--hf-checkpoint`, or with `--load` (a --save root, an iter_* folder or its actor folder)
that checkpoint's actor, first written as a Hugging Face folder in a temporary folder with
--hf-checkpoint's config and tokenizer (as ``temper convert`` does). One engine serves it on this
machine — the built-in one on the GPU if there is one, else on the CPU, or SGLang with
`--rollout-backend sglang` — behind the built-in router; `--rollout-external-engine-addrs HOST:PORT`
evaluates engines already serving instead and starts none.

Output: every metric on stdout (eval/<name>, eval/<name>/pass@k, truncated_ratio, response_len_mean),
and in the run folder (`--run-dir`, else `--save`, else runs/DATE-TIME) eval_metrics.json (the metrics,
one flat mapping) and eval_samples.jsonl (one line per sample: dataset, index, group_index, prompt,
response, label, reward, status, response_length). Mistakes (no model, no datasets, a bad file or line)
are one line on stderr and exit status 2, before any engine starts.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from temper.command_line import build_parser, parse_config
from temper.config import Config, ConfigError

PROG = "temper eval"
USAGE = (
    "%(prog)s --hf-checkpoint DIR [--load CKPT] (--eval-prompt-data NAME PATH [NAME PATH ...] | "
    "--eval-config FILE.yaml) [train.py's flags]"
)
DESCRIPTION = (
    "Evaluate a Hugging Face folder (or --load's checkpoint) on the eval datasets, without training: one engine "
    "on this machine, eval/<name>, eval/<name>/pass@k and more printed and written to <run dir>/eval_metrics.json "
    "(samples: eval_samples.jsonl). train.py's flags, read the same way; training flags are unused."
)
# Required by train.py's rules but meaningless here; given first, so the user's own values win.
EVAL_ONLY_DEFAULTS = ["--rollout-batch-size", "1", "--num-rollout", "1"]


def main(argv: list[str]) -> int:
    """Run ``temper eval`` with `argv` (train.py's flags); returns the exit status."""
    if {"-h", "--help"} & set(argv):
        print(help_text())
        return 0
    from temper.data import DataError, PluginError

    try:
        cfg = parse_config([*EVAL_ONLY_DEFAULTS, *argv], prog=PROG)
        check(cfg)
        with model_folder(cfg):
            metrics, data = evaluate(cfg)
    except (ConfigError, DataError, PluginError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    report(cfg, metrics, data)
    return 0


def help_text() -> str:
    parser = build_parser(PROG)
    parser.usage = USAGE
    parser.description = DESCRIPTION
    return parser.format_help()


def check(cfg: Config) -> None:
    """ConfigError or DataError (one line) for a run that cannot start; reads every eval file."""
    from temper.rollout.evaluation import eval_datasets, load_eval_dataset

    datasets = eval_datasets(cfg)
    if not datasets:
        raise ConfigError(
            f"{PROG} needs datasets: --eval-prompt-data NAME PATH [NAME PATH ...] or --eval-config FILE.yaml"
        )
    if cfg.rollout_external_engine_addrs and cfg.load:
        raise ConfigError(
            "--load with --rollout-external-engine-addrs: those engines serve their own weights; drop one of them"
        )
    if not cfg.rollout_external_engine_addrs and not cfg.hf_checkpoint:
        raise ConfigError(
            "--hf-checkpoint is not set: temper eval serves that Hugging Face folder (with --load: the checkpoint's "
            "actor, written with that folder's config and tokenizer)"
        )
    for name, path in datasets.items():
        load_eval_dataset(cfg, name, path)  # DataError naming file:line


@contextmanager
def model_folder(cfg: Config) -> Iterator[None]:
    """With --load, point cfg.hf_checkpoint at the checkpoint's actor as a Hugging Face folder (temporary)."""
    if not cfg.load:
        yield
        return
    from temper.train import convert_checkpoint_to_hf

    origin = cfg.hf_checkpoint
    with tempfile.TemporaryDirectory(prefix="temper-eval-") as folder:
        try:
            convert_checkpoint_to_hf(cfg.load, origin, folder)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"--load {cfg.load}: {e}") from None
        cfg.hf_checkpoint = folder
        try:
            yield
        finally:
            cfg.hf_checkpoint = origin


def evaluate(cfg: Config) -> tuple[dict[str, float], dict[str, dict[str, list]]]:
    """(metrics, data) of one eval round against this run's engine(s)."""
    from temper.rollout import RolloutManager

    data_source = _data_source(cfg)
    with engine_urls(cfg) as urls, RolloutManager(cfg, urls, data_source=data_source) as manager:
        metrics = manager.eval(0)
        return metrics, manager.last_eval_data


@contextmanager
def engine_urls(cfg: Config) -> Iterator[list[str]]:
    """The engines to evaluate: --rollout-external-engine-addrs, else one started here (stopped after)."""
    from temper.cluster.engine_group import EngineWorker, external_engine_urls

    if cfg.rollout_external_engine_addrs:
        yield external_engine_urls(cfg.rollout_external_engine_addrs)
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    worker = EngineWorker(cfg, "127.0.0.1", device, threads=os.cpu_count() or 1)
    try:
        yield [worker.start()]
    finally:
        worker.stop()


class NoPrompts:
    """The data source of an eval-only run without --prompt-data: an eval function that asks it for
    training prompts is told to pass --prompt-data."""

    def get_samples(self, num_samples: int) -> list:
        raise RuntimeError(
            f"{PROG} was given no --prompt-data; pass it for an eval function that reads training prompts"
        )

    def __len__(self) -> int:
        return 0


def _data_source(cfg: Config) -> Any:
    if not cfg.prompt_data:
        return NoPrompts()
    from temper.data import build_data_source

    return build_data_source(cfg)


def report(cfg: Config, metrics: dict[str, float], data: dict[str, dict[str, list]]) -> Path:
    """Print the metrics; write eval_metrics.json and eval_samples.jsonl to the run folder (returned)."""
    from temper.observe import run_dir_of

    folder = run_dir_of(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for key in sorted(metrics):
        value = metrics[key]
        print(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    (folder / "eval_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    with open(folder / "eval_samples.jsonl", "w") as f:
        for name, result in data.items():
            for sample, reward in zip(result.get("samples") or [], result["rewards"]):
                f.write(json.dumps(_sample_line(name, sample, reward), default=str) + "\n")
    print(f"{PROG}: wrote {folder / 'eval_metrics.json'} and {folder / 'eval_samples.jsonl'}")
    return folder


def _sample_line(name: str, sample: Any, reward: float) -> dict[str, Any]:
    return {
        "dataset": name,
        "index": sample.index,
        "group_index": sample.group_index,
        "prompt": sample.prompt,
        "response": sample.response,
        "label": sample.label,
        "reward": reward,
        "status": sample.status.value,
        "response_length": sample.response_length,
    }

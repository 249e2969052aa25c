"""`run_driver`: what `train.py` and `train_async.py` share around their loop.

Parse the flags, check what the run reads, print the run's plan (run_plan.py), start the cluster, open
the run log (its clock starts with the driver, so the report's minutes include start-up), run the
loop, stop everything (also on errors and Ctrl-C). A failed step-0 preflight (preflight.py) exits with
its explanation. Mistakes exit at once with one line naming them,
before Ray or any worker starts: a bad flag, more GPUs than the cluster has, no --hf-checkpoint where a
model is loaded, a prompt file that is missing or has a bad line (every line of --prompt-data and of
the eval files is read here, also with --streaming-data, which then keeps only their positions). A run whose --load checkpoint already holds
the last of --num-rollout's rollouts says so and exits 0, leaving the previous run's report as it was.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from temper.cluster.cluster import Cluster
from temper.cluster.phase_watchers import watch_phases
from temper.cluster.preflight import PreflightError
from temper.cluster.remote import WorkerDied
from temper.cluster.run_plan import announce
from temper.command_line import parse_config
from temper.config import ConfigError
from temper.data import DataError, DataSource, PluginError, build_data_source, num_rollout_from_epochs
from temper.model_shape import check_hf_checkpoint
from temper.observe import RunLog, check_sinks, run_dir_of

Loop = Callable[..., list[dict]]


def run_driver(loop: Loop, argv: list[str] | None, prog: str, check=None) -> list[dict]:
    """`loop(cfg, cluster, log)` for the flags `argv` (default: sys.argv); returns its step records
    ([] when the --load checkpoint is already at --num-rollout).

    `check(cfg)` may raise ConfigError for rules only this driver has."""
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_config(argv, prog=prog)
        check_hf_checkpoint(cfg)
        if check is not None:
            check(cfg)
        check_sinks(cfg)
        check_rollout_plugins(cfg)
        data_source = load_data(cfg) if cfg.num_rollout is None else None  # --num-epoch: counted from the data
        if (done := finished(cfg)) is not None:
            print(f"{prog}: {done}")
            return []
        data_source = data_source if data_source is not None else load_data(cfg)
        announce(cfg, prog)  # the run's plan as its first lines: batches, placement, memory, staleness
        cfg.run_dir = str(run_dir_of(cfg))  # fixed once: the workers' stack files and the run log share it
        with (
            Cluster.start(cfg, data_source) as cluster,
            RunLog(cfg, shlex.join(["python", prog, *argv]), started=started) as log,
        ):
            print("\n".join([f"{prog} started:", *(f"  {x}" for x in cluster.started_lines)]), flush=True)
            watch_phases(cfg, cluster, log, eval_totals=cfg.eval_interval is not None and _default_eval(cfg))
            return loop(cfg, cluster, log)
    except (ConfigError, DataError, PluginError, PreflightError) as e:
        sys.exit(f"{prog}: error: {e}")
    except WorkerDied as e:
        sys.exit(f"{prog}: error: {e}. The run stopped; {resume_advice(cfg, prog, argv)}")


def resume_advice(cfg, prog: str, argv: list[str]) -> str:
    """Where the run's last checkpoint is and the command that resumes from it (--save's tracker)."""
    last = _checkpoint_rollout(Path(cfg.save)) if cfg.save else None
    if last is None:
        why = "--save was not set" if not cfg.save else f"no rollout was saved under --save {cfg.save} yet"
        return f"there is no checkpoint to resume from ({why})"
    rest = [a for i, a in enumerate(argv) if a != "--load" and (i == 0 or argv[i - 1] != "--load")]
    command = shlex.join(["python", prog, *rest, "--load", cfg.save])
    return f"its last checkpoint is rollout {last}'s in {cfg.save}; resume with: {command}"


def load_data(cfg) -> DataSource:
    """The training data source, every prompt file read once (DataError naming file:line on a bad
    row), --num-rollout from --num-epoch, and the eval datasets that temper's eval rollout reads
    (cached in this process, where the rollout manager runs)."""
    data_source = build_data_source(cfg)
    if cfg.num_rollout is None:  # the trainer's LR schedule needs the step count
        try:
            cfg.num_rollout = num_rollout_from_epochs(len(data_source), cfg.rollout_batch_size, cfg.num_epoch)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.eval_interval is not None and _default_eval(cfg):
        from temper.rollout.evaluation import eval_datasets, load_eval_dataset

        for name, path in eval_datasets(cfg).items():
            try:
                load_eval_dataset(cfg, name, path)
            except DataError as e:
                raise DataError(
                    f"--eval-prompt-data {name}",
                    str(e),
                    fix="eval files are read with --eval-input-key/--eval-label-key (default: the training keys)",
                ) from None
    return data_source


ROLLOUT_PLUG_POINTS = (
    "rollout_function_path", "eval_function_path", "custom_generate_function_path", "dynamic_sampling_filter_path",
    "rollout_sample_filter_path", "rollout_all_samples_process_path", "custom_reward_post_process_path",
)  # fmt: skip


def check_rollout_plugins(cfg) -> None:
    """Every rollout-side plug point given on the command line loads before Ray starts (a missing file,
    module or name is a PluginError naming its flag, not a failure once the engines run); the rollout
    loads them again where it calls them."""
    from temper.data import load_function
    from temper.rollout.plugins import load_plugin

    for name in ROLLOUT_PLUG_POINTS:
        if path := getattr(cfg, name, None):
            load_plugin(path, flag="--" + name.replace("_", "-"))
    if cfg.custom_rm_path:
        load_function(cfg.custom_rm_path, flag="--custom-rm-path")


def _default_eval(cfg) -> bool:
    """Whether evaluation runs temper's eval rollout (which reads --eval-prompt-data with the eval keys);
    a custom eval or rollout function reads the eval data its own way."""
    from temper.rollout.evaluation import eval_rollout_sync
    from temper.rollout.plugins import load_plugin
    from temper.rollout.rollout import generate_rollout

    path, flag = (cfg.eval_function_path, "--eval-function-path") if cfg.eval_function_path else (
        cfg.rollout_function_path, "--rollout-function-path"
    )  # fmt: skip
    return load_plugin(path, flag=flag) in (generate_rollout, eval_rollout_sync)


def finished(cfg) -> str | None:
    """What to say when the checkpoint under --load already holds rollout --num-rollout - 1 (a finished
    command run again), else None. Read from the checkpoint's tracker file or iter_* folder name, so
    nothing starts; --start-rollout-id and --debug-rollout-only (no trainer to resume) never finish."""
    if not cfg.load or cfg.start_rollout_id is not None or cfg.debug_rollout_only:
        return None
    last = _checkpoint_rollout(Path(cfg.load))
    if last is None or last + 1 < cfg.num_rollout:
        return None
    kept = f"; the previous run's report in {run_dir_of(cfg)} is left as it was" if cfg.run_dir or cfg.save else ""
    return (
        f"--load {cfg.load} already holds the checkpoint of rollout {last}, the last of --num-rollout "
        f"{cfg.num_rollout}: nothing left to train (raise --num-rollout to train further){kept}"
    )


def _checkpoint_rollout(path: Path) -> int | None:
    """The rollout id of the checkpoint --load names: a --save root (its tracker file), an iter_*
    folder or a role folder inside one; None when there is none yet."""
    for folder in (path, path.parent):
        if match := re.fullmatch(r"iter_(\d+)", folder.name):
            return int(match[1])
    from temper.train.checkpoint import TRACKER_FILE, latest_iteration  # imported here: torch.distributed

    if not (path / TRACKER_FILE).is_file():
        return None
    try:
        return latest_iteration(path)
    except ValueError as e:
        raise ConfigError(f"--load {path}: {e}; rewrite it with the last saved rollout id or remove it") from None

"""`run_driver`: what `train.py` and `train_async.py` share around their loop.

Parse the flags, start the cluster, open the run log (its clock starts with the driver, so the
report's minutes include start-up), run the loop, stop everything (also on errors and Ctrl-C). A configuration mistake — a bad flag, more GPUs than the cluster has — exits at once with
one line naming it, before any worker starts.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable

from temper.cluster.cluster import Cluster
from temper.command_line import parse_config
from temper.config import ConfigError
from temper.observe import RunLog, check_sinks

Loop = Callable[..., list[dict]]


def run_driver(loop: Loop, argv: list[str] | None, prog: str, check=None) -> list[dict]:
    """`loop(cfg, cluster, log)` for the flags `argv` (default: sys.argv); returns its step records.

    `check(cfg)` may raise ConfigError for rules only this driver has."""
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_config(argv, prog=prog)
        if check is not None:
            check(cfg)
        check_sinks(cfg)
        with Cluster.start(cfg) as cluster, RunLog(cfg, shlex.join(["python", prog, *argv]), started=started) as log:
            return loop(cfg, cluster, log)
    except ConfigError as e:
        sys.exit(f"{prog}: error: {e}")

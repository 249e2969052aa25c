"""Helpers of the bad-input suite (a plain module, not conftest, so that test files import it by a name no
other test folder uses): the driver's checks before Ray, and the one-line message check."""

from __future__ import annotations

from temper.cluster.driver import check_rollout_plugins, load_data
from temper.command_line import parse_config
from temper.config import ConfigError
from temper.data import DataError, PluginError
from temper.model_shape import check_hf_checkpoint

BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]
DRIVER_ERRORS = (ConfigError, DataError, PluginError)  # what run_driver turns into "train.py: error: ..."


def driver_checks(argv: list[str]):
    """What `train.py` runs before anything starts (temper/cluster/driver.py: parse_config,
    check_hf_checkpoint, check_rollout_plugins, load_data) on `argv`; returns the data source (None
    without --prompt-data)."""
    cfg = parse_config(argv)
    check_hf_checkpoint(cfg)
    check_rollout_plugins(cfg)
    return load_data(cfg) if cfg.prompt_data else None


def assert_message(error: BaseException, *parts: str) -> str:
    """The error's message is one line and contains every part; returned."""
    message = str(error)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message

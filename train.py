"""temper's synchronous RL driver (slime's train.py flags). The loop lands with the orchestration issue."""

import sys

from temper.command_line import parse_config
from temper.config import ConfigError


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_config(argv)
    except ConfigError as e:
        sys.exit(f"train.py: error: {e}")
    sys.exit(f"train.py: configuration is valid, but the RL loop is not built yet (rollout_batch_size={cfg.rollout_batch_size})")


if __name__ == "__main__":
    main()

"""``python -m temper.engine.server --model DIR [--port N] ...``: the same as ``temper serve``."""

from temper.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *__import__("sys").argv[1:]]))

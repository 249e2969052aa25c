"""The ``temper`` command: one subcommand per tool (``temper serve``; more to come).

Each subcommand registers its flags with `argparse` subparsers and imports its implementation only
when run, so ``temper --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    from temper.engine.server import run_server
    from temper.engine.server.server_args import server_args_from

    try:
        server_args = server_args_from(args)
    except ValueError as e:
        print(f"temper serve: {e}", file=sys.stderr)
        return 2
    run_server(server_args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from temper import __version__
    from temper.engine.server.server_args import add_serve_arguments

    parser = argparse.ArgumentParser(prog="temper", description="temper: RL post-training for LLMs.")
    parser.add_argument("--version", action="version", version=f"temper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="serve a model with the built-in engine (SGLang + OpenAI HTTP API)",
                           description="Serve a Hugging Face checkpoint over SGLang's native HTTP API and OpenAI's.")
    add_serve_arguments(serve)
    serve.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``temper`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

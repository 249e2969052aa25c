"""The ``temper`` command: one subcommand per tool (``temper serve``, ``temper convert``, ``temper eval``).

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


def _convert(args: argparse.Namespace) -> int:
    from temper.train import convert_checkpoint_to_hf

    try:
        out = convert_checkpoint_to_hf(args.input_dir, args.origin_hf_dir, args.output_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"temper convert: {e}", file=sys.stderr)
        return 2
    print(f"temper convert: wrote {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from temper.eval_command import main as eval_main

    return eval_main(args.flags)


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--input-dir", required=True, metavar="DIR", help="temper checkpoint: a --save root, an iter_* folder or its actor folder")
    a("--origin-hf-dir", "--hf-checkpoint", dest="origin_hf_dir", required=True, metavar="DIR",
      help="the Hugging Face folder the run started from (architecture, dtype, config, tokenizer)")
    a("--output-dir", required=True, metavar="DIR", help="where to write the Hugging Face folder")


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
    convert = sub.add_parser("convert", help="convert a training checkpoint (--save) to a Hugging Face folder",
                             description="Write the actor of a temper checkpoint as a Hugging Face folder "
                                         "(safetensors in the original dtype, config, tokenizer).")
    _add_convert_arguments(convert)
    convert.set_defaults(run=_convert)
    evaluate = sub.add_parser("eval", add_help=False,  # its flags are train.py's: `temper eval --help` lists them
                              help="evaluate a Hugging Face folder or a checkpoint on eval datasets (pass@k), "
                                   "no training")
    evaluate.set_defaults(run=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``temper`` console script; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "eval":
        args.flags = rest  # train.py's flags, parsed by temper.eval_command
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

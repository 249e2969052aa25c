"""The ``temper`` command: one subcommand per tool (``temper serve``, ``convert``, ``eval``, ``doctor``, ``plan``,
``report``).

Each subcommand registers its flags with `argparse` subparsers and imports its implementation only
when run, so ``temper --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def _doctor(args: argparse.Namespace) -> int:
    from temper.doctor import main as doctor

    return doctor()


def _report(args: argparse.Namespace) -> int:
    from temper.observe.report_html import write_html_report

    try:
        files = write_html_report(Path(args.run_dir))
    except FileNotFoundError as e:
        print(f"temper report: {e}", file=sys.stderr)
        return 2
    print(f"temper report: wrote {files.html}, {files.combined or 'no combined image'} and "
          f"{len(files.plots)} plots in {Path(args.run_dir) / 'plots'}")  # fmt: skip
    return 0


DRIVERS = ("train.py", "train_async.py")


def _plan(args: argparse.Namespace) -> int:
    """Print the plan of `args.flags` (train.py's, optionally after `[python] train.py|train_async.py`)."""
    from temper.cluster.run_plan import Target, describe_run
    from temper.command_line import parse_config
    from temper.config import ConfigError
    from temper.model_shape import check_hf_checkpoint
    from temper.quickstart import load_driver

    flags = args.flags
    if flags[:1] and Path(flags[0]).name.startswith("python"):
        flags = flags[1:]
    driver = Path(flags[0]).name if flags and Path(flags[0]).name in DRIVERS else "train.py"
    flags = flags[1:] if flags and Path(flags[0]).name in DRIVERS else flags
    gpu_bytes = None if args.gpu_memory_gib is None else int(args.gpu_memory_gib * 2**30)
    try:
        cfg = parse_config(flags, prog=driver)
        check_hf_checkpoint(cfg)
        check = getattr(load_driver(driver.removesuffix(".py")), "check", None)
        if check is not None:
            check(cfg)
        lines = describe_run(cfg, driver, Target.here(args.device, gpu_bytes))
    except ConfigError as e:
        print(f"temper plan: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--device", choices=["cuda", "cpu"],
      help="plan for GPUs or for CPU workers (default: what this machine has; cuda with --gpu-memory-gib)")
    a("--gpu-memory-gib", type=float, metavar="GIB",
      help="memory of each GPU for the estimate (default: this machine's; e.g. 80 for an H100)")


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
    doctor = sub.add_parser("doctor", help="check this machine: versions, GPUs, ports, disk, environment",
                            description="One verdict per line (ok, warn, fail) on what a run needs; exit 1 on a fail.")
    doctor.set_defaults(run=_doctor)
    plan = sub.add_parser(
        "plan", allow_abbrev=False, usage="temper plan [--device {cuda,cpu}] [--gpu-memory-gib GIB] "
        "[[python] train.py|train_async.py] TRAIN_FLAGS ...",
        help="what a train.py / train_async.py command line will do: batches, placement, memory, staleness",
        description="Print the plan of a run without running it: the batch arithmetic, which GPU does what, a memory "
                    "estimate per GPU, staleness (train_async.py) and warnings. Every flag not listed below is "
                    "train.py's; a leading train_async.py plans that driver.",
    )  # fmt: skip
    _add_plan_arguments(plan)
    plan.set_defaults(run=_plan)
    report = sub.add_parser(
        "report", help="plots and a self-contained HTML page of a run folder (report.html, report.png, plots/)",
        description="Read RUN_DIR/metrics.jsonl (and samples.jsonl) and write the run report again: plots/*.png, "
                    "report.png (the main plots in one image) and report.html (health checks, plots, samples). "
                    "Every run writes them at its end; this redraws them, e.g. during a run or after a crash.",
    )  # fmt: skip
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (--run-dir, --save or runs/<date-time>)")
    report.set_defaults(run=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``temper`` console script; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("eval", "plan"):
        args.flags = rest  # train.py's flags, parsed by temper.eval_command / temper.cluster.run_plan
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Writing prompt data: JSONL files, and the train/test command that the examples' data makers share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """`rows` as one JSON object a line at `path` (its folder made); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_train_test(argv: list[str] | None, description: str, out_dir: Path,
                     make_rows: Callable[[int, int], list[dict]]) -> tuple[Path, Path]:
    """The command line of a synthetic data maker: --out-dir (default `out_dir`), --train-size, --test-size,
    --seed; writes make_rows(train size, seed) to train.jsonl and make_rows(test size, seed + 1) to test.jsonl."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", type=Path, default=out_dir)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train = write_jsonl(args.out_dir / "train.jsonl", make_rows(args.train_size, args.seed))
    test = write_jsonl(args.out_dir / "test.jsonl", make_rows(args.test_size, args.seed + 1))
    print(f"wrote {args.train_size} rows to {train} and {args.test_size} rows to {test}")
    return train, test

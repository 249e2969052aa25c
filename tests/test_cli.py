"""``temper``: the help and argument parsing load neither torch nor transformers (issue 17: 2.6 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")

# Runs the console script's main() with the given argv, then prints the heavy modules it loaded.
_PROBE = """
import sys
from temper.cli import build_parser, main
argv = sys.argv[1:]
try:
    if argv[:1] == ["parse"]:
        build_parser().parse_args(argv[1:])
    else:
        main(argv)
except SystemExit:
    pass
print("LOADED=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [
    ["--help"], ["serve", "--help"], ["convert", "--help"], ["parse", "serve", "--model", "m", "--port", "1"],
    ["eval", "--help"], ["doctor", "--help"], ["plan", "--help"],
])
def test_help_and_parsing_do_not_import_torch(argv):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED=", out


def test_engine_names_still_import():
    import temper.engine
    from temper.engine import EngineArgs, LLMEngine, RequestOutput, SamplingParams  # noqa: F401

    assert sorted(temper.engine.__all__) == ["EngineArgs", "LLMEngine", "RequestOutput", "SamplingParams"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        temper.engine.Nope  # noqa: B018

"""benchmarks/engine_load.py's kill part at a small scale: 100 requests at once through temper's fault-tolerant
router (its own process) over two engine processes; engine 0 gets SIGKILL with requests in flight. Every request
completes exactly once, with all its tokens, through the surviving engine; the router sent the killed engine's
requests again and lists only the survivor afterwards. Real processes, real HTTP on loopback."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("engine_load", ROOT / "benchmarks" / "engine_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_request_completes_once_through_the_surviving_engine():
    from temper.testing import tiny_model_dir

    bench = load_benchmark()
    # 4 running at most: engine 0 still holds a queue when it has finished a fifth of its half
    args = bench.parse_args(["--part", "kill", "--requests", "100", "--clients", "10", "--max-new-tokens", "16",
                             "--max-running-requests", "4", "--kill-after", "0.2", "--timeout", "120"])  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        result = bench.run_kill(tiny_model_dir("qwen3"), args, Path(folder))
    assert result["failures"] == [] and result["missing"] == []
    assert result["completed"] == 100 and result["completed_twice"] == 0
    assert result["tokens_per_request"] == {16: 100}  # each with its 16 tokens
    assert result["in_flight_on_killed"] > 0
    assert result["resent_by_router"] > 0  # what died with the engine was sent again (its count just before the
    # kill, in_flight_on_killed, is a bound: the engine finishes a few more before the signal lands)
    assert result["served_by_killed"] + result["served_by_survivor"] == 100
    assert result["router_workers_after"] == [result["survivor"]]

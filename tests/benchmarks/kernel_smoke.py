"""Runs a kernel benchmark's --smoke in a fresh process (triton's interpreter must be on before any kernel is
defined) on the CPU; a plain module with a name no other test folder uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def smoke_results(script: str, tmp_path: Path) -> list[dict]:
    """The results of ``benchmarks/<script> --smoke`` run under TRITON_INTERPRET=1 with no GPU visible."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
                   env=env, check=True, timeout=600)
    return json.loads(out.read_text())["results"]

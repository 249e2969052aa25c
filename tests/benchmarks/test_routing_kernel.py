"""benchmarks/routing_kernel.py on CPU: --smoke (small shapes, the routing kernels under triton's interpreter,
in a fresh process: the interpreter must be on before any kernel is defined) agrees with the references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_agrees_with_the_references(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "routing_kernel.py"), "--smoke", "--out", str(out)],
                   env=env, check=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    assert [(r["shape"], r["tokens"]) for r in results] == [(s, t) for s in ("tiny-sigmoid", "tiny-softmax")
                                                            for t in (1, 5)]
    for r in results:
        assert r["same_ids"] == 1.0 and r["max_rel"] < 1e-2  # softmax: bf16 weights
        assert all(r[f"{path}_{part}_ms"] > 0 for path in ("reference", "kernel") for part in ("router", "topk"))

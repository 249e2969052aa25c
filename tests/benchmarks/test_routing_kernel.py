"""benchmarks/routing_kernel.py on CPU: --smoke (small shapes, the routing kernels under triton's interpreter,
in a fresh process: the interpreter must be on before any kernel is defined) agrees with the references."""

from __future__ import annotations

import pytest
from kernel_smoke import smoke_results

pytest.importorskip("triton")


def test_smoke_agrees_with_the_references(tmp_path):
    results = smoke_results("routing_kernel.py", tmp_path)
    assert [(r["shape"], r["tokens"]) for r in results] == [(s, t) for s in ("tiny-sigmoid", "tiny-softmax")
                                                            for t in (1, 5)]
    for r in results:
        assert r["same_ids"] == 1.0 and r["max_rel"] < 1e-2  # softmax: bf16 weights
        assert all(r[f"{path}_{part}_ms"] > 0 for path in ("reference", "kernel") for part in ("router", "topk"))

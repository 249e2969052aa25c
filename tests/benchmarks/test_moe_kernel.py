"""benchmarks/moe_kernel.py on CPU: --smoke (tiny shapes, the fused kernels under triton's interpreter, in a
fresh process: the interpreter must be on before any kernel is defined) runs every tile and agrees with the
grouped GEMMs."""

from __future__ import annotations

import pytest
from kernel_smoke import smoke_results

pytest.importorskip("triton")

from temper.engine import kernels  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not kernels.grouped_mm_runs_on_cpu(), reason="this PyTorch has no CPU torch._grouped_mm")
def test_smoke_runs_every_tile(tmp_path):
    results = smoke_results("moe_kernel.py", tmp_path)
    assert [r["tokens"] for r in results] == [1, 16]
    for r in results:
        assert len(r["configs"]) == 6 and r["touched_experts"] >= 2
        assert all(c["rel_error"] < 1e-2 for c in r["configs"])

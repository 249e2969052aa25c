"""`TPGroup` on two GPUs: `all_reduce` through symmetric memory (`SymmetricAllReduce`) gives NCCL's bits, eagerly
and replayed from a CUDA graph, the same on both ranks; tensors it does not take still sum, through NCCL.
(The engine's TP=2 parity tests in test_tensor_parallel_gpu.py run with it on.)"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from temper.engine.tp_group import TPGroup

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]

HIDDEN, MAX_ROWS = 2560, 4096


def _rank(rank: int, port: int, out_dir: str) -> None:
    from temper.engine.kernels.common import cuda_graph_of

    device = torch.device("cuda", rank)
    group = TPGroup.join(port, rank, 2, device)
    try:
        assert group.enable_symmetric_memory(torch.bfloat16, MAX_ROWS * HIDDEN) is None
        g = torch.Generator(device=device).manual_seed(rank)
        out = {}
        for rows in (1, 7, 256, MAX_ROWS):
            x = torch.randn(rows, HIDDEN, generator=g, device=device, dtype=torch.bfloat16)
            nccl = x.clone()
            group.pg.allreduce([nccl]).wait()
            out[rows] = (group.symmetric.takes(x), group.all_reduce(x.clone()).cpu(), nccl.cpu())
        static = torch.empty(256, HIDDEN, device=device, dtype=torch.bfloat16)
        graph = cuda_graph_of(lambda: group.all_reduce(static), 1, device)
        for _ in range(3):
            x = torch.randn(256, HIDDEN, generator=g, device=device, dtype=torch.bfloat16)
            static.copy_(x)
            graph.replay()
            nccl = x.clone()
            group.pg.allreduce([nccl]).wait()
            out.setdefault("graph", []).append((static.cpu(), nccl.cpu()))
        del graph
        out["not taken"] = {
            "float16": group.symmetric.takes(torch.ones(8, HIDDEN, dtype=torch.float16, device=device)),
            "too many rows": group.symmetric.takes(torch.ones(MAX_ROWS + 1, HIDDEN, dtype=torch.bfloat16, device=device)),
            "6 bytes": group.symmetric.takes(torch.ones(3, dtype=torch.bfloat16, device=device)),
            "strided": group.symmetric.takes(torch.ones(8, 2 * HIDDEN, dtype=torch.bfloat16, device=device)[:, ::2]),
        }
        odd = torch.full((3,), rank + 1.0, dtype=torch.bfloat16, device=device)
        out["odd sum"] = group.all_reduce(odd).cpu()
        torch.cuda.synchronize(device)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        group.close()


def test_symmetric_all_reduce_gives_nccls_bits(tmp_path):
    store = TPGroup.host_store(2)  # held here; both ranks join it as clients
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(rank, store.port, str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for out in ranks:
        for rows in (1, 7, 256, MAX_ROWS):
            taken, got, nccl = out[rows]
            assert taken, rows
            assert torch.equal(got, nccl), rows
        for got, nccl in out["graph"]:
            assert torch.equal(got, nccl)
        assert not any(out["not taken"].values()), out["not taken"]
        assert out["odd sum"].tolist() == [3.0, 3.0, 3.0]
    for rows in (1, 7, 256, MAX_ROWS):
        assert torch.equal(ranks[0][rows][1], ranks[1][rows][1]), rows

"""Timing helpers of the kernel benchmarks (`moe_kernel.py`, `routing_kernel.py`): a call replayed from a CUDA
graph of several calls (the engine's decode replays graphs, so launch gaps count as they do there), the same
call timed on the host for --smoke runs on a CPU, and the device's copy bandwidth for a roofline."""

from __future__ import annotations

import json
import os
import time

import torch

GRAPH_CALLS = 8  # calls of the timed function captured in one CUDA graph


def time_graph_ms(fn, device: torch.device, repeats: int) -> float:
    """Milliseconds per call of `fn`, replayed from a CUDA graph of `GRAPH_CALLS` calls (median of `repeats`
    replays between CUDA events, after a warm-up call and a warm-up replay)."""
    from temper.engine.kernels.common import cuda_graph_of, median_cuda_ms

    fn()
    torch.cuda.synchronize(device)
    graph = cuda_graph_of(fn, GRAPH_CALLS, device)
    graph.replay()
    return median_cuda_ms(graph.replay, repeats) / GRAPH_CALLS


def time_smoke_ms(fn, device: torch.device, repeats: int) -> float:
    """Milliseconds per call of `fn` on the host clock (a --smoke run on a CPU: only that it runs)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def copy_gb_per_s(device: torch.device, repeats: int) -> float:
    """Device-to-device copy bandwidth (bytes read + written) of a 1 GiB clone."""
    from temper.engine.kernels.common import median_cuda_ms

    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.numel() / 1e9 / median_cuda_ms(lambda: dst.copy_(src), repeats) * 1e3


def bench_device(smoke: bool, script: str) -> torch.device | None:
    """The device a kernel benchmark runs on: the GPU; with --smoke and no GPU the CPU, with triton's interpreter
    turned on (before the kernels are defined: call this before importing them); else None, after saying why."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        return torch.device("cpu")
    print(f"{script}: needs a CUDA GPU (or --smoke)")
    return None


def sweep_inputs(args, device: torch.device, shapes: dict, smoke_shapes: dict, smoke_tokens: list[int]):
    """(shapes, token counts, summary) of a kernel benchmark's sweep: --shapes and --tokens of `shapes`, or with
    --smoke `smoke_shapes` and `smoke_tokens` at one repeat; the summary holds the device, torch's version and
    an empty list of results."""
    if args.smoke:
        args.repeats = 1
        shapes, tokens = smoke_shapes, smoke_tokens
    else:
        shapes = {name: shapes[name] for name in args.shapes.split(",")}
        tokens = [int(t) for t in args.tokens.split(",")]
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)",
               "torch": torch.__version__, "results": []}
    return shapes, tokens, summary


def sweep(summary: dict, shapes: dict, tokens: list[int], bench, report, out: str | None) -> int:
    """`bench(name, shape, tokens)` for every shape and token count under inference mode, each result reported
    (`report(result)`) and added to `summary["results"]`; the summary written as JSON to `out` if given."""
    with torch.inference_mode():
        for name, shape in shapes.items():
            for t in tokens:
                result = bench(name, shape, t)
                summary["results"].append(result)
                report(result)
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0

"""Helpers shared by the Triton kernels: dtype rounding and a matrix product that the interpreter can run."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Read once, when the kernels are defined: the interpreter (numpy) has no bf16 matrix product.
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

# ROUND codes: how a float32 value is rounded to the activation dtype inside a kernel.
ROUND_NONE, ROUND_BF16, ROUND_FP16 = 0, 1, 2


def round_code(dtype: torch.dtype) -> int:
    return {torch.bfloat16: ROUND_BF16, torch.float16: ROUND_FP16}.get(dtype, ROUND_NONE)


@triton.jit
def round_to(x, ROUND: tl.constexpr):
    """float32 `x` rounded to the activation dtype (nearest even), kept in float32.

    bf16 rounds through the bits, so that the interpreter (which truncates on casts) and the GPU agree
    with PyTorch; the result converts to bf16 exactly.
    """
    if ROUND == 1:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    elif ROUND == 2:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def mma(a, b, IEEE: tl.constexpr):
    """a @ b with float32 accumulation; IEEE float32 products when the inputs are float32 (no tf32)."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def median_cuda_ms(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of `fn`, each timed between CUDA events (warm it up first)."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[repeats // 2]


def cuda_graph_of(fn, calls: int, device: torch.device) -> torch.cuda.CUDAGraph:
    """`calls` calls of `fn` captured in one CUDA graph (on a side stream, as capture requires), for
    timing kernels as a graph replays them: without the host's launch time."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        for _ in range(calls):
            fn()
        graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph

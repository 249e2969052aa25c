"""Varlen attention backends on the trainer's packed rows (issue 13): Flash Attention through
`torch.nn.attention.varlen.varlen_attn` (temper's trainer path) beside cuDNN's ragged attention
(`aten._cudnn_attention_forward/backward` with cumulative sequence lengths), forward and
forward+backward, on one GPU.

Workload: packed rows of --tokens tokens made of sequences of prompt U[64, 512] + response
U[256, 1536] tokens (train_throughput.py's), Qwen3-0.6B's attention shape (16 query heads, 8 K/V
heads, head size 128), bf16, causal. Each backend is timed with CUDA events, median of --repeats
after a warm-up, on --rows different rows (the trainer's micro-batches differ in length and
maximum: a backend that plans per shape pays that on every new row, so the first call on each row
is timed separately as "first call"). Outputs and gradients are compared with the Flash path and,
on the first sequences of one row, with an fp32 per-sequence reference.

    python benchmarks/attention_backends.py --out attn.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
import torch.nn.functional as F


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384, help="tokens per packed row")
    p.add_argument("--rows", type=int, default=4, help="different rows (sequence layouts)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def make_row(tokens: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    lengths, total = [], 0
    while True:
        n = rng.randint(64, 512) + rng.randint(256, 1536)
        if total + n > tokens:
            break
        lengths.append(n)
        total += n
    return lengths


def cu_seqlens(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def flash_fn():
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa = "enable_gqa" in params

    def run(q, k, v, cu, max_len):
        extra = dict(causal)
        if gqa and q.shape[1] != k.shape[1]:
            extra["enable_gqa"] = True
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, **extra)

    return run


class CudnnVarlen(torch.autograd.Function):
    """cuDNN's ragged (THD) attention, called through its ATen ops; K/V heads repeated to the query's
    when `expand` (in case the ragged path has no grouped-query support)."""

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len):
        out = torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max_len, max_len, True, 0.0, True, False)
        output, lse, seed, offset = out[0], out[1], out[6], out[7]
        ctx.save_for_backward(q, k, v, output, lse, seed, offset, cu)
        ctx.max_len = max_len
        return output

    @staticmethod
    def backward(ctx, grad):
        q, k, v, output, lse, seed, offset, cu = ctx.saved_tensors
        empty = torch.empty(0, device=q.device, dtype=q.dtype)
        dq, dk, dv = torch.ops.aten._cudnn_attention_backward(
            grad.contiguous(), q, k, v, output, lse, seed, offset, empty, cu, cu, ctx.max_len, ctx.max_len, 0.0, True
        )
        return dq, dk, dv, None, None


def cudnn_fn(expand: bool):
    def run(q, k, v, cu, max_len):
        if expand and k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return CudnnVarlen.apply(q, k, v, cu, max_len)

    return run


def reference(q, k, v, lengths, count: int) -> torch.Tensor:
    """fp32 causal attention of the first `count` sequences, each on its own."""
    outs, start = [], 0
    for n in lengths[:count]:
        rows = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(
            *(t[rows].float().transpose(0, 1) for t in (q, k, v)), is_causal=True, enable_gqa=True
        ).transpose(0, 1))  # fmt: skip
        start += n
    return torch.cat(outs)


def time_it(fn, repeats: int) -> tuple[float, float]:
    """(first call's wall ms, median of `repeats` calls' CUDA-event ms)."""
    from temper.engine.kernels.common import median_cuda_ms  # Triton's module: CUDA machines only

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = (time.perf_counter() - t0) * 1e3
    return first, median_cuda_ms(fn, repeats)


def attention_flops(lengths: list[int], heads: int, head_dim: int) -> float:
    """Causal forward FLOPs: two matmuls over half of each sequence's L x L scores."""
    return sum(2 * 2 * heads * head_dim * n * n / 2 for n in lengths)


def bench(args) -> dict:
    device = torch.device("cuda")
    torch.manual_seed(0)
    backends = {"flash": flash_fn(), "cudnn": cudnn_fn(False), "cudnn_expanded_kv": cudnn_fn(True),
                # the trainer compiles its decoder layers: the op must also trace (dynamic shapes)
                "flash_compiled": torch.compile(flash_fn(), dynamic=True),
                "cudnn_compiled": torch.compile(cudnn_fn(False), dynamic=True)}
    results = {name: {"fwd_ms": [], "fwd_bwd_ms": [], "first_ms": [], "error": None} for name in backends}
    flops = 0.0
    for row in range(args.rows):
        lengths = make_row(args.tokens, row)
        total, max_len = sum(lengths), max(lengths)
        cu = cu_seqlens(lengths, device)
        flops += attention_flops(lengths, args.heads, args.head_dim)
        q = torch.randn(total, args.heads, args.head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(total, args.kv_heads, args.head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(total, args.kv_heads, args.head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(total, args.heads, args.head_dim, device=device, dtype=torch.bfloat16)
        expected = None
        for name, fn in backends.items():
            result = results[name]
            if result["error"]:
                continue
            try:
                q.grad = k.grad = v.grad = None
                out = fn(q, k, v, cu, max_len)
                out.backward(grad)
                grads = [t.grad.clone() for t in (q, k, v)]
                if expected is None:
                    expected = (out.detach(), grads)
                    ref = reference(q.detach(), k.detach(), v.detach(), lengths, 3)
                    result.setdefault("max_abs_vs_fp32_reference", []).append(
                        (out[: len(ref)].float() - ref).abs().max().item())
                else:
                    result.setdefault("out_max_abs_vs_flash", []).append((out.detach() - expected[0]).abs().max().item())
                    result.setdefault("grad_max_rel_vs_flash", []).append(max(
                        ((a - b).float().norm() / b.float().norm()).item() for a, b in zip(grads, expected[1])))
                with torch.no_grad():
                    first, fwd = time_it(lambda: fn(q, k, v, cu, max_len), args.repeats)

                def fwd_bwd():
                    q.grad = k.grad = v.grad = None
                    fn(q, k, v, cu, max_len).backward(grad)

                _, both = time_it(fwd_bwd, args.repeats)
                result["fwd_ms"].append(fwd)
                result["fwd_bwd_ms"].append(both)
                result["first_ms"].append(first)
            except Exception as error:  # a backend this build lacks is reported, not fatal
                result["error"] = f"{type(error).__name__}: {error}"[:400]
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(), "rows": args.rows, "tokens_per_row": args.tokens,
               "backends": list(backends)}  # fmt: skip
    for name, result in results.items():
        if result["fwd_ms"]:
            fwd, both = sum(result["fwd_ms"]), sum(result["fwd_bwd_ms"])
            result["fwd_tflops"] = flops * len(result["fwd_ms"]) / args.rows / fwd / 1e9
            result["fwd_bwd_tflops"] = 3.5 * flops * len(result["fwd_ms"]) / args.rows / both / 1e9
        summary[name] = result
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_backends: needs a CUDA GPU")
        return 1
    summary = bench(args)
    flash = summary["flash"]
    for name in summary["backends"]:
        r = summary[name]
        if r["error"] and not r["fwd_ms"]:
            print(f"{name:>18}: unavailable: {r['error']}")
            continue
        ratio = sum(flash["fwd_bwd_ms"]) / sum(r["fwd_bwd_ms"]) if flash["fwd_bwd_ms"] else float("nan")
        print(f"{name:>18}: fwd {statistics.median(r['fwd_ms']):6.2f} ms ({r['fwd_tflops']:5.0f} TFLOP/s)  "
              f"fwd+bwd {statistics.median(r['fwd_bwd_ms']):6.2f} ms ({r['fwd_bwd_tflops']:5.0f} TFLOP/s)  "
              f"first call {max(r['first_ms']):7.1f} ms  flash/this fwd+bwd {ratio:4.2f}x  "
              f"vs flash out {max(r.get('out_max_abs_vs_flash', [0])):.3g} grad rel "
              f"{max(r.get('grad_max_rel_vs_flash', [0])):.3g}  vs fp32 {max(r.get('max_abs_vs_fp32_reference', [0])):.3g}"
              + (f"  (error later: {r['error']})" if r["error"] else ""))  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

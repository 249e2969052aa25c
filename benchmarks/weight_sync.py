"""Colocated weight sync on one GPU: the ipc transport (CUDA IPC) against the tensor handoff (/dev/shm).

For each model shape (random bf16 checkpoints of Qwen3-0.6B's and Qwen3-4B's shapes, built once with
`temper.testing.build_tiny_model` under --workdir), one engine server process runs on cuda:0 and this
process plays a colocated train rank on the same GPU: it holds the checkpoint's tensors on the GPU and
times `WeightSender.send` of all of them, in buckets of --bucket-bytes as `Actor.iter_weight_buckets`
makes them, for each transport (ipc first, then the old tensor handoff as the same-run baseline):
--warmup sends, then the median of --repeats (--tensor-repeats for the slow baseline). Each result is
printed as it comes (a ``RESULT {json}`` line: bytes, ms, GB/s = bytes / median time) and the table
closes the run; --out also writes them as JSON. With --check [ipc,tensor], each transport listed then
sends the negated weights and the original ones back and compares the engine's tensors with the sent ones after each:
the first rows of every tensor (--check-weight-update-equal's probe) and every tensor of at most
65536 elements whole (``/get_weights_by_name``).

On a machine without CUDA the engine runs on the CPU and only the tensor handoff is timed (ipc needs
CUDA and is reported as skipped).

    python benchmarks/weight_sync.py --check                 # GPU: both shapes, ipc and tensor
    python benchmarks/weight_sync.py --shapes tiny --check   # CPU smoke run (tensor only), under a minute
    bash benchmarks/device/weight_sync.sh                    # the device tool (carry .device)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from temper.cluster.weight_sync import SyncSpec, WeightSender
from temper.engine.weights import iter_safetensors
from temper.testing import PRESETS, build_tiny_model
from temper.testing.server_process import engine_server_process

RESULT = "RESULT "
WHOLE_NUMEL = 1 << 16  # --check compares tensors up to this many elements whole


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="qwen3-0.6b,qwen3-4b" if cuda else "tiny",
                   help=f"comma-separated presets of temper.testing ({', '.join(sorted(PRESETS))})")
    p.add_argument("--transports", default="ipc,tensor", help="comma-separated: ipc, tensor")
    p.add_argument("--bucket-bytes", type=int, default=512 << 20, help="--update-weight-buffer-size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tensor-repeats", type=int, default=3, help="repeats of the tensor handoff (seconds each)")
    p.add_argument("--check", nargs="?", const="ipc,tensor", default="",
                   help="compare the engine's tensors with the sent ones (after the transports listed; default all)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "temper-weight-sync")
    p.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--engine-timeout", type=float, default=600.0, help="seconds for an engine to start")
    args = p.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.transports = [t for t in args.transports.split(",") if t]
    args.check = [t for t in args.check.split(",") if t]
    transports = set(args.transports) | set(args.check)
    unknown = sorted(set(args.shapes) - set(PRESETS)) + sorted(transports - {"ipc", "tensor"})
    if unknown:
        p.error(f"unknown shape(s) or transport(s) {unknown}; shapes: {sorted(PRESETS)}, transports: ipc, tensor")
    return args


def runnable(transports: list[str], cuda: bool) -> list[str]:
    if "ipc" in transports and not cuda:
        print("ipc: skipped: it needs CUDA (torch.cuda.is_available() is False)")
        return [t for t in transports if t != "ipc"]
    return transports


def checkpoint(workdir: Path, shape: str) -> Path:
    """The bf16 checkpoint of `shape` under `workdir`, built on first use (Qwen3-4B: a minute or two)."""
    path = workdir / shape
    if not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
        started = time.perf_counter()
        build_tiny_model(path, "qwen3", preset=shape, dtype=torch.bfloat16)
        print(f"{shape}: built the checkpoint in {time.perf_counter() - started:.0f} s ({path})")
    return path


def in_buckets(pairs: list, bucket_bytes: int) -> list[list]:
    """Consecutive tensors in buckets of at most `bucket_bytes` (a bigger one alone), as the trainer's."""
    buckets, size = [[]], 0
    for name, t in pairs:
        nbytes = t.numel() * t.element_size()
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append((name, t))
        size += nbytes
    return buckets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_sends(sender: WeightSender, pairs: list, args, device, repeats: int) -> tuple[list[float], dict]:
    """Seconds of each timed send (after the warm-up ones), and the last send's stats."""
    times, stats = [], {}
    for i in range(args.warmup + repeats):
        sync(device)
        started = time.perf_counter()
        stats = sender.send(iter(in_buckets(pairs, args.bucket_bytes)), f"{sender.spec.transport}-{i}")
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    return times, stats


def check_engine(sender: WeightSender, url: str, pairs: list, args, engine_dtype: torch.dtype) -> int:
    """Send the negated weights, then the original ones back (exact in any float dtype); after each,
    compare the engine's copies with the sent tensors. Returns the number of comparisons; RuntimeError
    naming the first tensors that differ."""
    sender.spec = dataclasses.replace(sender.spec, check=True)
    compared = 0
    with httpx.Client(base_url=url, timeout=300, trust_env=False) as http:
        for label in ("negated", "original"):
            for _, t in pairs:
                t.neg_()
            sender.send(iter(in_buckets(pairs, args.bucket_bytes)), f"check-{label}")
            compared += sender.check() + compare_whole(http, pairs, engine_dtype, label)
    return compared


def compare_whole(http: httpx.Client, pairs: list, engine_dtype: torch.dtype, label: str) -> int:
    wrong, compared = [], 0
    for name, t in pairs:
        if t.numel() > WHOLE_NUMEL:
            continue
        r = http.post("/get_weights_by_name", json={"name": name, "truncate_size": t.shape[0]})
        got = torch.tensor(r.json(), dtype=torch.float32) if r.status_code == 200 else None
        if got is None or not torch.equal(got, t.to(engine_dtype).float().cpu()):
            wrong.append(f"{name}: {r.text[:200] if got is None else 'differs'}")
        compared += 1
    if wrong:
        raise RuntimeError(f"--check ({label} weights): {len(wrong)} engine tensors differ from the sent ones: {wrong[:5]}")
    return compared


def bench_transport(transport: str, url: str, pairs: list, args, device, engine_dtype: str) -> dict:
    spec = SyncSpec(transport, [url], {0: [0]}, bucket_bytes=args.bucket_bytes, engine_dtype=engine_dtype)
    sender = WeightSender(spec, rank=0)
    try:
        repeats = args.repeats if transport == "ipc" else args.tensor_repeats
        times, stats = timed_sends(sender, pairs, args, device, repeats)
        checked = check_engine(sender, url, pairs, args, getattr(torch, engine_dtype)) if transport in args.check else None
    finally:
        sender.close()
    median = statistics.median(times)
    return {"transport": transport, "bytes": int(stats["sync/bytes"]), "tensors": int(stats["sync/tensors"]),
            "buckets": int(stats["sync/buckets"]), "ms": 1e3 * median, "gb_per_s": stats["sync/bytes"] / median / 1e9,
            "ms_all": [round(1e3 * t, 2) for t in times], "checked": checked}  # fmt: skip


def bench_shape(shape: str, args, transports: list[str], device: torch.device) -> list[dict]:
    path = checkpoint(args.workdir, shape)
    engine_dtype = "bfloat16" if device.type == "cuda" else "float32"
    pairs = [(name, t.to(device)) for name, t in iter_safetensors(path)]  # the checkpoint's bf16, as a trainer sends
    flags = ["--device", str(device), "--dtype", engine_dtype, "--num-kv-blocks", "64", "--max-model-len", "512",
             "--max-running-requests", "16", "--log-level", "warning"]  # a small KV cache: the weights are what counts
    results = []
    started = time.perf_counter()
    with engine_server_process(path, *flags, timeout_s=args.engine_timeout) as url:
        print(f"{shape}: engine ready in {time.perf_counter() - started:.0f} s at {url} ({device}, {engine_dtype})")
        for transport in transports:
            result = {"shape": shape, "device": device_name(device)} | bench_transport(
                transport, url, pairs, args, device, engine_dtype)  # fmt: skip
            print(RESULT + json.dumps(result), flush=True)
            results.append(result)
    del pairs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def table(results: list[dict]) -> str:
    lines = [f"{'shape':<12} {'transport':<9} {'GB':>7} {'tensors':>7} {'buckets':>7} {'ms':>9} {'GB/s':>7}  check"]
    for r in results:
        check = "-" if r["checked"] is None else f"ok ({r['checked']})"
        lines.append(f"{r['shape']:<12} {r['transport']:<9} {r['bytes'] / 1e9:>7.3f} {r['tensors']:>7} "
                     f"{r['buckets']:>7} {r['ms']:>9.1f} {r['gb_per_s']:>7.2f}  {check}")  # fmt: skip
    by = {(r["shape"], r["transport"]): r["ms"] for r in results}
    for shape in dict.fromkeys(r["shape"] for r in results):
        if (shape, "ipc") in by and (shape, "tensor") in by:
            lines.append(f"{shape}: ipc is {by[shape, 'tensor'] / by[shape, 'ipc']:.1f}x faster than tensor")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    transports = runnable(args.transports, device.type == "cuda")
    if not transports:
        sys.exit("nothing to time: ipc needs CUDA; add --transports tensor")
    print(f"device {device_name(device)}; torch {torch.__version__}; bucket {args.bucket_bytes >> 20} MiB; "
          f"warm-up {args.warmup}, repeats {args.repeats} (tensor {args.tensor_repeats})")  # fmt: skip
    results = []
    for shape in args.shapes:
        results += bench_shape(shape, args, transports, device)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()

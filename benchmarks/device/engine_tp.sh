#!/usr/bin/env bash
# Engine tensor parallelism (issue 6) on two GPUs, for the device tool: the GPU tests (symmetric-memory
# all-reduce bits, TP=2 parity on a Qwen3-4B shape, single-GPU parity and graphs), then Qwen3-4B throughput
# with TP=1, TP=2 and TP=2 with NCCL all-reduces (the baseline of the symmetric-memory ones).
# Usage (repo root, carry .device): bash benchmarks/device/engine_tp.sh
source benchmarks/device/setup.sh
timeout "${TEST_TIMEOUT:-240}" python -m pytest -m gpu -q -rA -s -p no:cacheprovider tests/engine/test_tp_group_gpu.py tests/engine/test_tensor_parallel_gpu.py \
  tests/engine/test_gpu_parity.py tests/engine/test_cuda_graph.py 2>&1 | tee "$OUT/tp_gpu_tests.log" | tail -n 15
timeout "${BENCH_TIMEOUT:-330}" python benchmarks/engine_throughput.py --parts bandwidth,tp1-4b,tp2-4b-nccl,tp2-4b \
  --total-budget "${TOTAL_BUDGET:-320}" 2>&1 | tee "$OUT/engine_tp_bench.log" | grep -v '^  {'

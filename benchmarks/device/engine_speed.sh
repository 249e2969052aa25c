#!/usr/bin/env bash
# Engine speed work (issue 6) on one GPU, for the device tool: the paged-attention kernel tests on CUDA,
# then the throughput benchmark parts named in $PARTS (default: all but HF).
# Usage (repo root, carry .device): PARTS=... bash benchmarks/device/engine_speed.sh
source benchmarks/device/setup.sh
timeout 150 python -m pytest -q -x -p no:cacheprovider tests/engine/kernels/test_paged_attention.py 2>&1 \
  | tee "$OUT/kernel_tests.log" | tail -n 5
timeout "${BENCH_TIMEOUT:-480}" python benchmarks/engine_throughput.py \
  --parts "${PARTS:-bandwidth,kernels,profile,engine,engine-1.7b,eager}" --total-budget "${TOTAL_BUDGET:-450}" \
  2>&1 | tee "$OUT/engine_bench.log" | grep -v '^  {' 

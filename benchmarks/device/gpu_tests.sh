#!/usr/bin/env bash
# The GPU tests (files with pytest's `gpu` marker), for the device tool, in groups that each run under a timeout, then
# the parts of benchmarks/device/rl_step_1gpu.sh named in RL_PARTS (default none). Logs under $OUT.
# Usage (repo root, carry .device with pack.tar.xz): TEST_GROUPS="moe train" bash benchmarks/device/gpu_tests.sh
source benchmarks/device/setup.sh
declare -A FILES=(
  [moe]="tests/engine/test_moe_gpu.py tests/engine/test_deepseek_v3_gpu.py tests/engine/test_cuda_graph.py"
  [engine]="tests/engine/test_gpu_parity.py tests/engine/kernels tests/engine/server/test_server_gpu.py"
  [sync]="tests/cluster/test_weight_sync_gpu.py"
  [train]="tests/train/test_gpu.py tests/train/test_optimizer_offload.py tests/train/test_varlen_attention.py"
)
for group in ${TEST_GROUPS:-moe engine train}; do
  echo "== tests $group"
  timeout "${TEST_TIMEOUT:-200}" python -m pytest -q -rfEs -p no:cacheprovider ${FILES[$group]} \
    > "$OUT/tests_$group.log" 2>&1
  echo "exit $?"; tail -n "${TAIL:-25}" "$OUT/tests_$group.log"
done
[ -n "${RL_PARTS:-}" ] && PARTS=$RL_PARTS BUDGET=$((${BUDGET:-580} - SECONDS)) bash benchmarks/device/rl_step_1gpu.sh
exit 0

#!/usr/bin/env bash
# Issue 16's GPU acceptance on one GPU, for the device tool (benchmarks/engine_moe.py, random bf16 weights, no
# checkpoint on disk): engine log-probs vs an HF forward on Qwen3-MoE, GLM4 and DeepSeek-V3 at their real widths
# (4 layers), then nano-vllm's workload on Moonlight-16B-A3B and Qwen3-30B-A3B against the roofline and HF
# generate. Each part runs in its own process under a timeout; the whole call stays under 540 s.
# Usage (repo root, carry .device with pack.tar.xz): bash benchmarks/device/moe_speed.sh
#   PARTS=parity-glm4,moonlight,moonlight-hf  NUM_REQUESTS=256  TOTAL_BUDGET=480  (the defaults: every part, 128, 480)
# If one call runs out of time (later parts get less, then are skipped), run the parts in two calls:
#   PARTS=bandwidth,parity-qwen3-moe,parity-glm4,parity-deepseek-v3 bash benchmarks/device/moe_speed.sh
#   PARTS=bandwidth,moonlight,moonlight-hf,qwen3-30b,qwen3-30b-hf bash benchmarks/device/moe_speed.sh
source benchmarks/device/setup.sh
timeout "${BENCH_TIMEOUT:-520}" python benchmarks/engine_moe.py \
  --parts "${PARTS:-bandwidth,parity-qwen3-moe,parity-glm4,parity-deepseek-v3,moonlight,moonlight-hf,qwen3-30b,qwen3-30b-hf}" \
  --num-requests "${NUM_REQUESTS:-128}" --total-budget "${TOTAL_BUDGET:-480}" 2>&1 \
  | tee "$OUT/moe_bench.log" | grep -v '^  {'
echo "exit ${PIPESTATUS[0]}"

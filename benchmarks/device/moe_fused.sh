#!/usr/bin/env bash
# The fused Triton MoE experts (kernels/fused_moe.py), routers (kernels/routing.py) and MLA glue
# (kernels/latent_prep.py) on their first GPU, in one device call (~9 minutes): their GPU tests, the experts
# of one layer fused vs grouped GEMMs (benchmarks/moe_kernel.py), then the engine on Moonlight-16B-A3B and
# Qwen3-30B-A3B against the roofline (benchmarks/engine_moe.py, whose engines take the fused kernels where they
# pass their self-checks; HF generate is left out for time: add moonlight-hf,qwen3-30b-hf to PARTS in a call of
# its own).
# The A/B against the grouped GEMMs end to end is a second call:
#   PARTS=moonlight,qwen3-30b ARGS="--moe-kernel grouped_mm" SKIP_KERNELS=1 bash benchmarks/device/moe_fused.sh
# Usage (repo root, carry .device with pack.tar.xz): bash benchmarks/device/moe_fused.sh
source benchmarks/device/setup.sh
if [[ -z "${SKIP_KERNELS:-}" ]]; then
  tests=(tests/engine/kernels/test_fused_moe.py tests/engine/kernels/test_routing.py tests/engine/kernels/test_latent_prep.py
         tests/engine/test_deepseek_v3_gpu.py)  # of the last, the latent kernels against float64 and their self-check
  timeout 120 python -m pytest -q -rfE -p no:cacheprovider -m gpu "${tests[@]}" \
    -k "not deepseek_v3_gpu or matches_float64 or self_check_keeps" > "$OUT/kernel_tests.log" 2>&1
  echo "kernel tests exit $?"; grep -E "passed|failed|Error" "$OUT/kernel_tests.log" | tail -12
  timeout 75 python benchmarks/moe_kernel.py --tokens "${TOKENS:-1,64,2048}" --out "$OUT/moe_kernel.json" \
    > "$OUT/moe_kernel.log" 2>&1
  echo "moe_kernel exit $?"; tail -45 "$OUT/moe_kernel.log"
fi
timeout "${BENCH_TIMEOUT:-370}" python benchmarks/engine_moe.py --parts "${PARTS:-moonlight,qwen3-30b}" \
  --total-budget "${TOTAL_BUDGET:-360}" ${ARGS:-} 2>&1 | tee "$OUT/moe_bench.log" | grep -v '^  {'
echo "exit ${PIPESTATUS[0]}"

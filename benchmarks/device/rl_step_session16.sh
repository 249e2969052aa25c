#!/usr/bin/env bash
# Issue 13's end-to-end call (one GPU): rl_step_1gpu.sh's temper and TRL parts (every sync checked) in BUDGET
# seconds, then the Qwen3-4B trainer (train_speed.sh's 4b part) in what is left of the call. Logs under $OUT.
# Usage (repo root, carry .device with pack.tar.xz and trl.tar.xz): bash benchmarks/device/rl_step_session16.sh
set -uo pipefail
PARTS=temper,trl BUDGET=${BUDGET:-430} bash benchmarks/device/rl_step_1gpu.sh
LEFT=$((${CALL:-570} - SECONDS))
echo "== 4B trainer with ${LEFT}s left"
((LEFT > 90)) && PARTS=4b timeout "$LEFT" bash benchmarks/device/train_speed.sh
exit 0

#!/usr/bin/env bash
# GPU acceptance runs of the engine (issue 3) and the train worker (issue 4), for the device tool.
#   part 1 (1 GPU): GPU tests, engine throughput with the HF baseline.
#   part 2 (2 GPUs): train throughput on one GPU with the naive HF loop, then FSDP on two GPUs vs one.
# Usage (repo root, carry .device): bash benchmarks/device/engine_train.sh 1|2
TAIL=${TAIL:-25}
source benchmarks/device/setup.sh
if [ "$1" = 1 ]; then
  run gpu_tests 200 python -m pytest -m gpu -q -rA -p no:cacheprovider tests/engine/test_gpu_parity.py \
      tests/engine/server/test_server_gpu.py tests/train/test_gpu.py
  run engine_bench 360 python benchmarks/engine_throughput.py
else
  run train_1gpu 240 python benchmarks/train_throughput.py --out "$OUT/train_1gpu.json"
  run train_2gpu 240 torchrun --nproc-per-node 2 benchmarks/train_throughput.py --skip-hf \
      --compare-to "$OUT/train_1gpu.json"
fi

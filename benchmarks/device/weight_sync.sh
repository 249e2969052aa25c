#!/usr/bin/env bash
# Colocated weight sync on one GPU (the ipc transport): its GPU tests (an engine server process on cuda:0
# fed by a sender in the test process), then benchmarks/weight_sync.py: ipc vs the tensor handoff on the
# Qwen3-0.6B and Qwen3-4B shapes (bytes, ms, GB/s; --check compares the engine's tensors with the sent ones).
# Usage (repo root, one GPU, carry .device): bash benchmarks/device/weight_sync.sh
#   SHAPES=qwen3-0.6b (one shape), CHECK=ipc,tensor (also check the baseline), BENCH_TIMEOUT=seconds,
#   EXTRA="--repeats 10" (more benchmark flags)
source benchmarks/device/setup.sh
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
df -h /dev/shm | tail -n 1  # the tensor handoff writes its buckets there when it has room
timeout 180 python -m pytest -q -x -p no:cacheprovider tests/cluster/test_weight_sync_gpu.py \
  tests/engine/server/test_cuda_ipc.py 2>&1 | tee "$OUT/weight_sync_tests.log" | tail -n 25
timeout "${BENCH_TIMEOUT:-360}" python benchmarks/weight_sync.py --shapes "${SHAPES:-qwen3-0.6b,qwen3-4b}" \
  --tensor-repeats 2 --check "${CHECK:-ipc}" --out "$OUT/weight_sync.json" ${EXTRA:-} 2>&1 | tee "$OUT/weight_sync.log"
echo "exit ${PIPESTATUS[0]}"

#!/usr/bin/env bash
# GPU run of the RL loop (issue 5): a disaggregated run (trainer GPU 0, engine GPU 1, NCCL weight sync)
# and a colocated run (2 train ranks + 2 engines sharing both GPUs, tensor handoff) on a Qwen3-0.6B-shaped
# random model; prints and writes the rollout / train / sync split (benchmarks/rl_step.py).
# Usage (repo root, kind nvidia-h100-x2, carry .device): bash benchmarks/device/rl_step.sh
source benchmarks/device/setup.sh
python -c "import torch, transformers, ray; print('torch', torch.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__)"
timeout 540 python benchmarks/rl_step.py --out "$OUT" 2>&1 | tee "$OUT/rl_step.log"
echo "exit ${PIPESTATUS[0]}"

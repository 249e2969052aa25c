#!/usr/bin/env bash
# Issue 18's runs, one device call per machine kind (GPUS, default: the GPUs the machine has).
#   2 GPUs (nvidia-h200-x2): the one-GPU issue's GRPO workload (Qwen3-0.6B, 512-token prompts and responses)
#          disaggregated vs colocated, each with train.py and train_async.py; then a Qwen3-1.7B disaggregated run
#          for the NCCL weight sync (sync s, GB/s). The tensor-parallel engine: bash benchmarks/device/engine_tp.sh.
#   4 GPUs (nvidia-h200-x4): 2 train + 2 engines disaggregated vs 4 colocated on the same workload (generation
#          tok/s of 2 engines against the 2-GPU call's one); FSDP over 2 and over 4 GPUs against one GPU's
#          losses (train_throughput.py --compare-to, bf16 tolerance).
#   8 GPUs (nvidia-h200-x8): Qwen3-8B shape, FSDP over 4 GPUs + 4 engines, NCCL sync, train.py and
#          train_async.py, 5 steps of 64 prompts x 8 samples, 512-token prompts, responses up to 2,048 tokens.
# Usage (repo root, carry .device): bash benchmarks/device/multi_gpu.sh
source benchmarks/device/setup.sh
GPUS=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
RL="python benchmarks/rl_step.py --workdir /tmp/rl_work"
WORKLOAD="--model qwen3-0.6b --prompt-len 512 --response-len 512 --steps 5"
TAIL=${TAIL:-20}
case "$GPUS" in
  2)
    run rl_2gpu 420 $RL --out "$OUT/rl_2gpu" $WORKLOAD --runs disaggregated colocated --drivers train train_async
    run sync_1.7b 150 $RL --out "$OUT/sync_1.7b" --model qwen3-1.7b --runs disaggregated --steps 3 --response-len 64
    ;;
  4)
    run rl_4gpu 330 $RL --out "$OUT/rl_4gpu" $WORKLOAD --runs disaggregated-2x2 colocated-4
    B=benchmarks/train_throughput.py
    run train_1gpu 90 python $B --skip-hf --rollouts 2 --out "$OUT/train_1gpu.json"
    run train_2gpu 80 torchrun --nproc-per-node 2 $B --skip-hf --rollouts 2 --compare-to "$OUT/train_1gpu.json"
    run train_4gpu 80 torchrun --nproc-per-node 4 $B --skip-hf --rollouts 2 --compare-to "$OUT/train_1gpu.json"
    ;;
  8)
    run rl_8gpu 560 $RL --out "$OUT/rl_8gpu" --model qwen3-8b --prompt-len 512 --response-len 2048 --steps 5 \
      --rollout-batch-size 64 --n-samples 8 --runs disaggregated-4x4 --drivers train train_async
    ;;
  *) echo "multi_gpu.sh: for 2, 4 or 8 GPUs; this machine has $GPUS" ;;
esac
exit 0

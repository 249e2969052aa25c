#!/bin/bash
# GRPO on GSM8K-format math with --rm-type math (see README.md). MODEL: a Hugging Face folder.
set -euo pipefail
MODEL=${MODEL:-/root/Qwen3-0.6B}
DATA=${DATA:-data/gsm8k}
cd "$(dirname "$0")/../.."
[ -f "$DATA/train.jsonl" ] || python examples/math/make_gsm8k_data.py --out-dir "$DATA"

python train.py --hf-checkpoint "$MODEL" \
  --prompt-data "$DATA/train.jsonl" --input-key messages --label-key label --apply-chat-template \
  --rollout-shuffle --rm-type math --eval-prompt-data gsm8k "$DATA/test.jsonl" --eval-interval 5 \
  --n-samples-per-eval-prompt 4 --advantage-estimator grpo --use-kl-loss --kl-loss-coef 0.0 \
  --rollout-batch-size 32 --n-samples-per-prompt 8 --rollout-max-response-len 1024 --rollout-temperature 1.0 \
  --num-rollout 100 --lr 1e-6 --use-dynamic-batch-size --max-tokens-per-gpu 8192 \
  --actor-num-nodes 1 --actor-num-gpus-per-node 1 --colocate --save ckpt/math --save-interval 20 "$@"

#!/usr/bin/env bash
# MoE under train.py and the MoE trainer on one GPU (issue 16), in one device call (~9 minutes with the default
# PARTS=tests,trainer; gap in a call of its own): PARTS picks
#   tests    the 2-rollout GRPO runs of tiny Qwen3-MoE, DeepSeek-V3 and GLM-4.5 colocated in bf16 with R3 and every
#            sync checked (tests/test_train_driver_moe.py, gpu marker), uncompiled unless TEMPER_COMPILE=1: on an
#            H100 the three took 178 s uncompiled, while compiled only one finished in 280 s (session 19)
#   trainer  the MoE trainer A/B (train_throughput.py on Qwen3-30B-A3B's widths cut to 4 layers: HF's grouped-GEMM
#            experts, then HF's loop over the experts, same process, same batches), uncompiled (TEMPER_COMPILE=0:
#            the compile warm-ups took 81 + 84 s on an H100, more than the A/B itself)
#   gap      benchmarks/routing_gap.py: the train/rollout log-prob gap free vs R3, Moonlight's widths cut to 3 layers (1.9B parameters: fp32 weights and AdamW beside the engine fit 80 GB)
# Usage (repo root, carry .device with pack.tar.xz): bash benchmarks/device/moe_e2e.sh; PARTS=gap bash ...
TAIL=${TAIL:-15}
source benchmarks/device/setup.sh
PARTS=${PARTS:-tests,trainer}
has tests && TEMPER_COMPILE=${TEMPER_COMPILE:-0} run moe_e2e_tests 280 python -m pytest -q -rfE -p no:cacheprovider -m gpu tests/test_train_driver_moe.py
MOE="--model-shape qwen3-30b-a3b --num-layers 4 --skip-hf --samples 32 --response-len 256 1024 --rollouts 2 ${ARGS_MOE:-}"
has trainer && TAIL=20 TEMPER_COMPILE=0 run train_moe_nocompile 240 python benchmarks/train_throughput.py $MOE \
  --out "$OUT/train_moe_nocompile.json"
has gap && TAIL=12 run routing_gap 200 python benchmarks/routing_gap.py --arch deepseek_v3 --settings free r3 \
  --preset moonlight-16b-a3b --num-layers 3 --response-len 256 --rollouts 2 --out "$OUT/gap"
exit 0

#!/usr/bin/env bash
# Build .device/trl.tar.xz: the TRL baseline's packages that the GPU image lacks (trl, datasets, dill,
# multiprocess, xxhash), for CPython 3.12 / manylinux x86_64, without their dependencies: the image has
# the rest (torch, transformers, accelerate, huggingface-hub, pyarrow, pandas, ...). Passing them to
# ../shared/tools/device-pack instead would resolve accelerate's torch and carry CUDA wheels.
# rl_step_1gpu.sh unpacks this next to .device/pack.tar.xz (both travel with carry [".device"]).
# Usage (repo root): bash benchmarks/device/trl_pack.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$work/wheels" trl==1.16.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
mkdir -p "$work/site" .device
for w in "$work"/wheels/*.whl; do (cd "$work/site" && python3 -m zipfile -e "$w" .); done
tar -C "$work/site" -cf - . | xz -T0 -6 > .device/trl.tar.xz
ls -la .device/trl.tar.xz

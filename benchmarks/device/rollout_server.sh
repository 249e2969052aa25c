#!/usr/bin/env bash
# The rollout's engine-vs-server split on one GPU (benchmarks/rollout_server.py: offline generate, the
# server's streaming steps, and 64 concurrent HTTP /generate requests), on this tree and, when
# .device/old.tar.gz exists (`git archive HEAD temper | gzip > .device/old.tar.gz` before a change), on
# that older tree in the same call. Usage (repo root, carry .device): bash benchmarks/device/rollout_server.sh
set -uo pipefail
mkdir -p /tmp/site && tar xJf .device/pack.tar.xz -C /tmp/site
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/rollout_work
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
probe() { local name=$1 path=$2; echo "== $name"; PYTHONPATH=/tmp/site:$path timeout "${PROBE_TIMEOUT:-200}" \
  python benchmarks/rollout_server.py --workdir /tmp/rollout_work --out "$OUT/rollout_$name.json" ${ARGS:-} \
  > "$OUT/rollout_$name.log" 2>&1; echo "exit $?"; grep -v -e "Loading weights" -e "Writing model" "$OUT/rollout_$name.log" | tail -n 6; }
probe new "$PWD"
if [ -f .device/old.tar.gz ]; then
  mkdir -p /tmp/old && tar xzf .device/old.tar.gz -C /tmp/old && probe old /tmp/old
fi
exit 0

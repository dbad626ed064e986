#!/usr/bin/env bash
# The batching engine on a real GPU (issue: continuous batching): bench/concurrency.py with every layer on the GPU,
# mkmodel's llama-1B shape at Q4_K_M, 1/4/16/64 clients, offload vs llama-server vs llama-batched-bench, and py-spy
# on offload's server and runner during the 64-client level.
# On the GPU machine:  source .gpu/env.sh && bash scripts/gpu_concurrency.sh "$OUT" [EXTRA bench/concurrency.py ARGS]
set -uo pipefail
OUT=${1:-/tmp/gpu-concurrency}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_concurrency.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "commit ${OFFLOAD_COMMIT:-unknown (pass OFFLOAD_COMMIT: the copy on the device has no current git metadata)}"
M=/root/1b-q4.gguf
if [ ! -f $M ]; then
  t0=$(date +%s)
  python3 .gpu/mkmodel.py /root/1b.gguf 1b > /dev/null && llama-quantize /root/1b.gguf $M Q4_K_M 16 > /dev/null 2>&1
  rm -f /root/1b.gguf; echo "model made in $(( $(date +%s) - t0 )) s"
fi
python3 bench/concurrency.py --gpu --model $M --ref-bin /nonexistent --json "$OUT/concurrency.json" \
  --py-spy /root/pydeps/bin/py-spy --profile-dir "$OUT/profile" "${@:2}"

#!/usr/bin/env bash
# Predicted (offload plan) vs measured (llama.cpp buffers, NVML) GPU memory for the 1b and 8b shapes of mkmodel.py
# at several contexts. On the GPU machine:  source .gpu/env.sh && bash scripts/gpu_plan.sh "$OUT"
set -uo pipefail
OUT=${1:-/tmp/gpu-plan}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_plan.log") 2>&1
export OFFLOAD_HOME=/root/oh-plan OFFLOAD_HOST=127.0.0.1:11501 PYTHONUNBUFFERED=1
rm -rf "$OFFLOAD_HOME"
model() {  # preset -> /root/<preset>-q4.gguf, imported as llama<preset>:q4
  [ -f /root/$1-q4.gguf ] || { python3 .gpu/mkmodel.py /root/$1.gguf $1 > /dev/null \
    && llama-quantize /root/$1.gguf /root/$1-q4.gguf Q4_K_M 16 > /dev/null 2>&1; rm -f /root/$1.gguf; }
  python3 -c "
from pathlib import Path
from offload.config import load_settings
from offload.models.store import Store
print(Store(load_settings().models_dir).import_gguf('llama$1:q4', Path('/root/$1-q4.gguf')).name)"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='commit %h' 2>/dev/null || true
model 1b
python3 -m offload serve > "$OUT/serve.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf http://$OFFLOAD_HOST/ > /dev/null && break; sleep 0.2; done
python3 scripts/gpu_plan_vs_measured.py llama1b:q4 2048,4096,8192
t0=$(date +%s); model 8b; echo "8b model made in $(( $(date +%s) - t0 )) s"
python3 scripts/gpu_plan_vs_measured.py llama8b:q4 2048,4096,8192 | tail -n +3
grep -E "inference compute" "$OUT/serve.log" | tail -8

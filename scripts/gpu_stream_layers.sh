#!/usr/bin/env bash
# One stream on a real GPU (issue 5's single-client target, >= 0.95 of llama-bench tg): llama-bench tg128 with
# flash attention off and on and at depth 128, llama-batched-bench's one-sequence S_TG, and bench/stream_layers.py,
# which adds the runner's work layer by layer (decode, logits, greedy, sampled, engine) in contexts of 1, 32, 64.
# On the GPU machine:  source .gpu/env.sh && bash scripts/gpu_stream_layers.sh "$OUT" [MODEL_SHAPE]
set -uo pipefail
OUT=${1:-/tmp/gpu-single}
SHAPE=${2:-1b}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_stream_layers.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "commit ${OFFLOAD_COMMIT:-unknown (pass OFFLOAD_COMMIT)}"
M=/root/$SHAPE-q4.gguf
if [ ! -f $M ]; then
  t0=$(date +%s)
  python3 .gpu/mkmodel.py /root/$SHAPE.gguf $SHAPE > /dev/null && llama-quantize /root/$SHAPE.gguf $M Q4_K_M 16 > /dev/null 2>&1
  rm -f /root/$SHAPE.gguf; echo "model made in $(( $(date +%s) - t0 )) s"
fi
for args in "-fa 0" "-fa 1" "-fa 1 -d 128"; do
  echo "llama-bench -p 0 -n 128 -r 5 -ngl 99 $args"
  llama-bench -m $M -p 0 -n 128 -r 5 -ngl 99 $args -o md 2>/dev/null | grep -E "tg128"
done
echo "llama-batched-bench one sequence"
llama-batched-bench -m $M -c 16640 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 1,1 -ngl 99 -fa on 2>/dev/null | grep -E "^\|"
python3 bench/stream_layers.py $M --slots 1,32,64 --runs 5 2>&1 | grep -E "^slots|: vocab [0-9]"

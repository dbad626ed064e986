#!/usr/bin/env bash
# The memory planner and scheduler on a real GPU (issue: memory planner and multi-model scheduler).
# On the GPU machine:  source .gpu/env.sh && bash scripts/gpu_memory.sh "$OUT" [PARTS]   (PARTS: default "A B C D")
#  A. predicted vs measured (NVML per process) GPU memory, mkmodel 1b and 8b (Q4_K_M), contexts x parallel slots
#  B. OFFLOAD_GPU_MEMORY_LIMIT imposed: how full the plan fills it, and that no load fails
#  C. two models under a limit: the idle one is unloaded to make room
#  D. out of memory: another process takes the GPU after the server planned; the load is retried smaller
#  P. pipelined loads (two contexts): predicted vs measured at 8 and 64 slots, the pipeline setting on and off
set -uo pipefail
OUT=${1:-/tmp/gpu-memory}
PARTS=${2:-A B C D}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_memory.log") 2>&1
export OFFLOAD_HOME=/root/oh-mem OFFLOAD_HOST=127.0.0.1:11502 PYTHONUNBUFFERED=1
BASE=http://$OFFLOAD_HOST
rm -rf "$OFFLOAD_HOME"
GIB=$((1 << 30))

model() {  # preset -> /root/<preset>-q4.gguf, imported as llama<preset>:q4
  [ -f /root/$1-q4.gguf ] || { python3 .gpu/mkmodel.py /root/$1.gguf $1 > /dev/null \
    && llama-quantize /root/$1.gguf /root/$1-q4.gguf Q4_K_M 16 > /dev/null 2>&1; rm -f /root/$1.gguf; }
  python3 -c "
from pathlib import Path
from offload.config import load_settings
from offload.models.store import Store
print(Store(load_settings().models_dir).import_gguf('llama$1:q4', Path('/root/$1-q4.gguf')).name)"
}
serve() {  # serve LOGNAME [ENV=VALUE...]: a fresh server with these settings
  stop
  env "${@:2}" python3 -m offload serve > "$OUT/$1.log" 2>&1 &
  echo $! > "$OUT/server.pid"
  for _ in $(seq 1 150); do curl -sf $BASE/ > /dev/null && return 0; sleep 0.2; done
  echo "server did not start"; tail -20 "$OUT/$1.log"; return 1
}
stop() {
  [ -f "$OUT/server.pid" ] || return 0
  kill "$(cat "$OUT/server.pid")" 2> /dev/null; sleep 1; rm -f "$OUT/server.pid"
}
gen() {  # gen MODEL NUM_CTX|"" -> the HTTP status, body kept in $OUT/last.json
  local options='{"num_predict": 1}'
  [ -n "$2" ] && options="{\"num_predict\": 1, \"num_ctx\": $2}"
  curl -s -o "$OUT/last.json" -w '%{http_code}' $BASE/api/generate \
    -d "{\"model\": \"$1\", \"prompt\": \"hi\", \"raw\": true, \"stream\": false, \"keep_alive\": \"10m\", \"options\": $options}"
}
ps_rows() {  # one line per loaded model: name, layers, context, NVML MiB, fraction of a limit (bytes, optional)
  curl -s $BASE/api/ps | python3 -c "
import json, sys
limit = int(sys.argv[1]) if len(sys.argv) > 1 else 0
for m in json.load(sys.stdin)['models']:
    o = m['offload']; nvml = o.get('gpu_memory') or 0
    fill = f', {nvml / limit:.1%} of the limit' if limit else ''
    print(f\"  {m['name']}: {o['layers_on_gpu']}/{o['layers_total']} layers on GPU, context {m['context_length']}, \"
          f\"NVML {nvml / 2**20:.0f} MiB{fill}\")" "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "commit ${OFFLOAD_COMMIT:-unknown (pass OFFLOAD_COMMIT: the copy on the device has no current git metadata)}"
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

model 1b
if part A || part B || part C || part D; then
  t0=$(date +%s); model 8b; echo "8b model made in $(( $(date +%s) - t0 )) s"
fi

if part P; then
echo "## P. pipelined loads: predicted vs measured"
header=--header
for pipeline in true false; do
  for parallel in 8 64; do
    serve "serve-pipe-$pipeline-p$parallel" OFFLOAD_NUM_PARALLEL=$parallel OFFLOAD_PIPELINE=$pipeline || exit 1
    echo "pipeline $pipeline:"
    OFFLOAD_NUM_PARALLEL=$parallel OFFLOAD_PIPELINE=$pipeline python3 scripts/gpu_plan_vs_measured.py llama1b:q4 \
      1024,4096 $parallel $header
    header=
  done
done
grep -hE "pipelined contexts" "$OUT"/serve-pipe-*.log | sort | uniq -c
fi

if part A; then
echo "## A. predicted vs measured"
header=--header
for parallel in 1 4; do
  serve "serve-p$parallel" OFFLOAD_NUM_PARALLEL=$parallel || exit 1
  OFFLOAD_NUM_PARALLEL=$parallel python3 scripts/gpu_plan_vs_measured.py llama1b:q4,llama8b:q4 2048,4096,8192 \
    $parallel $header
  header=
done
grep -hE "memory measured/predicted|per-process overhead" "$OUT"/serve-p*.log | head -14
fi

if part B; then
echo "## B. OFFLOAD_GPU_MEMORY_LIMIT"
for case in "5 llama8b:q4 -" "4 llama8b:q4 -" "6 llama8b:q4 8192" "3 llama1b:q4 8192"; do
  set -- $case
  limit=$(( $1 * GIB )); ctx=${3#-}
  serve "serve-limit$1" OFFLOAD_GPU_MEMORY_LIMIT=${1}GiB OFFLOAD_MAX_LOADED_MODELS=1 || exit 1
  status=$(gen "$2" "$ctx")
  echo "limit ${1} GiB, $2, num_ctx ${ctx:-default}: HTTP $status"
  ps_rows $limit
  grep -hE "memory plan for|memory measured/predicted|OUT OF MEMORY" "$OUT/serve-limit$1.log" | sed 's/^/    /'
done
fi

if part C; then
echo "## C. two models under a 6 GiB limit"
serve serve-evict OFFLOAD_GPU_MEMORY_LIMIT=6GiB || exit 1
echo "1b: HTTP $(gen llama1b:q4 '')"; ps_rows
echo "8b: HTTP $(gen llama8b:q4 '')"; ps_rows
echo "1b again: HTTP $(gen llama1b:q4 '')"; ps_rows
grep -hE "placing|unloaded|waits for memory" "$OUT/serve-evict.log" | sed 's/^/    /'
fi

if part D; then
echo "## D. out of memory after the plan was made"
serve serve-oom || exit 1
python3 - > "$OUT/hog.txt" 2>&1 <<'EOF' &
import time, torch
free, total = torch.cuda.mem_get_info()
hog = torch.empty(free - 3 * 2**30, dtype=torch.uint8, device="cuda")  # leave 3 GiB
print(f"hog holds {hog.numel() / 2**30:.1f} GiB of {total / 2**30:.1f}; free now {torch.cuda.mem_get_info()[0] / 2**30:.2f} GiB", flush=True)
time.sleep(120)
EOF
hog=$!
for _ in $(seq 1 120); do grep -q "hog holds" "$OUT/hog.txt" 2> /dev/null && break; sleep 0.5; done
cat "$OUT/hog.txt"
t0=$(date +%s.%N); status=$(gen llama8b:q4 '')
elapsed=$(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }')
echo "8b with 3 GiB free: HTTP $status in $elapsed s"
[ "$status" = 200 ] || cat "$OUT/last.json"
ps_rows
grep -hE "OUT OF MEMORY|retry plan|memory plan for|FALLBACK|inference compute" "$OUT/serve-oom.log" | sed 's/^/    /'
kill $hog 2> /dev/null
fi
stop
echo done

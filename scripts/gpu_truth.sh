#!/usr/bin/env bash
# GPU truth, end to end, on the GPU machine (device tool; ../shared/gpu/README.md):
#   source .gpu/env.sh && bash scripts/gpu_truth.sh "$OUT"
# What it shows, with real numbers:
#   1. `offload doctor --json` and `offload backends list` on a machine whose own llama_cpp is a CPU-only build and
#      whose $OFFLOAD_HOME has an installed CUDA variant (the way `offload backends install cuda` leaves it);
#   2. auto selection loads a 1B-shaped Q4_K_M model with every layer on the GPU, verified from llama.cpp's own
#      load report; `offload ps` shows it; decode speed vs the same model on the cpu variant;
#   3. a CUDA variant that breaks after start (its libggml-cuda.so truncated): the next load falls back to cpu at
#      once, with the reason in the log and in /api/ps; a forced cuda backend gets an error instead.
set -uo pipefail
OUT=${1:-/tmp/gpu-truth}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_truth.log") 2>&1
say() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
ROOT=$(pwd)
export OFFLOAD_HOME=/root/oh PYTHONUNBUFFERED=1 OFFLOAD_HOST=127.0.0.1:11500
PLATFORM=$(python3 -c 'from offload.backends.variants import platform_tag; print(platform_tag())')
VARIANT_DIR=$OFFLOAD_HOME/backends/$PLATFORM/cuda
PORT=11500
BASE=http://127.0.0.1:$PORT

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null || true

say "model: 1B-shaped llama, Q4_K_M"
[ -f /root/m-q4.gguf ] || { python3 .gpu/mkmodel.py /root/m.gguf 1b && llama-quantize /root/m.gguf /root/m-q4.gguf Q4_K_M 16 > /dev/null; }
# From here on no library path from env.sh: each llama_cpp package must load its own libraries (RUNPATH), or a
# CPU build could pick up the CUDA build's libggml.
unset LD_LIBRARY_PATH

say "cpu-only llama-cpp-python: the build in the server's own environment for this experiment"
if [ ! -f /root/lcp-cpu/.done ]; then
  t0=$(date +%s)
  CMAKE_ARGS="-DGGML_CUDA=off -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install -q --no-deps --no-build-isolation --target /root/lcp-cpu \
    --config-settings=build-dir=/root/lcp-cpu-build .gpu/lcp > /root/lcp-cpu.log 2>&1 || { tail -30 /root/lcp-cpu.log; exit 1; }
  touch /root/lcp-cpu/.done
  echo "built in $(( $(date +%s) - t0 )) s"
fi
# The server's llama_cpp is the CPU build (what `pip install llama-cpp-python` gives); the CUDA build env.sh made
# becomes an installed variant under $OFFLOAD_HOME, as `offload backends install cuda` leaves it.
export PYTHONPATH=/root/lcp-cpu:/root/pydeps:$ROOT
rm -rf "$OFFLOAD_HOME" && mkdir -p "$(dirname "$VARIANT_DIR")"
cp -a /root/lcp-cuda "$VARIANT_DIR"
python3 - "$VARIANT_DIR" <<'EOF'
import sys
from pathlib import Path
from offload.backends.manifest import Manifest, VariantEntry, hash_tree, read_manifest, write_manifest
directory = Path(sys.argv[1])
path = directory.parent / "manifest.json"
entry = VariantEntry(version="0.3.36", cmake_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90", files=hash_tree(directory))
old = read_manifest(path, directory.parent.name)
write_manifest(path, Manifest(platform=old.platform, default="cuda", variants={**old.variants, "cuda": entry}))
print("manifest:", path, len(entry.files), "files")
EOF

python3 - <<'EOF'
from pathlib import Path
from offload.models.store import Store  # imports the model into the store of $OFFLOAD_HOME
from offload.config import load_settings
s = load_settings()
print(Store(s.models_dir).import_gguf("llama1b:q4", Path("/root/m-q4.gguf")).name)
EOF

say "offload doctor --json"
python3 -m offload doctor --json > "$OUT/doctor.json"; python3 -m json.tool "$OUT/doctor.json" | head -80
say "offload backends list"
python3 -m offload backends list

serve() {  # serve LABEL BACKEND; waits until it answers
  LOG="$OUT/serve-$1.log"
  OFFLOAD_LOG_LEVEL=debug OFFLOAD_BACKEND=$2 python3 -m offload serve --host 127.0.0.1:$PORT > "$LOG" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do curl -sf $BASE/ > /dev/null && return 0; sleep 0.2; done
  echo "server did not start"; tail -20 "$LOG"; return 1
}
stop() { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; }
rate() { python3 scripts/gpu_rate.py $BASE "$1"; }

say "auto: expect cuda with every layer on the GPU"
serve auto auto
rate llama1b:q4; rate llama1b:q4
python3 -m offload ps
curl -s $BASE/api/ps | python3 -m json.tool | tee "$OUT/ps-auto.json" | head -60
grep -E "inference compute|backend plan|FALLBACK|GPU NOT USED" "$LOG"
stop

say "cpu variant, same model"
serve cpu cpu
rate llama1b:q4; rate llama1b:q4
python3 -m offload ps
stop

say "the cuda variant breaks after the server started (its libraries truncated): fallback to cpu at once"
serve broken auto
sleep 2  # let the plan be made with the healthy variant
# Wheels hold no symlinks: libggml-cuda.so, .so.0 and .so.0.x are three copies; the loader wants the soname one.
for f in "$VARIANT_DIR"/llama_cpp/lib/libggml-cuda.so*; do truncate -s 4096 "$f"; done
t0=$(date +%s.%N); curl -s $BASE/api/generate -d '{"model":"llama1b:q4"}'; echo; t1=$(date +%s.%N)
python3 -c "print(f'load (cuda runner dies, cpu runner loads) answered in {float($t1) - float($t0):.2f} s')"
rate llama1b:q4
curl -s $BASE/api/ps | python3 -m json.tool | grep -E '"(backend|layers_on_gpu|layers_total|warning)"|fallbacks' -A1 | head -20
grep -E "FALLBACK|backend unusable|inference compute" "$LOG" | tail -5
stop

say "forced cuda while the only cuda variant is broken: an error with the reason, never a silent cpu run"
serve forced cuda
t0=$(date +%s.%N); rate llama1b:q4; t1=$(date +%s.%N)
python3 -c "print(f'error after {float($t1) - float($t0):.2f} s')"
stop
say "done"

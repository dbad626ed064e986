#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-server, llama-batched-bench) from the SAME source as the pinned
# llama-cpp-python, so benchmarks compare offload with the reference on identical kernels.
# Output: bench/.ref/bin/ (git-ignored). About 8-10 minutes on 2 cores, once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
version=$("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')
ref="$here/.ref"
if [ -x "$ref/bin/llama-bench" ] && [ "$(cat "$ref/.version" 2>/dev/null)" = "$version" ]; then
  echo "reference tools for llama-cpp-python $version already built in $ref/bin"; exit 0
fi
rm -rf "$ref" && mkdir -p "$ref/src"
"$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$ref"
tar xzf "$ref"/llama_cpp_python-*.tar.gz -C "$ref/src" --strip-components=1
cmake -S "$ref/src/vendor/llama.cpp" -B "$ref/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON > "$ref/cmake.log"
cmake --build "$ref/build" -j "$(nproc)" --target llama-bench llama-server llama-batched-bench > "$ref/build.log"
mkdir -p "$ref/bin" && cp "$ref"/build/bin/llama-* "$ref/bin/"
echo "$version" > "$ref/.version"
echo "built: $(ls "$ref/bin")"

"""One non-streamed /api/generate of 256 tokens; prints the decode rate and any X-Offload-Warning header.
Used by scripts/gpu_truth.sh:  python3 scripts/gpu_rate.py BASE_URL MODEL"""

from __future__ import annotations

import sys

import httpx


def main(base: str, model: str) -> int:
    body = {
        "model": model, "prompt": "Once upon a time", "raw": True, "stream": False,
        "options": {"num_predict": 256, "temperature": 0.8, "seed": 1},
    }
    reply = httpx.post(base + "/api/generate", json=body, timeout=300)
    data = reply.json()
    if reply.status_code != 200:
        print(f"HTTP {reply.status_code}: {data.get('error')}")
        return 1
    rate = data["eval_count"] / (data["eval_duration"] / 1e9)
    print(f"eval {data['eval_count']} tokens at {rate:.1f} tok/s, load {data['load_duration'] / 1e9:.2f} s")
    if "x-offload-warning" in reply.headers:
        print("X-Offload-Warning:", reply.headers["x-offload-warning"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

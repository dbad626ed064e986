"""Install offload into the virtual environment, saying what is slow and how long it has been going.

pip prints nothing for minutes while it compiles llama.cpp; this runs pip and prints a progress line every
15 seconds so a first install does not look hung. Used by the Makefile; stdlib only (runs before anything else).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

TICK = 15.0


def main(argv: list[str]) -> int:
    python, *targets = argv
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", *targets]
    print("offload: installing", " ".join(targets))
    print("offload: the first install compiles llama.cpp from source (about 6 minutes on 2 cores); "
          "later installs reuse pip's cached wheel.", flush=True)
    started = time.monotonic()
    done = threading.Event()
    building = threading.Event()

    def tick() -> None:
        while not done.wait(TICK):
            if building.is_set():
                minutes, seconds = divmod(int(time.monotonic() - started), 60)
                print(f"offload: still building llama-cpp-python ... {minutes}:{seconds:02d} elapsed", flush=True)

    threading.Thread(target=tick, daemon=True).start()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Building wheel for llama-cpp-python" in line:
                building.set()
            if "still running" not in line:
                sys.stdout.write(line)
                sys.stdout.flush()
        code = proc.wait()
    done.set()
    print(f"offload: install {'finished' if code == 0 else 'FAILED'} in {int(time.monotonic() - started)} s",
          flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

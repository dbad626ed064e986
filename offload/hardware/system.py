"""The world a probe looks at, injected: files, `ldconfig -p`, the library loader, NVML, the environment.

`RealSystem` is this machine; tests/fakes/hardware.py has `FakeSystem`, built from a dict of files and a
dict of loadable fake libraries, so a unit test can describe any machine. Every method answers "nothing"
(None, [], False) rather than raising, except `load_library` and `nvml`, whose failures carry the reason a
probe records.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob as globmodule
import importlib
import os
import platform as platformmodule
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, Protocol

# The variables the probes read: device visibility and where the loader looks. Nothing else is copied.
ENVIRONMENT = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GGML_VK_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "CUDA_PATH",
)


class System(Protocol):
    environ: Mapping[str, str]
    platform: str  # sys.platform: "linux", "darwin", "win32"
    machine: str  # platform.machine(): "x86_64", "aarch64", "arm64"

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it cannot be read."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Sorted entry names, or [] when `path` is not a readable directory."""
        ...

    def exists(self, path: str) -> bool: ...

    def glob(self, pattern: str) -> list[str]:
        """Sorted matches of a glob pattern (no recursion)."""
        ...

    def ldconfig(self) -> str | None:
        """The output of `ldconfig -p`, or None when it cannot be run."""
        ...

    def load_library(self, path: str) -> Any:
        """A ctypes.CDLL-like object; raises OSError when the library cannot be loaded."""
        ...

    def nvml(self) -> Any:
        """The `pynvml` module (nvidia-ml-py) or an object with the same nvml* functions; raises ImportError."""
        ...

    def sysctl(self, name: str) -> str | None:
        """macOS sysctlbyname as text (integers in decimal), or None."""
        ...

    def usable_cpus(self) -> int:
        """Logical CPUs this process may run on."""
        ...


class RealSystem:
    """This machine. The environment is the process's unless one is given (only the ENVIRONMENT keys are kept)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        source = os.environ if environ is None else environ
        self.environ: Mapping[str, str] = {key: source[key] for key in ENVIRONMENT if key in source}
        self.platform = sys.platform
        self.machine = platformmodule.machine()

    def read_text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                return file.read()
        except (OSError, ValueError):
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def glob(self, pattern: str) -> list[str]:
        return sorted(globmodule.glob(pattern))

    def ldconfig(self) -> str | None:
        # Not on PATH for ordinary users on Debian; /sbin is where every distribution keeps it.
        program = shutil.which("ldconfig") or next(
            (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None
        )
        if program is None:
            return None
        try:
            done = subprocess.run([program, "-p"], capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    def load_library(self, path: str) -> Any:
        return ctypes.CDLL(path)

    def nvml(self) -> Any:
        # Imported here: only this probe needs it, and the server must start without it.
        return importlib.import_module("pynvml")

    def sysctl(self, name: str) -> str | None:
        if self.platform != "darwin":
            return None
        try:
            libc = ctypes.CDLL(None)
            size = ctypes.c_size_t(0)
            if libc.sysctlbyname(name.encode(), None, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
                return None
            buffer = ctypes.create_string_buffer(size.value)
            if libc.sysctlbyname(name.encode(), buffer, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
                return None
        except (OSError, AttributeError):
            return None
        return decode_sysctl(buffer.raw[: size.value])

    def usable_cpus(self) -> int:
        with contextlib.suppress(AttributeError, OSError):
            return max(1, len(os.sched_getaffinity(0)))
        return max(1, os.cpu_count() or 1)


def decode_sysctl(raw: bytes) -> str:
    """Strings come NUL-terminated; everything else sysctl answers here is a little-endian integer."""
    if raw.endswith(b"\0") and all(32 <= byte < 127 for byte in raw[:-1]):
        return raw[:-1].decode("ascii")
    return str(int.from_bytes(raw, "little"))

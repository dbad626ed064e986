"""Backend variants: the llama.cpp builds offload can load, and what each one really supports.

A variant is a directory holding a `llama_cpp` package (`$OFFLOAD_HOME/backends/<platform>/<backend>/`) or the
venv's own llama-cpp-python. Before anything of an installed variant runs, its files are checked against the
manifest's sha256s; then a short subprocess imports it and asks the library itself whether it can offload
(`llama_supports_gpu_offload`) and which ggml backends and devices it registers. The server process never imports
llama_cpp: a library that crashes or hangs on load costs one probe, bounded by a timeout, and is reported.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offload.backends.manifest import MANIFEST, ManifestError, read_manifest, verify

ORDER = ("cuda", "rocm", "vulkan", "metal", "cpu")
# ggml's registry names (GGML_CUDA_NAME is "ROCm" in a HIP build); devices are named after them ("CUDA0").
REGISTRY_LIBRARY = {"CUDA": "cuda", "ROCm": "rocm", "HIP": "rocm", "Vulkan": "vulkan", "Metal": "metal", "MTL": "metal"}
LIBRARY_REGISTRY = {"cuda": "CUDA", "rocm": "ROCm", "vulkan": "Vulkan", "metal": "Metal"}
PROBE_TIMEOUT = 30.0  # CUDA's first initialisation on a large machine takes seconds; a hang must not take minutes

_MARK = "OFFLOAD_PROBE "
# Runs in `python -P` (no cwd on the path) with the server's environment, as the runner does: the variant's
# directory goes first on the path, and PYTHONPATH stays, so the probe loads what the runner will load (a venv-less
# install that finds its packages through PYTHONPATH included; `-I` once made such a machine look empty).
_PROBE_SCRIPT = r"""
import ctypes, json, sys
from pathlib import Path
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
answer = {}
try:
    import llama_cpp
    answer["file"] = str(Path(llama_cpp.__file__).resolve())
    answer["version"] = getattr(llama_cpp, "__version__", None)
    answer["gpu"] = bool(llama_cpp.llama_supports_gpu_offload())
    lib = Path(llama_cpp.__file__).parent / "lib"
    suffix = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")
    prefix = "" if sys.platform == "win32" else "lib"
    ggml = ctypes.CDLL(str(lib / (prefix + "ggml" + suffix)))
    base = ctypes.CDLL(str(lib / (prefix + "ggml-base" + suffix)))
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    base.ggml_backend_dev_name.restype = ctypes.c_char_p
    base.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_name.restype = ctypes.c_char_p
    base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    answer["registries"] = [
        base.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(ggml.ggml_backend_reg_count())
    ]
    answer["devices"] = [
        base.ggml_backend_dev_name(ggml.ggml_backend_dev_get(i)).decode() for i in range(ggml.ggml_backend_dev_count())
    ]
except BaseException as exc:
    answer["error"] = (type(exc).__name__ + ": " + str(exc)).strip()
print("OFFLOAD_PROBE " + json.dumps(answer), flush=True)
"""


@dataclass(frozen=True, slots=True)
class Variant:
    name: str  # "cuda" | "rocm" | "vulkan" | "metal" | "cpu"; the venv's is named by what it registers
    path: Path | None  # directory to put first on PYTHONPATH for the runner (holds llama_cpp); None = the venv's
    source: str  # "venv" | "installed"
    supports_gpu: bool  # llama_supports_gpu_offload(), as the library itself answers
    devices: tuple[str, ...]  # ggml device names the library lists, e.g. ("CUDA0", "CPU")
    verified: bool  # every file the manifest lists matched its sha256 (False for the venv's: pip installed it)
    problem: str | None  # why it cannot be used; None = usable
    version: str | None = None  # llama-cpp-python's version

    @property
    def usable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class Probe:
    """What a library said about itself in the probe subprocess; `problem` set when it could not say."""

    supports_gpu: bool = False
    devices: tuple[str, ...] = ()
    registries: tuple[str, ...] = ()
    file: str | None = None
    version: str | None = None
    problem: str | None = None


ProbeFn = Callable[[Path | None, float], Probe]


def platform_tag(system: str | None = None, machine: str | None = None) -> str:
    """"linux-x86_64", "darwin-arm64", "linux-aarch64", "windows-x86_64": the manifest's directory name."""
    system = system if system is not None else sys.platform
    machine = (machine if machine is not None else platform.machine()).lower()
    system = {"win32": "windows", "cygwin": "windows"}.get(system, system)
    if system.startswith("linux"):
        system = "linux"
    machine = {"amd64": "x86_64", "x64": "x86_64"}.get(machine, machine)
    return f"{system}-{machine}"


def device_library(device: str) -> str | None:
    """The library a ggml device name belongs to ("CUDA0" -> "cuda", "CPU" -> None)."""
    for registry, library in REGISTRY_LIBRARY.items():
        if device.startswith(registry):
            return library
    return None


def library_from_registries(registries: tuple[str, ...]) -> str:
    """Name a build by the best GPU backend it registers, in ORDER; "cpu" when it registers none."""
    found = {REGISTRY_LIBRARY[name] for name in registries if name in REGISTRY_LIBRARY}
    return next((library for library in ORDER if library in found), "cpu")


def probe(path: Path | None, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Import llama_cpp from `path` (None: the venv's) in a subprocess and ask it what it supports. Never raises."""
    argv = [sys.executable, "-P", "-c", _PROBE_SCRIPT, *([str(path)] if path is not None else [])]
    where = str(path) if path is not None else "the venv"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Probe(problem=f"probing {where} did not finish within {timeout:g} s (the library hangs on load)")
    except OSError as exc:
        return Probe(problem=f"cannot start the probe: {exc}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        return Probe(problem=f"probing {where} crashed ({how}): {last[:300]}")
    try:
        answer = json.loads(lines[-1][len(_MARK) :])
    except ValueError:
        return Probe(problem=f"probing {where}: unreadable answer")
    if "error" in answer:
        return Probe(file=answer.get("file"), problem=f"loading llama_cpp from {where} failed: {answer['error']}")
    return Probe(
        supports_gpu=bool(answer.get("gpu")),
        devices=tuple(str(name) for name in answer.get("devices", [])),
        registries=tuple(str(name) for name in answer.get("registries", [])),
        file=answer.get("file"),
        version=answer.get("version"),
    )


def probe_library(path: Path | None, timeout: float) -> tuple[bool, tuple[str, ...], str | None]:
    """(supports_gpu, ggml device names, problem) of the llama_cpp under `path` (None: the venv's)."""
    result = probe(path, timeout)
    return result.supports_gpu, result.devices, result.problem


def discover(
    home: Path, platform: str | None = None, *, timeout: float = PROBE_TIMEOUT, probe_fn: ProbeFn = probe
) -> list[Variant]:
    """The installed variants for this platform (verified, then probed), then the venv's own llama_cpp.

    Never raises: an unreadable manifest, a missing directory, a sha256 mismatch, an import that fails or a
    build that lacks the backend its directory is named for each give a Variant with `problem` set.
    An installed variant whose files do not match is never probed: nothing unverified is executed.
    """
    root = Path(home) / "backends" / (platform or platform_tag())
    found: list[Variant] = []
    try:
        manifest = read_manifest(root / MANIFEST, platform or platform_tag())
        manifest_problem = None
    except ManifestError as exc:
        manifest, manifest_problem = None, str(exc)
    listed = set(manifest.variants) if manifest is not None else set()
    try:
        present = {entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")}
    except OSError:
        present = set()
    for name in sorted(listed | present, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        directory = root / name
        entry = manifest.variants.get(name) if manifest is not None else None
        problem = None
        if name not in ORDER:
            problem = f"unknown backend {name!r} (known: {', '.join(ORDER)})"
        elif manifest_problem is not None:
            problem = manifest_problem
        elif not directory.is_dir():
            problem = f"listed in {MANIFEST} but {directory} is missing: offload backends install {name}"
        elif entry is None:
            problem = f"not in {MANIFEST} (an interrupted install?): offload backends install {name}"
        else:
            problem = verify(directory, entry)
        if problem is not None:
            found.append(Variant(name, directory, "installed", False, (), False, problem))
            continue
        assert entry is not None  # for mypy: every path with entry None set a problem
        found.append(_installed(name, directory, entry.version, probe_fn(directory, timeout)))
    found.append(_venv(probe_fn(None, timeout)))
    return found


def _installed(name: str, directory: Path, version: str, result: Probe) -> Variant:
    problem = result.problem
    if problem is None and result.file is not None and not Path(result.file).is_relative_to(directory.resolve()):
        problem = f"its directory holds no importable llama_cpp (the probe imported {result.file})"
    registry = LIBRARY_REGISTRY.get(name)
    if problem is None and registry is not None and registry not in result.registries:
        registered = ", ".join(result.registries) or "nothing"
        problem = f"built without {registry} support: the library registers only {registered}"
    return Variant(
        name, directory, "installed", result.supports_gpu, result.devices, True, problem, result.version or version
    )


def _venv(result: Probe) -> Variant:
    name = library_from_registries(result.registries) if result.problem is None else "cpu"
    return Variant(name, None, "venv", result.supports_gpu, result.devices, False, result.problem, result.version)

"""Build a variant: `pip install llama-cpp-python==<pinned>` from source with the backend's CMAKE_ARGS.

The build goes to a hidden staging directory (`.<backend>.partial`, which discovery ignores), its whole output
to `build.log` there; only a build whose library registers the backend it was built for replaces
`<platform>/<backend>/`, and then the manifest records the sha256 of every installed file. pip's cache is
off: a cached CPU-only wheel for the same version would otherwise be reused whatever CMAKE_ARGS says.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol

from offload.backends.manifest import (
    BUILD_LOG,
    MANIFEST,
    Manifest,
    ManifestError,
    VariantEntry,
    hash_tree,
    read_manifest,
    write_manifest,
)
from offload.backends.variants import LIBRARY_REGISTRY, ORDER, Probe, platform_tag, probe

PINNED_VERSION = "0.3.36"  # the llama-cpp-python the runner is tested on (pyproject pins the same)
CMAKE_ARGS = {
    "cuda": "-DGGML_CUDA=on",
    "rocm": "-DGGML_HIP=on",
    "vulkan": "-DGGML_VULKAN=on",
    "metal": "-DGGML_METAL=on",
    "cpu": "-DGGML_NATIVE=on",  # this machine's SIMD (AVX2, AVX512, ...), not the lowest common x86-64
}


class InstallError(Exception):
    """The variant could not be built or installed; the message says why and, when there is one, where the log is."""


class Toolchain(Protocol):
    """What the toolchain check needs to know of the machine (injected, so tests describe any machine)."""

    @property
    def platform(self) -> str: ...  # sys.platform

    @property
    def environ(self) -> Mapping[str, str]: ...

    def which(self, name: str) -> str | None: ...

    def exists(self, path: str) -> bool: ...


@dataclass(frozen=True)
class RealToolchain:
    environ: Mapping[str, str]
    platform: str = field(default=sys.platform)

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.environ.get("PATH"))

    def exists(self, path: str) -> bool:
        return Path(path).exists()


def pinned_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return PINNED_VERSION


def staging_dir(home: Path, backend: str, platform: str | None = None) -> Path:
    return Path(home) / "backends" / (platform or platform_tag()) / f".{backend}.partial"


def install_command(
    backend: str, version: str, home: Path, *, platform: str | None = None, python: str = sys.executable
) -> tuple[list[str], dict[str, str]]:
    """The pip command that builds `backend` into its staging directory, and the variables to add to its env."""
    if backend not in CMAKE_ARGS:
        raise InstallError(f"unknown backend {backend!r}: one of {', '.join(ORDER)}")
    argv = [
        python, "-m", "pip", "install",
        "--no-deps",  # numpy, jinja2, diskcache: the venv has them already
        "--no-cache-dir",
        "--no-binary", "llama-cpp-python",  # always build: a prebuilt wheel would not have this backend
        "--force-reinstall",
        "--target", str(staging_dir(home, backend, platform)),
        f"llama-cpp-python=={version}",
    ]  # fmt: skip
    return argv, {"CMAKE_ARGS": CMAKE_ARGS[backend], "FORCE_CMAKE": "1"}


def _first(tools: Toolchain, names: list[str], paths: list[str]) -> str | None:
    for name in names:
        found = tools.which(name)
        if found:
            return found
    return next((path for path in paths if tools.exists(path)), None)


def _nvcc(tools: Toolchain) -> str | None:
    env = tools.environ
    paths = [env["CUDACXX"]] if env.get("CUDACXX") else []
    paths += [f"{env[name]}/bin/nvcc" for name in ("CUDA_HOME", "CUDA_PATH") if env.get(name)]
    return _first(tools, ["nvcc"], [*paths, "/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc"])


def _hipcc(tools: Toolchain) -> str | None:
    rocm = tools.environ.get("ROCM_PATH")
    return _first(tools, ["hipcc"], [*([f"{rocm}/bin/hipcc"] if rocm else []), "/opt/rocm/bin/hipcc"])


def missing_toolchain(backend: str, tools: Toolchain) -> str | None:
    """None when `backend` can be built here; otherwise what is missing and how to install it."""
    if backend not in CMAKE_ARGS:
        return f"unknown backend {backend!r}: one of {', '.join(ORDER)}"
    if backend == "metal" and tools.platform != "darwin":
        return "Metal builds only on macOS (Apple silicon); on this machine use cuda, rocm, vulkan or cpu"
    if _first(tools, ["c++", "g++", "clang++"], []) is None:
        return (
            "no C++ compiler found (c++, g++ or clang++ on PATH): install build-essential (Debian/Ubuntu), "
            "gcc-c++ (Fedora/RHEL), base-devel (Arch) or Xcode's command line tools (xcode-select --install)"
        )
    if backend == "cuda" and _nvcc(tools) is None:
        return (
            "nvcc not found (on PATH, $CUDACXX, $CUDA_HOME/bin, /usr/local/cuda/bin, /opt/cuda/bin): install the "
            "CUDA toolkit (https://developer.nvidia.com/cuda-downloads, or your distribution's cuda-toolkit "
            "package), or set CUDACXX to nvcc's path"
        )
    if backend == "rocm" and _hipcc(tools) is None:
        return (
            "hipcc not found (on PATH, $ROCM_PATH/bin, /opt/rocm/bin): install ROCm's HIP SDK (rocm-hip-sdk), "
            "or set ROCM_PATH"
        )
    if backend == "vulkan":
        sdk = tools.environ.get("VULKAN_SDK")
        if _first(tools, ["glslc"], [f"{sdk}/bin/glslc"] if sdk else []) is None:
            return (
                "glslc (the Vulkan shader compiler) not found: install glslc (Debian/Ubuntu, Fedora), "
                "shaderc (Arch) or the LunarG Vulkan SDK and set VULKAN_SDK"
            )
        headers = [*([f"{sdk}/include/vulkan/vulkan.h"] if sdk else []), "/usr/include/vulkan/vulkan.h"]
        if _first(tools, [], [*headers, "/usr/local/include/vulkan/vulkan.h"]) is None:
            return (
                "Vulkan headers (vulkan/vulkan.h) not found: install libvulkan-dev (Debian/Ubuntu), "
                "vulkan-headers and vulkan-loader-devel (Fedora), vulkan-headers (Arch) or the LunarG Vulkan SDK"
            )
    return None


def toolchain_env(backend: str, tools: Toolchain) -> dict[str, str]:
    """Variables that point CMake at a toolkit found off PATH (e.g. CUDACXX=/usr/local/cuda/bin/nvcc)."""
    if backend == "cuda" and not tools.which("nvcc") and (nvcc := _nvcc(tools)):
        return {"CUDACXX": nvcc}
    if backend == "rocm" and not tools.which("hipcc") and (hipcc := _hipcc(tools)):
        return {"ROCM_PATH": str(Path(hipcc).parent.parent)}
    return {}


def _last_line(log: Path) -> str:
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def install(
    backend: str,
    home: Path,
    progress: Callable[[str], None],
    *,
    environ: Mapping[str, str],
    tools: Toolchain | None = None,
    version: str | None = None,
    platform: str | None = None,
    probe_fn: Callable[[Path | None, float], Probe] = probe,
) -> Path:
    """Build and install one variant; returns its directory. InstallError (with the log's path) when it fails."""
    if tools is None:
        tools = RealToolchain(environ)
    missing = missing_toolchain(backend, tools)
    if missing is not None:
        raise InstallError(f"cannot build the {backend} variant: {missing}")
    platform = platform or platform_tag()
    version = version or pinned_version()
    root = Path(home) / "backends" / platform
    staging = staging_dir(home, backend, platform)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log = staging / BUILD_LOG
    argv, extra = install_command(backend, version, home, platform=platform)
    extra |= toolchain_env(backend, tools)
    progress(f"building llama-cpp-python {version} with CMAKE_ARGS={extra['CMAKE_ARGS']} (log: {log})")
    with log.open("w") as out:
        out.write(f"$ {' '.join(f'{k}={v}' for k, v in extra.items())} {' '.join(argv)}\n")
        out.flush()
        try:
            process = subprocess.Popen(argv, env={**environ, **extra}, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise InstallError(f"cannot start pip: {exc}") from exc
        shown = ""
        while process.poll() is None:
            time.sleep(0.5)
            line = _last_line(log)
            if line and line != shown:
                progress(line[:200])
                shown = line
    if process.returncode != 0:
        raise InstallError(f"the {backend} build failed (pip exit code {process.returncode}); the log is {log}")
    result = probe_fn(staging, 120.0)
    registry = LIBRARY_REGISTRY.get(backend)
    if result.problem is None and registry is not None and registry not in result.registries:
        registered = ", ".join(result.registries) or "nothing"
        raise InstallError(f"the build has no {registry} support (it registers {registered}); the log is {log}")
    if result.problem is not None:
        progress(f"warning: the new build does not load on this machine: {result.problem}")
    files = hash_tree(staging)
    final, old = root / backend, root / f".{backend}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    try:
        manifest = read_manifest(root / MANIFEST, platform)
    except ManifestError:
        manifest = Manifest(platform=platform)  # unreadable: the other variants must be reinstalled anyway
    variants = {**manifest.variants, backend: VariantEntry(version, extra["CMAKE_ARGS"], files)}
    default = next(name for name in ORDER if name in variants)
    write_manifest(root / MANIFEST, Manifest(platform=platform, default=default, variants=variants))
    return final

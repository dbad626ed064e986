"""install.py: the pip command and its env, the toolchain check on described machines, refusals before building."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from offload.backends.install import (
    CMAKE_ARGS,
    InstallError,
    install,
    install_command,
    missing_toolchain,
    staging_dir,
    toolchain_env,
)


@dataclass
class FakeTools:
    on_path: dict[str, str] = field(default_factory=dict)  # name -> full path
    files: set[str] = field(default_factory=set)
    environ: Mapping[str, str] = field(default_factory=dict)
    platform: str = "linux"

    def which(self, name: str) -> str | None:
        return self.on_path.get(name)

    def exists(self, path: str) -> bool:
        return path in self.files


GCC = {"g++": "/usr/bin/g++"}


@pytest.mark.parametrize(
    ("backend", "cmake_args"),
    [("cuda", "-DGGML_CUDA=on"), ("rocm", "-DGGML_HIP=on"), ("vulkan", "-DGGML_VULKAN=on"),
     ("metal", "-DGGML_METAL=on"), ("cpu", "-DGGML_NATIVE=on")],
)  # fmt: skip
def test_install_command(tmp_path: Path, backend: str, cmake_args: str) -> None:
    argv, env = install_command(backend, "0.3.36", tmp_path, platform="linux-x86_64", python="/venv/bin/python")
    target = tmp_path / "backends" / "linux-x86_64" / f".{backend}.partial"
    assert target == staging_dir(tmp_path, backend, "linux-x86_64")
    assert argv[:4] == ["/venv/bin/python", "-m", "pip", "install"]
    assert argv[-1] == "llama-cpp-python==0.3.36"
    assert argv[argv.index("--target") + 1] == str(target)
    assert {"--no-deps", "--no-cache-dir", "--force-reinstall"} <= set(argv)  # no cached CPU-only wheel reused
    assert argv[argv.index("--no-binary") + 1] == "llama-cpp-python"
    assert env == {"CMAKE_ARGS": cmake_args, "FORCE_CMAKE": "1"}


def test_install_command_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="unknown backend 'opencl'"):
        install_command("opencl", "0.3.36", tmp_path)


@pytest.mark.parametrize(
    ("backend", "tools", "missing"),
    [
        pytest.param("cpu", FakeTools(GCC), None, id="cpu-with-gcc"),
        pytest.param("cpu", FakeTools({"clang++": "/usr/bin/clang++"}, platform="darwin"), None, id="cpu-clang"),
        pytest.param("cpu", FakeTools(), "no C++ compiler found", id="no-compiler"),
        pytest.param("cuda", FakeTools(GCC), "nvcc not found", id="cuda-no-toolkit"),
        pytest.param("cuda", FakeTools({**GCC, "nvcc": "/usr/bin/nvcc"}), None, id="cuda-nvcc-on-path"),
        pytest.param("cuda", FakeTools(GCC, {"/usr/local/cuda/bin/nvcc"}), None, id="cuda-usr-local"),
        pytest.param(
            "cuda", FakeTools(GCC, {"/opt/cuda-12.4/bin/nvcc"}, {"CUDA_HOME": "/opt/cuda-12.4"}), None,
            id="cuda-home",
        ),
        pytest.param("cuda", FakeTools(GCC, {"/x/nvcc"}, {"CUDACXX": "/x/nvcc"}), None, id="cudacxx"),
        pytest.param("cuda", FakeTools({}, {"/usr/local/cuda/bin/nvcc"}), "no C++ compiler", id="cuda-no-host-cc"),
        pytest.param("rocm", FakeTools(GCC), "hipcc not found", id="rocm-missing"),
        pytest.param("rocm", FakeTools(GCC, {"/opt/rocm/bin/hipcc"}), None, id="rocm-opt"),
        pytest.param("vulkan", FakeTools(GCC), "glslc", id="vulkan-no-glslc"),
        pytest.param(
            "vulkan", FakeTools({**GCC, "glslc": "/usr/bin/glslc"}), "libvulkan-dev", id="vulkan-no-headers"
        ),
        pytest.param(
            "vulkan", FakeTools({**GCC, "glslc": "/usr/bin/glslc"}, {"/usr/include/vulkan/vulkan.h"}), None,
            id="vulkan-ok",
        ),
        pytest.param(
            "vulkan",
            FakeTools(GCC, {"/sdk/bin/glslc", "/sdk/include/vulkan/vulkan.h"}, {"VULKAN_SDK": "/sdk"}),
            None,
            id="vulkan-lunarg-sdk",
        ),
        pytest.param("metal", FakeTools(GCC), "Metal builds only on macOS", id="metal-on-linux"),
        pytest.param("metal", FakeTools({"clang++": "/usr/bin/clang++"}, platform="darwin"), None, id="metal-mac"),
        pytest.param("opencl", FakeTools(GCC), "unknown backend", id="unknown"),
    ],
)
def test_missing_toolchain(backend: str, tools: FakeTools, missing: str | None) -> None:
    result = missing_toolchain(backend, tools)
    if missing is None:
        assert result is None
    else:
        assert result is not None and missing in result


@pytest.mark.parametrize(
    ("backend", "tools", "env"),
    [
        ("cuda", FakeTools(GCC, {"/usr/local/cuda/bin/nvcc"}), {"CUDACXX": "/usr/local/cuda/bin/nvcc"}),
        ("cuda", FakeTools({**GCC, "nvcc": "/usr/bin/nvcc"}), {}),
        ("rocm", FakeTools(GCC, {"/opt/rocm/bin/hipcc"}), {"ROCM_PATH": "/opt/rocm"}),
        ("cpu", FakeTools(GCC), {}),
    ],
)
def test_toolchain_env(backend: str, tools: FakeTools, env: dict[str, str]) -> None:
    assert toolchain_env(backend, tools) == env


def test_install_refuses_before_building_when_the_toolkit_is_missing(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(InstallError, match="cannot build the cuda variant: nvcc not found"):
        install("cuda", tmp_path, lines.append, environ={}, tools=FakeTools(GCC), platform="linux-x86_64")
    assert lines == []
    assert not (tmp_path / "backends").exists()


def test_every_backend_has_cmake_args() -> None:
    assert set(CMAKE_ARGS) == {"cuda", "rocm", "vulkan", "metal", "cpu"}

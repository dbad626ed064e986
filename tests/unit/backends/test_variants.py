"""discover(): verification before anything runs, the probe's answers turned into variants; one real probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.backends.manifest import Manifest, VariantEntry, hash_tree, write_manifest
from offload.backends.variants import (
    Probe,
    Variant,
    device_library,
    discover,
    library_from_registries,
    platform_tag,
    probe,
    probe_library,
)

PLATFORM = "linux-x86_64"
VENV_CPU = Probe(False, ("CPU",), ("CPU",), "/venv/llama_cpp/__init__.py", "0.3.36")


def install_fake(home: Path, name: str, in_manifest: bool = True) -> Path:
    directory = home / "backends" / PLATFORM / name
    (directory / "llama_cpp" / "lib").mkdir(parents=True)
    (directory / "llama_cpp" / "__init__.py").write_text("")
    (directory / "llama_cpp" / "lib" / f"libggml-{name}.so").write_bytes(name.encode())
    if in_manifest:
        manifest_path = home / "backends" / PLATFORM / "manifest.json"
        from offload.backends.manifest import read_manifest

        old = read_manifest(manifest_path, PLATFORM)
        entry = VariantEntry("0.3.36", f"-DGGML_{name.upper()}=on", hash_tree(directory))
        write_manifest(manifest_path, Manifest(PLATFORM, name, {**old.variants, name: entry}))
    return directory


class FakeProbe:
    """Answers as each library would; records what was probed (nothing unverified may be)."""

    def __init__(self, answers: dict[str | None, Probe]) -> None:
        self.answers = answers
        self.probed: list[Path | None] = []

    def __call__(self, path: Path | None, timeout: float) -> Probe:
        self.probed.append(path)
        return self.answers[path.name if path is not None else None]


def answer(directory_name: str, home: Path, registries: tuple[str, ...], devices: tuple[str, ...]) -> Probe:
    file = str((home / "backends" / PLATFORM / directory_name / "llama_cpp" / "__init__.py").resolve())
    return Probe(bool(set(registries) - {"CPU"}), devices, registries, file, "0.3.36")


def test_nothing_installed_is_the_venv_only(tmp_path: Path) -> None:
    fake = FakeProbe({None: VENV_CPU})
    assert discover(tmp_path, PLATFORM, probe_fn=fake) == [
        Variant("cpu", None, "venv", False, ("CPU",), False, None, "0.3.36")
    ]


def test_verified_variants_probed_and_ordered(tmp_path: Path) -> None:
    vulkan, cuda = install_fake(tmp_path, "vulkan"), install_fake(tmp_path, "cuda")
    fake = FakeProbe({
        "cuda": answer("cuda", tmp_path, ("CUDA", "CPU"), ("CUDA0", "CPU")),
        "vulkan": answer("vulkan", tmp_path, ("Vulkan", "CPU"), ("Vulkan0", "CPU")),
        None: VENV_CPU,
    })  # fmt: skip
    found = discover(tmp_path, PLATFORM, probe_fn=fake)
    assert [(v.name, v.source, v.path, v.verified, v.problem, v.devices) for v in found] == [
        ("cuda", "installed", cuda, True, None, ("CUDA0", "CPU")),
        ("vulkan", "installed", vulkan, True, None, ("Vulkan0", "CPU")),
        ("cpu", "venv", None, False, None, ("CPU",)),
    ]
    assert found[0].supports_gpu


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        ("tamper", "verification failed: llama_cpp/lib/libggml-cuda.so has sha256"),
        ("unlisted", "not in manifest.json (an interrupted install?): offload backends install cuda"),
        ("dir-gone", "listed in manifest.json but"),
        ("bad-manifest", "cannot read"),
    ],
)
def test_unverified_variant_reported_and_never_probed(tmp_path: Path, setup: str, problem: str) -> None:
    directory = install_fake(tmp_path, "cuda", in_manifest=setup != "unlisted")
    if setup == "tamper":
        (directory / "llama_cpp" / "lib" / "libggml-cuda.so").write_bytes(b"evil")
    elif setup == "dir-gone":
        import shutil

        shutil.rmtree(directory)
    elif setup == "bad-manifest":
        (tmp_path / "backends" / PLATFORM / "manifest.json").write_text("{")
    fake = FakeProbe({None: VENV_CPU})
    found = discover(tmp_path, PLATFORM, probe_fn=fake)
    assert found[0].name == "cuda" and not found[0].verified
    assert found[0].problem is not None and problem in found[0].problem
    assert fake.probed == [None]  # only the venv's ran


@pytest.mark.parametrize(
    ("registries", "devices", "file_in_variant", "probe_problem", "problem"),
    [
        (("CUDA", "CPU"), ("CPU",), True, None, None),  # loads, sees no GPU: choose() decides, not discover()
        (("CPU",), ("CPU",), True, None, "built without CUDA support: the library registers only CPU"),
        (("CUDA", "CPU"), ("CUDA0", "CPU"), False, None, "its directory holds no importable llama_cpp"),
        ((), (), True, "loading llama_cpp failed: OSError: libcuda.so.1", "libcuda.so.1"),
    ],
)
def test_probe_answers(
    tmp_path: Path,
    registries: tuple[str, ...],
    devices: tuple[str, ...],
    file_in_variant: bool,
    probe_problem: str | None,
    problem: str | None,
) -> None:
    install_fake(tmp_path, "cuda")
    result = answer("cuda", tmp_path, registries, devices)
    if not file_in_variant:
        result = Probe(result.supports_gpu, devices, registries, "/venv/llama_cpp/__init__.py")
    if probe_problem is not None:
        result = Probe(problem=probe_problem)
    cuda = discover(tmp_path, PLATFORM, probe_fn=FakeProbe({"cuda": result, None: VENV_CPU}))[0]
    assert cuda.verified
    if problem is None:
        assert cuda.problem is None
    else:
        assert cuda.problem is not None and problem in cuda.problem


@pytest.mark.parametrize(
    ("registries", "name"),
    [(("CPU",), "cpu"), (("CUDA", "CPU"), "cuda"), (("Vulkan", "CUDA", "CPU"), "cuda"), (("ROCm", "CPU"), "rocm"),
     (("Metal", "BLAS", "CPU"), "metal"), (("Vulkan", "CPU"), "vulkan"), ((), "cpu")],
)  # fmt: skip
def test_venv_named_by_what_it_registers(tmp_path: Path, registries: tuple[str, ...], name: str) -> None:
    assert library_from_registries(registries) == name
    fake = FakeProbe({None: Probe(name != "cpu", registries, registries, "/venv/x")})
    assert discover(tmp_path, PLATFORM, probe_fn=fake)[-1].name == name


def test_unknown_directory_reported(tmp_path: Path) -> None:
    install_fake(tmp_path, "opencl")
    found = discover(tmp_path, PLATFORM, probe_fn=FakeProbe({None: VENV_CPU}))
    assert found[0].name == "opencl" and found[0].problem is not None and "unknown backend" in found[0].problem


@pytest.mark.parametrize(
    ("device", "library"),
    [("CUDA0", "cuda"), ("ROCm1", "rocm"), ("Vulkan0", "vulkan"), ("Metal", "metal"), ("MTL0", "metal"),
     ("CPU", None), ("BLAS", None)],
)  # fmt: skip
def test_device_library(device: str, library: str | None) -> None:
    assert device_library(device) == library


@pytest.mark.parametrize(
    ("system", "machine", "tag"),
    [("linux", "x86_64", "linux-x86_64"), ("linux", "AMD64", "linux-x86_64"), ("darwin", "arm64", "darwin-arm64"),
     ("win32", "AMD64", "windows-x86_64"), ("linux", "aarch64", "linux-aarch64")],
)  # fmt: skip
def test_platform_tag(system: str, machine: str, tag: str) -> None:
    assert platform_tag(system, machine) == tag


# ---------------------------------------------------------------- the real subprocess probe


def test_real_venv_llama_cpp_is_a_cpu_build(tmp_path: Path) -> None:
    found = discover(tmp_path, PLATFORM)
    assert len(found) == 1
    venv = found[0]
    assert (venv.name, venv.source, venv.path, venv.supports_gpu, venv.problem) == ("cpu", "venv", None, False, None)
    assert venv.devices == ("CPU",)


def test_real_probe_of_a_directory_without_llama_cpp_falls_through_to_the_venv(tmp_path: Path) -> None:
    result = probe(tmp_path, 60.0)
    assert result.problem is None and result.file is not None and not result.file.startswith(str(tmp_path))


def test_real_probe_of_a_broken_variant(tmp_path: Path) -> None:
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text("raise OSError('libcuda.so.1: cannot open shared object')")
    supports_gpu, devices, problem = probe_library(tmp_path, 60.0)
    assert (supports_gpu, devices) == (False, ())
    assert problem is not None and "failed: OSError: libcuda.so.1: cannot open shared object" in problem


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("import time; time.sleep(30)", "did not finish within 1 s"),
        ("import os; os._exit(3)", "crashed (exit code 3)"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crashed (signal 11)"),
    ],
)
def test_real_probe_bounded_and_never_raises(tmp_path: Path, body: str, problem: str) -> None:
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text(body)
    result = probe(tmp_path, 1.0)
    assert result.problem is not None and problem in result.problem

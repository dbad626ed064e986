"""NVIDIA probe: CUDA_VISIBLE_DEVICES as the CUDA runtime reads it, the driver/runtime check and its fix."""

from __future__ import annotations

import pytest

from offload.hardware.nvidia import cuda_visible, driver_problem, minimum_driver
from offload.hardware.probe import snapshot
from tests.fakes import hardware as machines
from tests.fakes.hardware import A100, H100, FakeLibCuda

UUIDS = ["GPU-aaaa1111-0000-0000-0000-000000000000", "GPU-bbbb2222-0000-0000-0000-000000000000", "GPU-aaaa3333-0"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, [0, 1, 2], id="unset-shows-all"),
        pytest.param("", [], id="empty-hides-all"),
        pytest.param("1", [1], id="one-index"),
        pytest.param("2,0", [2, 0], id="reordered"),
        pytest.param(" 1 , 2", [1, 2], id="spaces"),
        pytest.param("0,7,1", [0], id="stops-at-out-of-range"),
        pytest.param("0,-1,1", [0], id="stops-at-minus-one"),
        pytest.param("1,1", [1], id="stops-at-repeat"),
        pytest.param("GPU-bbbb2222-0000-0000-0000-000000000000", [1], id="full-uuid"),
        pytest.param("GPU-bbbb", [1], id="uuid-prefix"),
        pytest.param("gpu-BBBB", [1], id="uuid-any-case"),
        pytest.param("GPU-aaaa", [], id="ambiguous-prefix"),
        pytest.param("GPU-aaaa3,0", [2, 0], id="uuid-then-index"),
        pytest.param("MIG-1234", [], id="mig-not-supported"),
        pytest.param("bbbb2222", [], id="uuid-needs-prefix"),
    ],
)
def test_cuda_visible(value: str | None, expected: list[int]) -> None:
    assert cuda_visible(value, UUIDS) == expected


@pytest.mark.parametrize(
    ("environ", "ids", "names", "hidden"),
    [
        pytest.param({}, ["cuda:0", "cuda:1"], [H100.name, A100.name], 0, id="unset"),
        pytest.param({"CUDA_VISIBLE_DEVICES": "1"}, ["cuda:0"], [A100.name], 1, id="by-index"),
        pytest.param({"CUDA_VISIBLE_DEVICES": "1,0"}, ["cuda:0", "cuda:1"], [A100.name, H100.name], 0, id="swapped"),
        pytest.param({"CUDA_VISIBLE_DEVICES": A100.uuid[:12]}, ["cuda:0"], [A100.name], 1, id="by-uuid"),
        pytest.param({"CUDA_VISIBLE_DEVICES": ""}, [], [], 2, id="empty-hides-all"),
    ],
)
def test_visible_devices_in_snapshot(environ: dict[str, str], ids: list[str], names: list[str], hidden: int) -> None:
    found = snapshot(machines.nvidia_h100(environ=environ, gpus=(H100, A100)))
    assert [d.id for d in found.devices] == ids
    assert [d.name for d in found.devices] == names
    assert [d.index for d in found.devices] == list(range(len(ids)))
    reasons = [r.reason for r in found.rejections if "CUDA_VISIBLE_DEVICES" in r.reason]
    assert len(reasons) == hidden


@pytest.mark.parametrize(
    ("driver", "runtime", "release", "problem", "fix"),
    [
        pytest.param(12040, 12040, "550.54.14", None, None, id="equal"),
        pytest.param(12080, 12040, "570.26", None, None, id="newer-driver"),
        pytest.param(
            11080,
            12040,
            "520.61.05",
            "driver 520.61.05 supports CUDA 11.8; this build needs 12.4: the CUDA backend cannot start",
            "upgrade the NVIDIA driver to >= 550.54.14",
            id="major-too-old",
        ),
        pytest.param(
            12020,
            12040,
            "535.183.01",
            "driver 535.183.01 supports CUDA 12.2; this build needs 12.4: it runs only under minor-version",
            "upgrade the NVIDIA driver to >= 550.54.14",
            id="minor-too-old",
        ),
        pytest.param(
            12080, 13000, None, "the NVIDIA driver supports CUDA 12.8; this build needs 13.0", ">= 580.65.06", id="13"
        ),
        pytest.param(12080, 12090, None, "needs 12.9", ">= 575.51.03", id="12.9"),
        pytest.param(13000, 14000, None, "needs 14.0", "upgrade the NVIDIA driver to the newest", id="past-table"),
    ],
)
def test_driver_problem(driver: int, runtime: int, release: str | None, problem: str | None, fix: str | None) -> None:
    found = driver_problem(driver, runtime, release)
    if problem is None:
        assert found is None
        return
    assert found is not None
    assert problem in found.problem
    assert fix is not None and fix in found.fix


@pytest.mark.parametrize(
    ("cuda", "release"),
    [(11080, "520.61.05"), (12000, "525.60.13"), (12040, "550.54.14"), (12041, "550.54.14"), (12070, "570.26")],
)
def test_minimum_driver(cuda: int, release: str) -> None:
    assert minimum_driver(cuda) == release


def test_minor_version_gap_keeps_the_device_with_a_problem() -> None:
    system = machines.nvidia_h100()
    system.libraries[f"{machines.MULTIARCH}/libcuda.so.1"] = FakeLibCuda(12020)
    found = snapshot(system)
    assert [d.id for d in found.devices] == ["cuda:0"]
    (problem,) = found.problems
    assert "minor-version compatibility" in problem.problem


def test_libcuda_that_does_not_load() -> None:
    system = machines.nvidia_h100()
    path = f"{machines.MULTIARCH}/libcuda.so.1"
    system.libraries[path] = OSError("libcuda.so.1: wrong ELF class: ELFCLASS32")
    found = snapshot(system)
    assert found.devices == ()
    assert any("wrong ELF class" in r.reason and r.subject.startswith("cuda:0") for r in found.rejections)
    assert found.cuda_driver_version is None


def test_nvml_not_installed_without_libcuda_is_one_rejection() -> None:
    found = snapshot(machines.cpu_only())
    (nvidia,) = [r for r in found.rejections if r.probe == "nvidia"]
    assert nvidia.reason.startswith("no NVIDIA driver: libcuda.so.1 not found; searched ldconfig -p")


def test_driver_api_failure_is_recorded() -> None:
    system = machines.container_with_only_libcuda()
    system.libraries[f"{machines.MULTIARCH}/libcuda.so.1"] = FakeLibCuda(12080, gpus=[H100], init_result=100)
    found = snapshot(system)
    assert found.devices == ()
    assert any("cuInit failed with CUDA error 100" in r.reason for r in found.rejections)

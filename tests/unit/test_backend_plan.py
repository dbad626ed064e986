"""The order of backends a load tries, from fake machines and variants (pure, no probes run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.backend_plan import Candidate, plan_from
from offload.backends.variants import Variant
from offload.hardware.probe import snapshot
from tests.fakes.hardware import cpu_only, nvidia_h100

CUDA_DIR = Path("/home/u/.offload/backends/linux-x86_64/cuda")


def cuda_installed(problem: str | None = None) -> Variant:
    return Variant("cuda", CUDA_DIR, "installed", True, ("CUDA0", "CPU"), problem is None, problem)


def venv(name: str = "cpu") -> Variant:
    devices = ("CUDA0", "CPU") if name == "cuda" else ("CPU",)
    return Variant(name, None, "venv", name != "cpu", devices, False, None)


@pytest.mark.parametrize(
    ("variants", "requested", "expected", "forced"),
    [
        ([cuda_installed(), venv()], "auto", [("cuda", CUDA_DIR), ("cpu", None)], False),
        # No CPU-only build: the GPU build runs every layer on the CPU as the last resort.
        ([venv("cuda")], "auto", [("cuda", None), ("cpu", None)], False),
        ([cuda_installed(), venv("cuda")], "auto", [("cuda", CUDA_DIR), ("cuda", None), ("cpu", None)], False),
        # A variant whose files do not match its manifest is never tried.
        ([cuda_installed("verification failed"), venv()], "auto", [("cpu", None)], False),
        ([cuda_installed(), venv()], "cuda", [("cuda", CUDA_DIR)], True),
        ([cuda_installed("verification failed"), venv()], "cuda", [], True),
        ([cuda_installed(), venv()], "cpu", [("cpu", None)], True),
        ([venv("cuda")], "cpu", [("cpu", None)], True),
    ],
)
def test_plan_on_a_cuda_machine(
    variants: list[Variant], requested: str, expected: list[tuple[str, Path | None]], forced: bool
) -> None:
    plan = plan_from(snapshot(nvidia_h100()), variants, requested)
    assert plan.candidates == tuple(Candidate(backend, path) for backend, path in expected)
    assert plan.forced is forced
    assert plan.reason


def test_a_cuda_variant_is_not_tried_on_a_machine_without_nvidia_gpus() -> None:
    plan = plan_from(snapshot(cpu_only()), [cuda_installed(), venv()], "auto")
    assert plan.candidates == (Candidate("cpu", None),)


def test_forced_cuda_with_no_cuda_variant_says_how_to_get_one() -> None:
    plan = plan_from(snapshot(nvidia_h100()), [venv()], "cuda")
    assert plan.candidates == ()
    assert "offload backends install cuda" in plan.reason

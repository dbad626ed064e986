"""offload doctor: the report built from fake machines and fake variants, and --json printing one object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from offload import cli_doctor
from offload.backends.variants import Variant
from offload.cli_doctor import build_report
from offload.hardware.probe import snapshot
from tests.fakes import hardware as machines

CPU = Variant("cpu", None, "venv", False, ("CPU",), False, None)
CUDA = Variant(
    "cuda", Path("/home/me/.offload/backends/linux-x86_64/cuda"), "installed", True, ("CUDA0", "CPU"), True, None
)
BROKEN_VULKAN = Variant("vulkan", Path("/v"), "installed", True, (), False, "sha256 mismatch: llama_cpp/lib/libggml.so")


def fixes(report: dict[str, object]) -> str:
    problems = report["problems"]
    assert isinstance(problems, list)
    return " | ".join(f"{p['subject']}: {p['problem']} -> {p['fix']}" for p in problems)


def test_gpu_without_a_variant_names_the_install_command() -> None:
    report = build_report(snapshot(machines.nvidia_h100()), [CPU], "auto")
    text = fixes(report)
    assert "NVIDIA H100 80GB HBM3: no installed variant can use it" in text
    assert "offload backends install cuda" in text and "CMAKE_ARGS=-DGGML_CUDA=on" in text


def test_gpu_with_its_variant_has_no_problem() -> None:
    report = build_report(snapshot(machines.nvidia_h100()), [CUDA, CPU], "auto")
    assert report["problems"] == []
    choice = report["choice"]
    assert isinstance(choice, dict)
    assert choice["variants"][0].startswith("cuda")


def test_old_driver_problem_reaches_the_doctor() -> None:
    report = build_report(snapshot(machines.old_driver()), [CUDA, CPU], "auto")
    text = fixes(report)
    assert "driver 520.61.05 supports CUDA 11.8; this build needs 12.4" in text
    assert "upgrade the NVIDIA driver to >= 550.54.14" in text


def test_broken_variant_and_forced_backend() -> None:
    report = build_report(snapshot(machines.cpu_only()), [BROKEN_VULKAN, CPU], "vulkan")
    text = fixes(report)
    assert "vulkan variant (installed): sha256 mismatch" in text
    assert "backend choice" in text and "offload config set llm.backend auto" in text


def test_without_backends_package_the_hardware_is_still_reported() -> None:
    report = build_report(snapshot(machines.fedora_with_vulkan()), None, "auto")
    assert report["backends"] == [] and report["choice"] is None
    assert [d["id"] for d in report["devices"]] == ["vulkan:0"]


def test_json_is_exactly_one_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_doctor, "_variants", lambda home: ([CPU], None))
    app = typer.Typer()
    app.command()(cli_doctor.doctor)
    result = CliRunner().invoke(app, ["--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"devices", "cpu", "libraries", "rejections", "cuda_driver_version", "backends", "choice"}
    assert report["backends"][0]["name"] == "cpu"


def test_human_output_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_doctor, "_variants", lambda home: ([CPU], None))
    app = typer.Typer()
    app.command()(cli_doctor.doctor)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "CPU" in result.stdout and "Choice" in result.stdout

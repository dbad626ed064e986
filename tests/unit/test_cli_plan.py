"""`offload plan`: the pure plan_for on fake machines, and the command's table, JSON and refusals (the store and
the hardware probe replaced by the real starter GGUF and a fake snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from offload import cli_plan
from offload.hardware.devices import CpuInfo, Device, HardwareSnapshot
from offload.models.gguf import GGUFFile, read_gguf
from offload.planner import PlanRefused

GIB = 1 << 30
MIB = 1 << 20
runner = CliRunner()


def _machine(*devices: Device, ram: int = 32 * GIB) -> HardwareSnapshot:
    cpu = CpuInfo(name="cpu", cores=8, threads=16, flags=(), memory_total=ram, memory_available=ram)
    return HardwareSnapshot(devices=devices, cpu=cpu, libraries=(), rejections=(), cuda_driver_version=None)


def _gpu(library: str, index: int, free: int) -> Device:
    return Device(
        id=f"{library}:{index}", library=library, name="GPU", total_memory=free, free_memory=free, index=index
    )


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> GGUFFile:
    from offload.models.starter import ensure_starter, starter_available
    from offload.models.store import Store

    if not starter_available():
        pytest.fail("the starter model package is not installed (make test installs offload[starter])")
    return read_gguf(ensure_starter(Store(tmp_path_factory.mktemp("store"))).model_path)


@pytest.mark.parametrize(
    ("devices", "backend", "gpu_names", "n_gpu"),
    [
        ((_gpu("cuda", 0, 24 * GIB),), "auto", ["CUDA0"], 19),
        ((_gpu("cuda", 0, 24 * GIB),), "cpu", [], 0),  # backend cpu: no layers offloaded
        ((_gpu("vulkan", 0, 8 * GIB), _gpu("cuda", 0, 8 * GIB)), "auto", ["CUDA0"], 19),  # cuda before vulkan
        ((_gpu("vulkan", 0, 8 * GIB), _gpu("cuda", 0, 8 * GIB)), "vulkan", ["Vulkan0"], 19),
        ((), "auto", [], 0),
    ],
)
def test_plan_for_picks_the_devices(
    gemma3: GGUFFile, devices: tuple[Device, ...], backend: str, gpu_names: list[str], n_gpu: int
) -> None:
    p = cli_plan.plan_for(gemma3, _machine(*devices), ctx=None, parallel=1, default_ctx=4096, backend=backend)
    assert [name for name in p.usage if name != "CPU"] == gpu_names
    assert p.n_gpu_layers == n_gpu and p.layers_total == 19
    assert p.n_ctx == 4096


def test_forced_ctx_is_refused_not_shrunk(gemma3: GGUFFile) -> None:
    tiny = _machine(ram=1350 * MIB)
    assert cli_plan.plan_for(gemma3, tiny, ctx=None, parallel=1, default_ctx=8192).n_ctx < 8192
    with pytest.raises(PlanRefused):
        cli_plan.plan_for(gemma3, tiny, ctx=8192, parallel=1, default_ctx=4096)


def test_gpu_layers_setting_is_a_forced_count(gemma3: GGUFFile) -> None:
    machine = _machine(_gpu("cuda", 0, 24 * GIB))
    p = cli_plan.plan_for(gemma3, machine, ctx=None, parallel=1, default_ctx=4096, gpu_layers="4")
    assert p.layers_per_device == {"CUDA0": 4, "CPU": 15}


@pytest.fixture
def app(gemma3: GGUFFile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path))
    monkeypatch.setattr(cli_plan, "read_model", lambda settings, name: gemma3)
    monkeypatch.setattr(cli_plan, "machine", lambda: _machine(_gpu("cuda", 0, 24 * GIB)))
    app = typer.Typer()
    app.command()(cli_plan.plan)
    return app


def test_table(app: typer.Typer) -> None:
    result = runner.invoke(app, ["gemma3:270m", "--ctx", "8192", "--parallel", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "gemma3:270m: 19/19 layers on GPU, context 8192 x 2 sequences"
    assert lines[1].split() == ["DEVICE", "LAYERS", "WEIGHTS", "KV", "COMPUTE", "OVERHEAD", "TOTAL"]
    assert lines[2].split()[:2] == ["CUDA0", "19"]
    assert "tensor split: 1.000" in result.output


def test_json(app: typer.Typer) -> None:
    result = runner.invoke(app, ["gemma3:270m", "--json", "--parallel", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == "gemma3:270m" and data["n_ctx"] == 4096 and data["n_gpu_layers"] == 19
    cuda = next(d for d in data["devices"] if d["name"] == "CUDA0")
    assert cuda["kv"] == 72 * MIB  # gemma3 270m at 4096: 12 + 60 MiB, as llama.cpp allocates it
    assert cuda["overhead"] == 523 * MIB  # the CUDA context, counted on the GPU that holds layers
    assert cuda["total"] == cuda["weights"] + cuda["kv"] + cuda["compute"] + cuda["overhead"]


def test_refusal_exits_1_with_the_numbers(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_plan, "machine", lambda: _machine(ram=600 * MIB))
    result = runner.invoke(app, ["gemma3:270m", "--json", "--ctx", "4096"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["code"] == "plan_refused" and "CPU needs" in data["error"]


def test_parallel_follows_the_setting_and_auto_sizes_it(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    def slots(*args: str) -> int:
        result = runner.invoke(app, ["gemma3:270m", "--json", *args])
        assert result.exit_code == 0, result.output
        return int(json.loads(result.output)["parallel"])

    assert slots() == 4  # num_parallel "auto" on a 24 GiB GPU: 4 slots keep every layer and 4096 each
    assert slots("--parallel", "2") == 2
    monkeypatch.setenv("OFFLOAD_NUM_PARALLEL", "3")
    assert slots() == 3
    result = runner.invoke(app, ["gemma3:270m", "--parallel", "0"])
    assert result.exit_code == 2 and "from 1 to 256" in result.output

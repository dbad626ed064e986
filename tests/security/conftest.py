"""The in-process app of the API tests (a real Store on tmp_path holding a tiny model, a FakeScheduler), reused
as is so that the security suite drives the same app the rest of the suite does."""

from __future__ import annotations

from tests.unit.api.conftest import (  # noqa: F401  (fixtures)
    app,
    client,
    gguf_path,
    scheduler,
    settings,
    store,
    stored,
)

"""GPU layers asked for but none landed: the response of that request says so in a header, in both dialects."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from offload.api.streaming import WARNING_HEADER
from offload.models.store import StoredModel
from tests.fakes.scheduler import FakeRunningModel, FakeScheduler

WARNING = "999 GPU layers were asked for, but every layer runs on the CPU"


@pytest.fixture
def cpu_only_despite_gpu(scheduler: FakeScheduler, stored: StoredModel) -> None:
    placement = {"backend": "cpu", "layers_on_gpu": 0, "layers_total": 2, "devices": [], "verified": True,
                 "warning": WARNING}
    scheduler.running_models = [FakeRunningModel(str(stored.name), stored.model_digest, placement=placement)]


@pytest.mark.usefixtures("cpu_only_despite_gpu")
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "tiny", "prompt": "hi"}),
        ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        ("/v1/completions", {"model": "tiny", "prompt": "hi"}),
    ],
)
def test_warning_header(client: TestClient, path: str, body: dict[str, object]) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers[WARNING_HEADER] == WARNING


def test_no_header_when_placement_is_fine(client: TestClient) -> None:
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert response.status_code == 200
    assert WARNING_HEADER not in response.headers

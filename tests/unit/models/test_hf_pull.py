"""Pulls from a fake Hugging Face Hub on loopback (tests/fakes/huggingface.py): the real huggingface_hub talks to it
over HTTP, as it would to huggingface.co. GGUF files are made by the tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download

from offload.errors import ChecksumMismatch, HubAuthRequired, HubError, HubNotFound, HubUnreachable, NoGGUF
from offload.models import hf_pull
from offload.models.gguf import read_gguf
from offload.models.hf_hub import HubConfig
from offload.models.hf_names import HubRef, parse_hub_name
from offload.models.pull_status import PullStatus
from offload.models.store import Store, StoredModel
from tests.blackbox.server import free_port
from tests.fakes.huggingface import FakeHub
from tests.fixtures.gguf_files import write_tiny_gguf

TOKEN = "hf_test_token"


def gguf_bytes(tmp_path: Path, name: str, n_tokens: int) -> bytes:
    return write_tiny_gguf(tmp_path / name, n_tokens=n_tokens).read_bytes()


def big_gguf(tmp_path: Path) -> bytes:
    """A GGUF past huggingface_hub's download chunk (10 MiB): http_get writes whole chunks, so only a download
    cut after the first chunk leaves bytes to resume from."""
    padding = "x" * (constants.DOWNLOAD_CHUNK_SIZE + (2 << 20))
    return write_tiny_gguf(tmp_path / "big.gguf", extra_metadata={"general.description": padding}).read_bytes()


def split_files(tmp_path: Path, folder: str) -> dict[str, bytes]:
    (tmp_path / "split").mkdir()
    first = write_tiny_gguf(tmp_path / "split" / "Model-Q8_0.gguf", n_tokens=64, split_max_tensors=4)
    return {f"{folder}/{part.name}": part.read_bytes() for part in sorted(first.parent.glob("*-of-*.gguf"))}


@pytest.fixture
def models(tmp_path: Path) -> dict[str, bytes]:
    return {
        "README.md": b"# a model\n",
        "Model-Q4_K_M.gguf": gguf_bytes(tmp_path, "q4.gguf", 300),
        "Model-Q8_0.gguf": gguf_bytes(tmp_path, "q8.gguf", 320),
    }


@pytest.fixture
def fake() -> Iterator[FakeHub]:
    with FakeHub(token=TOKEN) as hub:
        yield hub


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def config(fake: FakeHub, tmp_path: Path, token: str | None = None) -> HubConfig:
    return HubConfig(endpoint=fake.url, token=token, cache_dir=tmp_path / "hf-cache")


def ref(name: str) -> HubRef:
    found = parse_hub_name(name)
    assert found is not None
    return found


def no_memory() -> int:
    raise AssertionError("the choice should not need the machine's memory")


def pull(hub: HubConfig, store: Store, name: str) -> tuple[StoredModel, list[PullStatus]]:
    statuses: list[PullStatus] = []
    planned = hf_pull.plan(hub, ref(name), no_memory)
    return hf_pull.pull(planned, hub, store, statuses.append), statuses


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(store: Store) -> list[str]:
    return [p.name for p in (store.root / "blobs").iterdir() if p.name.startswith(".")]


def test_pull_takes_q4_k_m_and_reports_ollamas_statuses(
    fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    fake.add_repo("org/Model-GGUF", models)
    model, statuses = pull(config(fake, tmp_path), store, "hf.co/org/Model-GGUF")
    assert str(model.name) == "hf.co/org/model-gguf:latest"
    assert model.model_digest == sha(models["Model-Q4_K_M.gguf"])
    assert store.blob_path(model.model_digest).read_bytes() == models["Model-Q4_K_M.gguf"]
    digest = model.model_digest
    pulling = [s for s in statuses if s.digest == digest]
    assert pulling[0] == PullStatus(f"pulling {digest[7:19]}", digest, len(models["Model-Q4_K_M.gguf"]), 0)
    assert pulling[-1].completed == pulling[-1].total
    assert [s.status for s in statuses[-2:]] == ["verifying sha256 digest", "writing manifest"]
    assert leftovers(store) == []
    assert [r.headers.get("authorization") for r in fake.received] == [None] * len(fake.received)


def test_a_tag_picks_the_quantization(fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]) -> None:
    fake.add_repo("org/Model-GGUF", models)
    model, _ = pull(config(fake, tmp_path), store, "org/Model-GGUF:q8_0")
    assert str(model.name) == "org/model-gguf:q8_0"
    assert model.model_digest == sha(models["Model-Q8_0.gguf"])


def test_a_missing_quantization_lists_the_others(
    fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    fake.add_repo("org/Model-GGUF", models)
    with pytest.raises(HubNotFound) as raised:
        pull(config(fake, tmp_path), store, "hf.co/org/Model-GGUF:Q5_K_M")
    assert raised.value.message == "hf.co/org/Model-GGUF has no Q5_K_M quantization; it has Q4_K_M, Q8_0"


def test_an_interrupted_pull_resumes_with_a_range_request(fake: FakeHub, store: Store, tmp_path: Path) -> None:
    data = big_gguf(tmp_path)
    fake.add_repo("org/Model-GGUF", {"Model-Q4_K_M.gguf": data})
    # The connection drops mid-body and huggingface_hub's own retry fails too: this pull ends, its bytes kept.
    fake.drop("Model-Q4_K_M.gguf", after=len(data) - (1 << 20), fail_next=1)
    hub = config(fake, tmp_path)
    with pytest.raises(HubError, match="500"):
        pull(hub, store, "hf.co/org/Model-GGUF")
    assert not store.exists("hf.co/org/model-gguf")
    (partial,) = (store.root / "blobs").glob(".partial-*")
    assert partial.name == ".partial-" + sha(data).replace(":", "-")
    kept = partial.stat().st_size
    assert kept == constants.DOWNLOAD_CHUNK_SIZE  # the whole chunks that arrived
    before = len(fake.gets("Model-Q4_K_M.gguf"))

    model, statuses = pull(hub, store, "hf.co/org/Model-GGUF")
    (resumed,) = fake.gets("Model-Q4_K_M.gguf")[before:]
    assert resumed.headers["range"] == f"bytes={kept}-"
    assert resumed.sent == len(data) - kept
    assert store.blob_path(model.model_digest).read_bytes() == data
    assert next(s for s in statuses if s.digest is not None).completed == kept  # progress starts where it was
    assert leftovers(store) == []


def test_a_dropped_connection_is_resumed_within_the_pull(fake: FakeHub, store: Store, tmp_path: Path) -> None:
    data = big_gguf(tmp_path)
    fake.add_repo("org/Model-GGUF", {"Model-Q4_K_M.gguf": data})
    fake.drop("Model-Q4_K_M.gguf", after=len(data) - 1000)
    model, _ = pull(config(fake, tmp_path), store, "hf.co/org/Model-GGUF")
    first, second = fake.gets("Model-Q4_K_M.gguf")
    assert "range" not in first.headers
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    assert second.headers["range"] == f"bytes={chunk}-" and second.sent == len(data) - chunk
    assert store.blob_intact(model.model_digest)


def test_a_bad_checksum_deletes_the_download_and_says_so(
    fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    fake.add_repo("org/Model-GGUF", models)
    fake.corrupt("org/Model-GGUF", "Model-Q4_K_M.gguf")
    with pytest.raises(ChecksumMismatch) as raised:
        pull(config(fake, tmp_path), store, "hf.co/org/Model-GGUF")
    assert "does not match the sha256 the hub lists" in raised.value.message
    assert "the download was deleted" in raised.value.message
    assert raised.value.status == 502
    assert not store.exists("hf.co/org/model-gguf")
    assert not store.blob_path(sha(models["Model-Q4_K_M.gguf"])).exists()
    assert leftovers(store) == []


def test_a_missing_repository_is_not_found_with_a_hint(fake: FakeHub, store: Store, tmp_path: Path) -> None:
    with pytest.raises(HubNotFound) as anonymous:
        pull(config(fake, tmp_path), store, "hf.co/org/Missing-GGUF")
    assert anonymous.value.status == 404
    assert anonymous.value.message.endswith(
        "/org/Missing-GGUF was not found (if it is private, set HF_TOKEN to a token that can read it)"
    )
    with pytest.raises(HubNotFound, match="was not found, or the token in HF_TOKEN cannot read it"):
        pull(config(fake, tmp_path, TOKEN), store, "hf.co/org/Missing-GGUF")
    assert [r.server for r in fake.received] == ["hub", "hub"]


def test_a_gated_repository_asks_for_a_token(
    fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    fake.add_repo("org/Gated-GGUF", models, gated=True)
    with pytest.raises(HubAuthRequired) as raised:
        pull(config(fake, tmp_path), store, "hf.co/org/Gated-GGUF")
    assert raised.value.status == 403
    assert "is gated: accept its terms at" in raised.value.message
    assert "set HF_TOKEN" in raised.value.message
    assert leftovers(store) == [] and not store.exists("hf.co/org/gated-gguf")
    with pytest.raises(HubAuthRequired, match="refused the token in HF_TOKEN"):
        pull(config(fake, tmp_path, "hf_wrong"), store, "hf.co/org/Gated-GGUF")
    model, _ = pull(config(fake, tmp_path, TOKEN), store, "hf.co/org/Gated-GGUF")
    assert store.blob_intact(model.model_digest)


def test_a_split_model_is_pulled_whole(fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]) -> None:
    parts = split_files(tmp_path, "Q8_0")
    fake.add_repo("org/Big-GGUF", {"Model-Q4_K_M.gguf": models["Model-Q4_K_M.gguf"], **parts})
    model, statuses = pull(config(fake, tmp_path), store, "hf.co/org/Big-GGUF:Q8_0")
    assert [model.model_digest, *model.split_parts] == [sha(data) for data in parts.values()]
    assert len({s.digest for s in statuses if s.digest}) == 3
    info = read_gguf(model.model_path)
    assert info.metadata["split.count"] == 3
    assert len(info.tensors) == len(read_gguf(write_tiny_gguf(tmp_path / "whole.gguf", n_tokens=64)).tensors)
    store.verify(model)


def test_redirects_to_another_host_get_no_authorization(
    store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    with FakeHub(token=TOKEN, cdn=True) as fake:
        fake.add_repo("org/Private-GGUF", models, private=True)
        model, _ = pull(config(fake, tmp_path, TOKEN), store, "hf.co/org/Private-GGUF")
        hub = [r for r in fake.received if r.server == "hub"]
        cdn = [r for r in fake.received if r.server == "cdn"]
    assert store.blob_intact(model.model_digest)
    assert hub and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub)
    assert cdn and all("authorization" not in r.headers for r in cdn)
    assert [r.method for r in cdn] == ["GET"]


def test_a_file_in_the_hf_cache_is_not_downloaded_again(
    fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    fake.add_repo("org/Model-GGUF", models)
    hub = config(fake, tmp_path)
    hf_hub_download("org/Model-GGUF", "Model-Q4_K_M.gguf", cache_dir=hub.cache_dir, endpoint=fake.url, token=False)
    assert len(fake.gets("Model-Q4_K_M.gguf")) == 1
    model, _ = pull(hub, store, "hf.co/org/Model-GGUF")
    assert len(fake.gets("Model-Q4_K_M.gguf")) == 1
    assert store.blob_path(model.model_digest).read_bytes() == models["Model-Q4_K_M.gguf"]


def test_a_repository_without_gguf_points_to_its_gguf_sibling(
    fake: FakeHub, store: Store, tmp_path: Path, models: dict[str, bytes]
) -> None:
    fake.add_repo("org/Model", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    fake.add_repo("org/Model-GGUF", models)
    with pytest.raises(NoGGUF) as raised:
        pull(config(fake, tmp_path), store, "org/Model")
    message = raised.value.message
    assert message.startswith("hf.co/org/Model has no GGUF file; org/Model-GGUF has them: offload pull hf.co/org/Model")
    assert "vLLM" in message
    assert raised.value.status == 400


def test_an_unreachable_hub(store: Store, tmp_path: Path) -> None:
    hub = HubConfig(endpoint=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path / "hf-cache")
    with pytest.raises(HubUnreachable, match=r"cannot reach http://127\.0\.0\.1"):
        pull(hub, store, "hf.co/org/Model-GGUF")


def test_a_pulled_file_that_is_no_gguf_is_refused(fake: FakeHub, store: Store, tmp_path: Path) -> None:
    fake.add_repo("org/Fake-GGUF", {"Model-Q4_K_M.gguf": b"not a gguf at all" * 10})
    with pytest.raises(Exception, match="not a GGUF file") as raised:
        pull(config(fake, tmp_path), store, "hf.co/org/Fake-GGUF")
    assert raised.value.__class__.__name__ == "InvalidGGUF"
    assert not store.exists("hf.co/org/fake-gguf")


def test_a_malformed_sha256_from_the_hub_is_refused(fake: FakeHub, store: Store, tmp_path: Path) -> None:
    fake.add_repo("org/Odd-GGUF", {"Model-Q4_K_M.gguf": b"GGUF"}).files["Model-Q4_K_M.gguf"].listed_sha256 = "../x"
    with pytest.raises(HubError, match="with a malformed sha256"):
        pull(config(fake, tmp_path), store, "hf.co/org/Odd-GGUF")

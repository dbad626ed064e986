"""Discovery of models on disk: each source's layout, broken files, split files, names, shadowing, bounds, cache."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.models import discover as discover_module
from offload.models import found as found_module
from offload.models.discover import Discovery, DiscoveryRoots, roots_from
from offload.models.discover_walk import ScanLimits, name_part, quant_tag, repo_tags
from offload.models.found import SOURCE_HF, SOURCE_LMSTUDIO, SOURCE_OLLAMA, SOURCE_PATH, FileCheck, FileKey, FoundModel
from tests.fixtures.found_layouts import hf_file, ollama_model, split_gguf
from tests.fixtures.gguf_files import write_tiny_gguf


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    return write_tiny_gguf(tmp_path / "src" / "tiny.gguf")


@pytest.fixture
def other_gguf(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    return write_tiny_gguf(tmp_path / "src" / "other.gguf", n_tokens=40)


def listing(roots: DiscoveryRoots) -> list[FoundModel]:
    return list(Discovery(roots).scan().models)


def summary(models: list[FoundModel]) -> list[tuple[str, str, bool]]:
    return [(m.label, m.source, m.usable) for m in models]


# ---------------------------------------------------------------- each source's layout


def test_model_path_files_are_named_by_their_file_name(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    (folder / "deep" / "er").mkdir(parents=True)
    shutil.copyfile(gguf, folder / "Qwen2.5-7B-Instruct-Q4_K_M.gguf")
    shutil.copyfile(gguf, folder / "deep" / "er" / "My Model+v2.GGUF")
    shutil.copyfile(gguf, folder / "deep" / "mmproj-model-f16.gguf")  # a vision projector, not a model
    (folder / "notes.txt").write_text("not a model")
    models = listing(DiscoveryRoots(model_paths=(folder,)))
    assert summary(models) == [
        ("qwen2.5-7b-instruct-q4_k_m:latest", SOURCE_PATH, True),
        ("my-model-v2:latest", SOURCE_PATH, True),
    ]
    assert models[0].summary is not None and models[0].summary.architecture == "llama"
    assert models[0].size == gguf.stat().st_size
    assert models[0].content_digest is None  # nobody states it; the ID is a hash of path, size and mtime
    assert models[0].id_digest.startswith("sha256:")


def test_ollama_store_manifests_name_the_models(tmp_path: Path, gguf: Path, other_gguf: Path) -> None:
    root = tmp_path / "ollama"
    blob = ollama_model(
        root, "registry.ollama.ai/library/tiny/1b", gguf, parameters={"temperature": 0.1}, system="Be brief."
    )
    ollama_model(root, "hf.co/Org/Repo-GGUF/Q4_K_M", other_gguf)
    ollama_model(root, "registry.ollama.ai/someone/thing/latest", other_gguf)
    models = listing(DiscoveryRoots(ollama=(root,)))
    assert summary(models) == [
        ("hf.co/org/repo-gguf:q4_k_m", SOURCE_OLLAMA, True),
        ("tiny:1b", SOURCE_OLLAMA, True),
        ("someone/thing:latest", SOURCE_OLLAMA, True),
    ]
    tiny = models[1]
    assert tiny.path == blob
    assert tiny.content_digest == "sha256:" + blob.name.removeprefix("sha256-")
    assert tiny.parameters == {"temperature": 0.1} and tiny.system == "Be brief."
    assert tiny.id_digest != tiny.content_digest  # Ollama's ID is its manifest's digest


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b"not json", "unreadable Ollama manifest"),
        (b'{"schemaVersion": 2, "layers": []}', "no model layer"),
        (
            b'{"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:'
            + b"0" * 64
            + b'", "size": 1}]}',
            "sha256-" + "0" * 64 + ": missing",
        ),
    ],
)
def test_broken_ollama_manifests_are_listed_as_broken(tmp_path: Path, manifest: bytes, problem: str) -> None:
    path = tmp_path / "ollama" / "manifests" / "registry.ollama.ai" / "library" / "bad" / "latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    (model,) = listing(DiscoveryRoots(ollama=(tmp_path / "ollama",)))
    assert model.label == "bad:latest" and not model.usable
    assert model.problem is not None and problem in model.problem


def test_ollama_model_with_an_adapter_is_not_served_from_ollamas_store(tmp_path: Path, gguf: Path) -> None:
    adapter = {"mediaType": "application/vnd.ollama.image.adapter", "digest": "sha256:" + "1" * 64, "size": 1}
    ollama_model(tmp_path / "o", "registry.ollama.ai/library/lora/latest", gguf, extra_layers=(adapter,))
    (model,) = listing(DiscoveryRoots(ollama=(tmp_path / "o",)))
    assert model.problem is not None and "LoRA adapter" in model.problem


def test_hugging_face_cache_names_models_as_ollama_does(tmp_path: Path, gguf: Path, other_gguf: Path) -> None:
    hub = tmp_path / "hub"
    link = hf_file(hub, "Org/Tiny-GGUF", "Tiny-Q4_K_M.gguf", gguf)
    hf_file(hub, "Org/Tiny-GGUF", "Tiny-Q8_0.gguf", other_gguf)
    hf_file(hub, "Org/Tiny-GGUF", "mmproj-Tiny-F16.gguf", gguf)
    # Two files of one quantization: each named by its stem. An older revision's copy of a file is not listed again.
    hf_file(hub, "Org/Two-GGUF", "a-Q4_0.gguf", gguf)
    hf_file(hub, "Org/Two-GGUF", "b-Q4_0.gguf", other_gguf)
    hf_file(hub, "Org/Tiny-GGUF", "Tiny-Q4_K_M.gguf", gguf, revision="b" * 40, main=False)
    (hub / "datasets--org--data").mkdir()
    models = listing(DiscoveryRoots(huggingface=(hub,)))
    assert summary(models) == [
        ("hf.co/org/tiny-gguf:q4_k_m", SOURCE_HF, True),
        ("hf.co/org/tiny-gguf:q8_0", SOURCE_HF, True),
        ("hf.co/org/two-gguf:a-q4_0", SOURCE_HF, True),
        ("hf.co/org/two-gguf:b-q4_0", SOURCE_HF, True),
    ]
    assert models[0].path == link  # the snapshot link, which llama.cpp follows
    assert models[0].content_digest == "sha256:" + link.resolve().name


def test_lmstudio_models_are_named_by_publisher_and_repository(tmp_path: Path, gguf: Path) -> None:
    root = tmp_path / "lms"
    (root / "lmstudio-community" / "Tiny-GGUF").mkdir(parents=True)
    shutil.copyfile(gguf, root / "lmstudio-community" / "Tiny-GGUF" / "Tiny-IQ2_XXS.gguf")
    shutil.copyfile(gguf, root / "loose.gguf")
    models = listing(DiscoveryRoots(lmstudio=(root,)))
    assert summary(models) == [
        ("lmstudio/local/loose:latest", SOURCE_LMSTUDIO, True),
        ("lmstudio/lmstudio-community/tiny-gguf:iq2_xxs", SOURCE_LMSTUDIO, True),
    ]


# ---------------------------------------------------------------- broken files and split files


def _truncated(path: Path, gguf: Path) -> None:
    path.write_bytes(gguf.read_bytes()[:200])


def _wrong_magic(path: Path, gguf: Path) -> None:
    path.write_bytes(b"GGML" + gguf.read_bytes()[4:])


def _loop(path: Path, gguf: Path) -> None:
    path.symlink_to(path.name)


def _dangling(path: Path, gguf: Path) -> None:
    path.symlink_to(path.parent / "gone.bin")


def _fifo(path: Path, gguf: Path) -> None:
    os.mkfifo(path)


def _empty(path: Path, gguf: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_truncated, "past end of file"),
        (_wrong_magic, "not a GGUF file"),
        (_loop, "symbolic link loop"),
        (_dangling, "dangling symbolic link"),
        (_fifo, "a FIFO, not a GGUF file"),
        (_empty, "past end of file"),
    ],
)
def test_broken_files_are_listed_with_the_reason(
    tmp_path: Path, gguf: Path, make: Callable[[Path, Path], None], reason: str
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    make(folder / "broken.gguf", gguf)
    shutil.copyfile(gguf, folder / "good.gguf")
    models = listing(DiscoveryRoots(model_paths=(folder,)))  # a FIFO must not block this
    assert summary(models) == [("broken:latest", SOURCE_PATH, False), ("good:latest", SOURCE_PATH, True)]
    assert models[0].problem is not None and reason in models[0].problem
    assert str(folder) not in models[0].problem  # reasons reach clients: no folders in them


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_broken(tmp_path: Path, gguf: Path) -> None:
    path = tmp_path / "m" / "locked.gguf"
    path.parent.mkdir()
    shutil.copyfile(gguf, path)
    path.chmod(0)
    (model,) = listing(DiscoveryRoots(model_paths=(path.parent,)))
    assert model.problem == "locked.gguf: permission denied"


def test_a_split_gguf_is_one_model(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "half").mkdir(parents=True)
    first = write_tiny_gguf(folder / "Big-Model-Q4_K_M.gguf", split_max_tensors=4)
    parts = tuple(sorted(folder.glob("Big-Model-Q4_K_M-*-of-*.gguf")))
    write_tiny_gguf(folder / "half" / "Half.gguf", split_max_tensors=4).unlink()
    split_gguf(folder / "fake", "Fake", [parts[0], parts[0]])  # named as parts, not made by gguf-split
    big, fake, broken = listing(DiscoveryRoots(model_paths=(folder,)))
    assert (big.label, big.usable, big.path, big.parts) == ("big-model-q4_k_m:latest", True, first, parts)
    assert len(parts) == 3 and big.size == sum(p.stat().st_size for p in parts)
    assert big.summary is not None and big.summary.parameter_count == 3632  # every part's tensors, once
    assert (broken.label, broken.problem) == ("half:latest", "split GGUF: part(s) 1 of 3 missing")
    assert fake.problem is not None and "part 1 of 2" in fake.problem


# ---------------------------------------------------------------- names and shadowing


@pytest.mark.parametrize(
    ("stem", "quant"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M", "q4_k_m"),
        ("gemma-3-270m-it-UD-IQ2_XXS", "iq2_xxs"),
        ("model.Q8_0", "q8_0"),
        ("qwen2.5-7b-instruct-bf16", "bf16"),
        ("phi-4-f16", "f16"),
        ("gpt-oss-20b-MXFP4", "mxfp4"),
        ("no-quantization-here", None),
        ("Q4_K_M-then-Q8_0", "q8_0"),  # the last one
        ("xq4_0", None),
    ],
)
def test_quantization_from_a_file_name(stem: str, quant: str | None) -> None:
    assert quant_tag(stem) == quant


@pytest.mark.parametrize(
    ("text", "part"),
    [("Qwen2.5-7B", "qwen2.5-7b"), ("My Model+v2", "my-model-v2"), ("..hidden", "hidden"), ("a..b", "a.b"),
     ("-dash", "dash"), ("!!!", None), ("日本語", None)],
)
def test_name_part(text: str, part: str | None) -> None:
    assert name_part(text) == part


def test_repo_tags_fall_back_to_the_stem_when_a_quantization_repeats() -> None:
    assert repo_tags(["m-Q4_K_M", "m-Q8_0", "x-Q8_0", "plain"]) == ["q4_k_m", "m-q8_0", "x-q8_0", "plain"]


def test_first_source_wins_a_name_and_the_others_are_shadowed(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(gguf, folder / "tiny.gguf")
    (folder / "broken-first").mkdir()
    ollama_model(tmp_path / "ollama", "registry.ollama.ai/library/tiny/latest", gguf)
    models = listing(DiscoveryRoots(model_paths=(folder,), ollama=(tmp_path / "ollama",)))
    assert [(m.label, m.source, m.shadowed_by) for m in models] == [
        ("tiny:latest", SOURCE_PATH, None),
        ("tiny:latest", SOURCE_OLLAMA, SOURCE_PATH),
    ]


def test_a_broken_entry_claims_no_name(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tiny.gguf").write_bytes(b"GGUF")
    ollama_model(tmp_path / "ollama", "registry.ollama.ai/library/tiny/latest", gguf)
    scan = Discovery(DiscoveryRoots(model_paths=(folder,), ollama=(tmp_path / "ollama",))).scan()
    served = scan.find(next(m.name for m in scan.models if m.name is not None))
    assert served is not None and served.source == SOURCE_OLLAMA and served.usable


# ---------------------------------------------------------------- bounds and cache


def test_scan_stops_at_its_file_limit_and_says_so(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for index in range(5):
        shutil.copyfile(gguf, folder / f"m{index}.gguf")
    scan = Discovery(DiscoveryRoots(model_paths=(folder,)), ScanLimits(max_files=3)).scan()
    assert [m.label for m in scan.models] == ["m0:latest", "m1:latest", "m2:latest"]
    assert scan.stopped == "more than 3 GGUF files"


def test_scan_stops_at_its_time_limit_and_resumes_from_the_cache(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for index in range(3):
        shutil.copyfile(gguf, folder / f"m{index}.gguf")
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock is a second
        return now[0]

    discovery = Discovery(DiscoveryRoots(model_paths=(folder,)), ScanLimits(seconds=9.0), clock=clock, ttl=0)
    scans = [discovery.scan() for _ in range(4)]
    assert scans[0].stopped is not None
    assert any(m.problem and m.problem.startswith("not checked yet") for m in scans[0].models) or len(
        scans[0].models
    ) < 3
    assert [m.usable for m in scans[-1].models] == [True, True, True]  # checks made so far are kept


def test_depth_and_directory_loops_are_bounded(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    deep = folder.joinpath(*[f"d{i}" for i in range(12)])
    deep.mkdir(parents=True)
    shutil.copyfile(gguf, deep / "too-deep.gguf")
    shutil.copyfile(gguf, folder / "d0" / "shallow.gguf")
    (folder / "d0" / "loop").symlink_to(folder)  # a loop back to the root
    (folder / "node_modules").mkdir()
    shutil.copyfile(gguf, folder / "node_modules" / "skipped.gguf")
    models = listing(DiscoveryRoots(model_paths=(folder,)))
    assert [m.label for m in models] == ["shallow:latest"]


def test_checks_are_cached_by_file_identity(tmp_path: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(gguf, folder / "a.gguf")
    calls: list[Path] = []
    real = found_module.check_files

    def counting(parts: tuple[Path, ...], key: FileKey) -> FileCheck:
        calls.append(parts[0])
        return real(parts, key)

    monkeypatch.setattr(discover_module, "check_files", counting)
    discovery = Discovery(DiscoveryRoots(model_paths=(folder,)), ttl=0)
    discovery.scan()
    discovery.scan()
    assert len(calls) == 1
    (folder / "a.gguf").write_bytes(b"GGUF")  # changed: checked again, now broken
    assert not discovery.scan().models[0].usable
    assert len(calls) == 2


def test_a_recent_scan_is_reused(tmp_path: Path, gguf: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    discovery = Discovery(DiscoveryRoots(model_paths=(folder,)), ttl=60)
    assert discovery.scan().models == ()
    shutil.copyfile(gguf, folder / "new.gguf")
    assert discovery.scan().models == ()
    assert [m.label for m in discovery.scan(fresh=True).models] == ["new:latest"]


def test_missing_roots_find_nothing(tmp_path: Path) -> None:
    roots = DiscoveryRoots(
        model_paths=(tmp_path / "a",), ollama=(tmp_path / "b",), huggingface=(tmp_path / "c",), lmstudio=(tmp_path,)
    )
    assert listing(roots) == []


# ---------------------------------------------------------------- default roots


@pytest.mark.parametrize(
    ("environ", "ollama", "hf"),
    [
        ({}, ("/h/.ollama/models", "/usr/share/ollama/.ollama/models"), "/h/.cache/huggingface/hub"),
        ({"OLLAMA_MODELS": "/o", "HF_HUB_CACHE": "/hub"}, ("/o",), "/hub"),
        ({"HF_HOME": "/hf"}, None, "/hf/hub"),
        ({"XDG_CACHE_HOME": "/x"}, None, "/x/huggingface/hub"),
        ({"HUGGINGFACE_HUB_CACHE": "/old"}, None, "/old"),
    ],
)
def test_default_roots_follow_the_other_tools_variables(
    environ: dict[str, str], ollama: tuple[str, ...] | None, hf: str
) -> None:
    roots = roots_from((Path("/m"),), ("ollama", "huggingface", "lmstudio"), environ, Path("/h"))
    assert roots.model_paths == (Path("/m"),)
    if ollama is not None:
        assert roots.ollama == tuple(Path(p) for p in ollama)
    assert roots.huggingface == (Path(hf),)
    assert roots.lmstudio == (Path("/h/.lmstudio/models"), Path("/h/.cache/lm-studio/models"))


def test_explicit_roots_and_disabled_sources() -> None:
    roots = roots_from((), ("ollama",), {"OLLAMA_MODELS": "/o"}, Path("/h"), ollama=Path("/mine"))
    assert roots == DiscoveryRoots(ollama=(Path("/mine"),))
    assert not Discovery(roots_from((), (), {}, Path("/h"))).enabled

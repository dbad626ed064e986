"""hf_select: candidates from a repository's file list, and the rule that picks one."""

from __future__ import annotations

import pytest

from offload.errors import HubNotFound
from offload.models.hf_select import Candidate, HubFile, candidates, choose

GIB = 1 << 30


def files(*spec: tuple[str, int]) -> list[HubFile]:
    return [HubFile(path, size, f"{i:064x}") for i, (path, size) in enumerate(spec)]


def never() -> int:
    raise AssertionError("memory was not needed")


def test_candidates_group_splits_and_skip_what_is_no_model() -> None:
    found = candidates(
        files(
            ("README.md", 1),
            ("Model-Q4_K_M.gguf", 4 * GIB),
            ("Model-IQ4_XS.gguf", 3 * GIB),
            ("mmproj-Model-F16.gguf", 1 * GIB),
            ("Model.imatrix.gguf", 1),
            ("Q8_0/Model-Q8_0-00002-of-00002.gguf", 3 * GIB),
            ("Q8_0/Model-Q8_0-00001-of-00002.gguf", 5 * GIB),
            ("BF16/Model-BF16-00001-of-00003.gguf", 5 * GIB),  # part 2 missing: no candidate
            ("BF16/Model-BF16-00003-of-00003.gguf", 5 * GIB),
            ("model.safetensors", 16 * GIB),
        )
    )
    assert [(c.label, [f.path for f in c.files], c.size) for c in found] == [
        ("IQ4_XS", ["Model-IQ4_XS.gguf"], 3 * GIB),
        ("Q4_K_M", ["Model-Q4_K_M.gguf"], 4 * GIB),
        ("Q8_0", ["Q8_0/Model-Q8_0-00001-of-00002.gguf", "Q8_0/Model-Q8_0-00002-of-00002.gguf"], 8 * GIB),
    ]


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Qwen2.5-7B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-7b-instruct-q5_k_s.gguf", "Q5_K_S"),
        ("gemma-3-1b-it-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("model.IQ2_XXS.gguf", "IQ2_XXS"),
        ("model-bf16.gguf", "BF16"),
        ("model-f16.gguf", "F16"),
        ("Q8-chat-Q6_K.gguf", "Q6_K"),  # the last label in the name
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("ggml-model.gguf", "ggml-model"),  # no label: the stem
    ],
)
def test_labels(name: str, label: str) -> None:
    (found,) = candidates(files((name, 1)))
    assert found.label == label


REPO = candidates(
    files(("m-Q2_K.gguf", 2 * GIB), ("m-Q4_K_M.gguf", 4 * GIB), ("m-Q8_0.gguf", 8 * GIB), ("m-F16.gguf", 16 * GIB))
)
NO_DEFAULT = [c for c in REPO if c.label != "Q4_K_M"]


@pytest.mark.parametrize(
    ("found", "quant", "memory", "chosen"),
    [
        (REPO, "Q8_0", None, "Q8_0"),  # a tag wins
        (REPO, "q8_0", None, "Q8_0"),  # case-insensitive
        (REPO, None, None, "Q4_K_M"),  # the default, memory not asked
        (NO_DEFAULT, None, 32 * GIB, "F16"),  # 16 GiB fits in 80% of 32 GiB
        (NO_DEFAULT, None, 16 * GIB, "Q8_0"),  # 16 GiB does not fit in 12.8; 8 does
        (NO_DEFAULT, None, 4 * GIB, "Q2_K"),  # only Q2_K fits in 3.2 GiB
        (NO_DEFAULT, None, 1 * GIB, "Q2_K"),  # nothing fits: the smallest
        ([c for c in REPO if c.label == "F16"], None, None, "F16"),  # one candidate: memory not asked
    ],
)
def test_choose(found: list[Candidate], quant: str | None, memory: int | None, chosen: str) -> None:
    assert choose(found, quant, never if memory is None else lambda: memory).label == chosen


def test_a_tag_can_name_a_path_part() -> None:
    found = candidates(files(("fp8/model-00001-of-00001.gguf", 1), ("int4/model.gguf", 1)))
    assert choose(found, "INT4", never).path == "int4/model.gguf"


def test_missing_quant_lists_what_there_is() -> None:
    with pytest.raises(HubNotFound) as raised:
        choose(REPO, "Q5_K_M", never, where="hf.co/org/repo")
    assert raised.value.message == "hf.co/org/repo has no Q5_K_M quantization; it has F16, Q2_K, Q4_K_M, Q8_0"
    assert raised.value.status == 404

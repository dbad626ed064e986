from __future__ import annotations

import math
import os
from pathlib import Path

import gguf as gguf_pkg
import pytest

from offload.errors import InvalidGGUF
from offload.models.gguf import (
    FILE_TYPES,
    GGML_TYPES,
    GGUFLimits,
    describe,
    format_parameter_size,
    read_gguf,
)
from tests.fixtures.gguf_files import write_tiny_gguf
from tests.fixtures.gguf_raw import build, kv_u32, tensor


def write(tmp_path: Path, content: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- valid files ---------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", chat_template="{{ messages }}")


def test_reads_tiny_file(tiny: Path) -> None:
    g = read_gguf(tiny)
    assert g.version == 3
    assert g.architecture == "llama"
    assert g.file_type == "F32"
    assert g.context_length == 256
    assert g.block_count == 1
    assert g.chat_template == "{{ messages }}"
    assert g.license is None
    assert (g.bos_token, g.eos_token) == ("<s>", "</s>")
    assert g.token(0) == "<unk>"
    assert g.token(32) is None
    assert g.token(-1) is None
    assert g.file_size == tiny.stat().st_size
    assert g.data_offset % g.alignment == 0
    assert g.parameter_count == sum(math.prod(t.shape) for t in g.tensors)
    with pytest.raises(TypeError):
        g.metadata["general.architecture"] = "x"  # type: ignore[index]


def test_tensor_table_matches_the_gguf_package(tiny: Path) -> None:
    ours = read_gguf(tiny)
    theirs = gguf_pkg.GGUFReader(tiny)
    assert ours.data_offset == theirs.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.shape == tuple(int(d) for d in ref.shape)
        assert mine.offset == int(ref.data_offset) - theirs.data_offset
        assert mine.n_bytes == int(ref.n_bytes)
        assert mine.type_name == "F32"


def test_version_2_is_accepted(tmp_path: Path) -> None:
    g = read_gguf(write(tmp_path, build([kv_u32("llama.context_length", 8)], version=2)))
    assert g.version == 2
    assert g.context_length == 8
    assert g.tensors == ()


def test_quantized_tensor_sizes(tmp_path: Path) -> None:
    # Q4_K: 256 elements per 144-byte block; a 512x2 tensor is 4 blocks.
    content = build([], [tensor("w", (512, 2), 12, 0)], b"\0" * 576)
    (t,) = read_gguf(write(tmp_path, content)).tensors
    assert (t.n_bytes, t.type_name, t.n_elements) == (576, "Q4_K", 1024)


def test_ggml_type_table_matches_the_gguf_package() -> None:
    for value, kind in GGML_TYPES.items():
        reference = gguf_pkg.GGMLQuantizationType(value)
        assert reference.name == kind.name
        assert gguf_pkg.GGML_QUANT_SIZES[reference] == (kind.block_size, kind.type_size)


def test_file_type_table_matches_the_gguf_package() -> None:
    for ftype in gguf_pkg.LlamaFileType:
        if ftype.name != "GUESSED":
            assert FILE_TYPES[ftype.value] == ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")


@pytest.mark.parametrize(
    ("ftype", "name"),
    [(0, "F32"), (1, "F16"), (2, "Q4_0"), (7, "Q8_0"), (15, "Q4_K_M"), (14, "Q4_K_S"), (18, "Q6_K"),
     (32, "BF16"), (1024 | 15, "Q4_K_M")],
)
def test_file_type_names(tmp_path: Path, ftype: int, name: str) -> None:
    assert read_gguf(write(tmp_path, build([kv_u32("general.file_type", ftype)]))).file_type == name


def test_file_type_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    tensors = [tensor("a", (32,), 8, 0), tensor("b", (4,), 0, 64)]
    content = build([kv_u32("general.file_type", 999)], tensors, b"\0" * 80)
    assert read_gguf(write(tmp_path, content)).file_type == "Q8_0"
    assert read_gguf(write(tmp_path, build([]))).file_type == "unknown"


def test_describe(tmp_path: Path) -> None:
    extra = {"x.short": [1, 2], "x.nan": math.nan}
    path = write_tiny_gguf(tmp_path / "t.gguf", n_tokens=100, extra_metadata=extra)
    info = describe(read_gguf(path))
    assert info["tokenizer.ggml.tokens"] == []
    assert info["x.short"] == [1, 2]
    assert info["x.nan"] is None
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] == read_gguf(path).parameter_count


@pytest.mark.parametrize(
    ("n", "text"),
    [(268_098_176, "268.10M"), (8_030_261_248, "8.0B"), (1_000_000, "1M"), (7_000_000_000, "7B"),
     (999, "999"), (22_500, "22K"), (1_500_000_000_000, "1.5T"), (137_000_000, "137M")],
)
def test_format_parameter_size(n: int, text: str) -> None:
    assert format_parameter_size(n) == text


# --- limits (the hostile files are in tests/security/) ---------------------------------------------


def test_limits_are_configurable(tiny: Path) -> None:
    with pytest.raises(InvalidGGUF, match="metadata is larger"):
        read_gguf(tiny, limits=GGUFLimits(max_metadata_bytes=200))
    with pytest.raises(InvalidGGUF, match="exceeds the limit"):
        read_gguf(tiny, limits=GGUFLimits(max_string_bytes=5))
    with pytest.raises(InvalidGGUF, match="tensors exceed"):
        read_gguf(tiny, limits=GGUFLimits(max_tensors=3))
    with pytest.raises(InvalidGGUF, match="elements exceeds"):
        read_gguf(tiny, limits=GGUFLimits(max_array_length=8))
    with pytest.raises(InvalidGGUF, match=r"'tokenizer\.ggml\.tokens': the values need more than 4096 bytes"):
        read_gguf(tiny, limits=GGUFLimits(max_metadata_memory=4096))


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidGGUF, match="cannot open"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(InvalidGGUF, match="not a regular file"):
        read_gguf(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidGGUF, match="not a regular file"):
        read_gguf(fifo)


# --- split models (gguf-split's <prefix>-00001-of-0000N.gguf) -------------------------------------


def test_a_split_model_is_read_whole_from_its_first_part(tmp_path: Path) -> None:
    whole = read_gguf(write_tiny_gguf(tmp_path / "whole.gguf"))
    first = write_tiny_gguf(tmp_path / "m.gguf", split_max_tensors=4)
    assert first.name == "m-00001-of-00003.gguf"
    split = read_gguf(first)
    assert [t.name for t in split.tensors] == [t.name for t in whole.tensors]
    assert split.parameter_count == whole.parameter_count
    assert split.metadata["split.count"] == 3
    assert split.file_size == sum(p.stat().st_size for p in tmp_path.glob("m-*.gguf"))


def test_a_split_part_under_another_name_is_read_alone(tmp_path: Path) -> None:
    first = write_tiny_gguf(tmp_path / "m.gguf", split_max_tensors=4)
    renamed = first.rename(tmp_path / "blob")
    assert len(read_gguf(renamed).tensors) == 4


def test_a_missing_part_is_invalid(tmp_path: Path) -> None:
    first = write_tiny_gguf(tmp_path / "m.gguf", split_max_tensors=4)
    (tmp_path / "m-00002-of-00003.gguf").unlink()
    with pytest.raises(InvalidGGUF, match=r"m-00002-of-00003\.gguf"):
        read_gguf(first)


def test_parts_out_of_order_are_invalid(tmp_path: Path) -> None:
    first = write_tiny_gguf(tmp_path / "m.gguf", split_max_tensors=4)
    second, third = tmp_path / "m-00002-of-00003.gguf", tmp_path / "m-00003-of-00003.gguf"
    second.rename(tmp_path / "swap")
    third.rename(second)
    (tmp_path / "swap").rename(third)
    with pytest.raises(InvalidGGUF, match="not part 2 of a 3-part split model"):
        read_gguf(first)

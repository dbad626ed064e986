"""Write the GGUF fuzz corpus: tests/security/corpus/{valid,bad}-*.gguf, the seeds the fuzz test mutates.

    .venv/bin/python -m tools.gguf_corpus

Valid seeds are small models written by the `gguf` package's writer and by hand; bad seeds are the malformed
files of tests/security/cases.py, one per case. Files are replaced whole and stale ones removed, so the
corpus is exactly what this writes; commit the result. The suite checks that each valid seed reads and each
bad seed is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.fixtures.gguf_raw import STR, build, gstr, kv_array, kv_str, kv_u32, tensor
from tests.security.cases import CASES, seed_model

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "security" / "corpus"


def valid_seeds() -> dict[str, bytes]:
    return {
        "valid-seed-model": seed_model(),
        "valid-v2-metadata-only": build(
            [kv_u32("llama.context_length", 8), kv_str("general.name", "v2"), kv_array("x.s", STR, 1, gstr("é"))],
            version=2,
        ),
        # Q4_K: 256 elements per 144-byte block, so 512 x 2 is 576 bytes.
        "valid-q4k-tensor": build(
            [kv_u32("general.alignment", 64)], [tensor("w", (512, 2), 12)], b"\0" * 576, alignment=64
        ),
        "valid-no-tensors": build([kv_str("tokenizer.chat_template", "{{ messages }}")]),
    }


def bad_seeds() -> dict[str, bytes]:
    return {f"bad-{case.id}": case.make() for case in CASES}


def main() -> int:
    CORPUS.mkdir(parents=True, exist_ok=True)
    seeds = {**valid_seeds(), **bad_seeds()}
    for stale in CORPUS.glob("*.gguf"):
        if stale.stem not in seeds:
            stale.unlink()
    for name, content in seeds.items():
        (CORPUS / f"{name}.gguf").write_bytes(content)
    total = sum(len(content) for content in seeds.values())
    print(f"wrote {len(seeds)} seeds ({total} bytes) to {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

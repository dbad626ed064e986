"""physical_cores on fake /proc/cpuinfo files, capped by the CPUs this process may run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from offload.hardware.cpu import physical_cores


def cpuinfo(blocks: list[dict[str, str]], *, trailing_blank: bool = True) -> str:
    """A /proc/cpuinfo-like text: one block per logical CPU, blank line between blocks."""
    text = "\n\n".join("\n".join(f"{key}\t: {value}" for key, value in block.items()) for block in blocks)
    return text + ("\n\n" if trailing_blank else "\n")


def x86(sockets: int, cores: int, threads: int) -> list[dict[str, str]]:
    blocks = []
    n = 0
    for _thread in range(threads):
        for socket in range(sockets):
            for core in range(cores):
                blocks.append(
                    {
                        "processor": str(n),
                        "model name": "Fake CPU @ 3.0GHz",
                        "physical id": str(socket),
                        "siblings": str(cores * threads),
                        "core id": str(core),
                        "cpu cores": str(cores),
                        "flags": "fpu sse2 avx2",
                    }
                )
                n += 1
    return blocks


def arm(n: int) -> list[dict[str, str]]:
    return [{"processor": str(i), "BogoMIPS": "50.00", "Features": "fp asimd", "CPU part": "0xd0c"} for i in range(n)]


@pytest.mark.parametrize(
    ("text", "affinity", "expected"),
    [
        pytest.param(cpuinfo(x86(2, 2, 2)), 8, 4, id="2-sockets-2-cores-hyperthreaded"),
        pytest.param(cpuinfo(x86(2, 2, 2)), 2, 2, id="hyperthreaded-capped-by-affinity"),
        pytest.param(cpuinfo(x86(1, 4, 1)), 4, 4, id="no-smt"),
        pytest.param(cpuinfo(x86(1, 8, 2), trailing_blank=False), 16, 8, id="no-trailing-blank-line"),
        pytest.param(cpuinfo(x86(2, 1, 1)), 2, 2, id="same-core-id-on-two-sockets"),
        pytest.param(cpuinfo(arm(6)), 6, 6, id="no-core-ids-uses-affinity"),
        pytest.param(cpuinfo(arm(6)), 3, 3, id="no-core-ids-capped"),
        pytest.param("", 5, 5, id="empty-file"),
        pytest.param(cpuinfo(x86(1, 4, 2)), 1, 1, id="one-usable-cpu"),
    ],
)
def test_physical_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, affinity: int, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert physical_cores(path) == expected


@pytest.mark.parametrize("affinity", [1, 3, 12])
def test_unreadable_cpuinfo_falls_back_to_usable_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, affinity: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    assert physical_cores(tmp_path / "does-not-exist") == affinity
    assert physical_cores(tmp_path) == affinity  # a directory: read_text raises IsADirectoryError


def test_never_below_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo(x86(1, 4, 2)))
    assert physical_cores(path) == 1
    assert physical_cores(tmp_path / "missing") == 1


def test_real_machine_is_sane() -> None:
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)

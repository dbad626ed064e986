"""`offload ps` says loudly, under the table, when GPU layers did not land or a backend fell through."""

from __future__ import annotations

from offload.cli_format import now_utc, ps_table


def test_ps_prints_placement_warnings_and_fallbacks() -> None:
    model = {
        "name": "m:latest", "size": 10, "size_vram": 0,
        "offload": {"backend": "cpu", "layers_on_gpu": 0, "layers_total": 5, "verified": True,
                    "warning": "999 GPU layers were asked for, but every layer runs on the CPU",
                    "fallbacks": ["cuda: runner crashed while loading its backend (killed by signal SIGBUS)"]},
    }
    lines = ps_table([model], now_utc()).splitlines()
    assert lines[1].split()[-3:] == ["cpu", "0/5", "-"]  # no slot count reported: an older server
    assert lines[2] == "WARNING m:latest: 999 GPU layers were asked for, but every layer runs on the CPU"
    assert lines[3] == "fallback m:latest: cuda: runner crashed while loading its backend (killed by signal SIGBUS)"


def test_ps_without_notes_is_just_the_table() -> None:
    model = {"name": "m:latest", "size": 10, "size_vram": 10,
             "offload": {"backend": "cuda", "layers_on_gpu": 5, "layers_total": 5, "verified": True}}
    assert len(ps_table([model], now_utc()).splitlines()) == 2

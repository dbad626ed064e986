"""Docs generated from code stay in step with it."""

from __future__ import annotations

from tools import config_doc


def test_config_doc_is_current() -> None:
    assert config_doc.main(["--check"]) == 0, "docs/CONFIG.md is stale: run python tools/config_doc.py"

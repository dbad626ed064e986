"""The HTTP edge: Ollama's API under /api/*, OpenAI's under /v1/*, both converted to one internal request
type.

`create_app(settings, store, scheduler)` is the only entry point the rest of offload uses.
"""

from __future__ import annotations

from offload.api.app import create_app

__all__ = ["create_app"]

"""Turning token bytes into text that is safe to stream: whole UTF-8 characters only, and never a piece of a
stop sequence that might still complete. Pure; unit-tested without a model."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes, get text to emit. `stopped` turns true once a stop sequence appeared; the text emitted
    never includes the stop sequence or anything after it."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        text = self._decoder.decode(data)
        if not self._stops:
            return text
        return self._scan(self._held + text)

    def finish(self) -> str:
        """Whatever is still held back, at the end of generation (no stop sequence completed)."""
        if self.stopped:
            return ""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return rest

    def _scan(self, text: str) -> str:
        # Earliest complete stop sequence wins.
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        # Hold back the longest tail that is the start of some stop sequence.
        keep = 0
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                keep = size
                break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

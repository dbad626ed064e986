"""The conversation behind `offload run`: one-shot or interactive chat through POST /api/chat.

`ChatSession.ask` sends the history plus one user turn and writes the reply as it streams; a turn enters
the history only once it completed, so a failed or cancelled turn leaves no half answer behind.
`chat_repl` takes its input and output as functions, so tests drive it without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from offload.client import ApiClient, NotRunning, ServerError

REPL_HELP = """Available commands:
  /clear    Forget the conversation so far
  /bye      Exit (Ctrl-D works too)
  /?        This help
Begin and end a message with \"\"\" to write several lines.
"""


@dataclass
class ChatSession:
    """A conversation with one model; `history` holds completed user/assistant turns."""

    api: ApiClient
    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # top-level request fields: format, keep_alive
    history: list[dict[str, str]] = field(default_factory=list)

    def ask(self, text: str, write: Callable[[str], None]) -> dict[str, Any]:
        """Send one user turn, `write` the reply as it arrives, return the final (done) object.

        Raises ClientError (ServerError for `{"error": ...}`, also mid-stream); the history is then unchanged.
        """
        user = {"role": "user", "content": text}
        system = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {"model": self.model, "messages": [*system, *self.history, user]}
        body["stream"] = self.stream
        if self.options:
            body["options"] = self.options
        body.update(self.extra)
        parts: list[str] = []
        final: dict[str, Any] = {}
        if self.stream:
            # closing(): a Ctrl-C in `write` must end the HTTP stream, which tells the server to stop.
            with closing(self.api.stream("/api/chat", body)) as lines:
                for obj in lines:
                    piece = message_content(obj)
                    if piece:
                        parts.append(piece)
                        write(piece)
                    if obj.get("done"):
                        final = obj
        else:
            final = self.api.request("POST", "/api/chat", body, wait=True) or {}
            parts.append(message_content(final))
            write(parts[-1])
        self.history += [user, {"role": "assistant", "content": "".join(parts)}]
        return final


def message_content(obj: dict[str, Any]) -> str:
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def format_stats(final: dict[str, Any]) -> str:
    """`--verbose`: durations and token rates from the final chunk (nanosecond durations)."""

    def seconds(key: str) -> float:
        value = final.get(key)
        return value / 1e9 if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

    lines = [
        f"{'total duration:':<22}{seconds('total_duration'):.3f}s",
        f"{'load duration:':<22}{seconds('load_duration'):.3f}s",
    ]
    for label, count_key, time_key in (
        ("prompt eval", "prompt_eval_count", "prompt_eval_duration"),
        ("eval", "eval_count", "eval_duration"),
    ):
        count = final.get(count_key)
        count = count if isinstance(count, int) else 0
        spent = seconds(time_key)
        lines.append(f"{label + ' count:':<22}{count} token(s)")
        lines.append(f"{label + ' duration:':<22}{spent:.3f}s")
        if spent > 0:
            lines.append(f"{label + ' rate:':<22}{count / spent:.2f} tokens/s")
    return "\n".join(lines)


def chat_repl(
    session: ChatSession,
    read: Callable[[str], str],
    write: Callable[[str], None],
    error: Callable[[str], None],
) -> None:
    """The interactive loop: `read(prompt)` returns a line or raises EOFError (Ctrl-D) / KeyboardInterrupt.

    Server errors end the turn (reported through `error`), not the session; Ctrl-C cancels a reply in
    progress; EOF or /bye ends the loop. NotRunning (the server went away) propagates to the caller.
    """
    while True:
        try:
            line = read(">>> ")
            if line.lstrip().startswith('"""'):
                line = _read_multiline(line.lstrip()[3:], read)
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        words = line.split(maxsplit=1)
        if not words:
            continue
        command = words[0]
        if command in {"/bye", "/exit"}:
            return
        if command == "/clear":
            session.history.clear()
            write("Cleared session context\n")
            continue
        if command in {"/?", "/help"}:
            write(REPL_HELP)
            continue
        if command.startswith("/"):
            write(f"Unknown command '{command}'. Type /? for help\n")
            continue
        try:
            session.ask(line, write)
        except KeyboardInterrupt:
            write("\n")
            continue
        except NotRunning:
            raise
        except ServerError as exc:
            write("\n")
            error(exc.message)
            continue
        write("\n\n")


def _read_multiline(first: str, read: Callable[[str], str]) -> str:
    """The text after an opening \"\"\", up to and without the closing \"\"\" (which may end any line)."""
    lines = []
    current = first
    while not current.rstrip().endswith('"""'):
        lines.append(current)
        current = read("... ")
    lines.append(current.rstrip()[:-3])
    return "\n".join(lines).strip("\n")

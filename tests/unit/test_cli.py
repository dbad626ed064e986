"""The CLI against a scripted Ollama-shaped server (tests/fakes/ollama_http.py) on loopback."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from offload import cli_format
from offload.cli import app
from offload.cli_chat import ChatSession, chat_repl
from offload.client import ApiClient
from offload.config import Settings
from tests.fakes.ollama_http import FakeOllama

runner = CliRunner()
DIGEST = "sha256:" + "ab" * 32
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No user config.toml or OFFLOAD_* variable may leak into these tests.
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OFFLOAD_HOST", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


def invoke(fake: FakeOllama | None, *args: str, stdin: str | None = None) -> Result:
    extra = ["--host", fake.url] if fake is not None else []
    return runner.invoke(app, [*args, *extra], input=stdin)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- help and start-up cost

COMMANDS = ["serve", "run", "list", "ps", "show", "stop", "rm", "cp", "create", "pull", "version"]
HEAVY = ["fastapi", "uvicorn", "httpx", "llama_cpp", "offload.server", "offload.models.store"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.output


def test_import_pulls_in_nothing_heavy() -> None:
    code = f"import offload.cli, sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_is_quick() -> None:
    best = float("inf")
    for _ in range(3):  # best of three: the first run may compile bytecode
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "offload", "--help"], cwd=ROOT, capture_output=True, check=True)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


def test_serve_help_comes_from_settings() -> None:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    params = {p.name: p for p in command.commands["serve"].params}
    for name in ("host", "home", "keep_alive", "num_ctx", "num_threads", "log_level"):
        assert getattr(params[name], "help", None) == Settings.model_fields[name].description


# ---------------------------------------------------------------- serve


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Stand in for the lead's offload.server: record what serve() was given."""
    calls: list[Settings] = []
    module = types.ModuleType("offload.server")
    module.serve = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "offload.server", module)
    return calls


def test_serve_takes_model_paths(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_MODELS_PATH", "/from-env")
    assert runner.invoke(app, ["serve"]).exit_code == 0
    result = runner.invoke(app, ["serve", "--model-path", "/a", "--model-path", "/b"])  # replaces the environment's
    assert result.exit_code == 0, result.output
    assert [s.models_path for s in served] == [(Path("/from-env"),), (Path("/a"), Path("/b"))]


@pytest.mark.parametrize(
    ("args", "env_host", "bind"),
    [
        ([], None, ("127.0.0.1", 11434)),
        (["--host", "0.0.0.0:8080"], None, ("0.0.0.0", 8080)),
        (["--port", "7000"], "10.0.0.1:9999", ("10.0.0.1", 7000)),
        (["--host", "[::1]", "--port", "7001"], None, ("::1", 7001)),
    ],
)
def test_serve_binds_where_told(
    served: list[Settings],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env_host: str | None,
    bind: tuple[str, int],
) -> None:
    if env_host is not None:
        monkeypatch.setenv("OFFLOAD_HOST", env_host)
    result = runner.invoke(app, ["serve", *args, "--num-ctx", "2048", "--log-level", "debug"])
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert settings.bind == bind
    assert (settings.num_ctx, settings.log_level) == (2048, "debug")


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        (["--num-ctx", "10"], {}, 2),  # below the Settings bound: typer rejects it
        (["--port", "0"], {}, 2),
        (["--log-level", "loud"], {}, 2),  # the Settings validator rejects a CLI value: still a usage error
        ([], {"OFFLOAD_NUM_CTX": "10"}, 1),  # a bad environment is an error, not a usage error
    ],
)
def test_serve_rejects_bad_settings(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], code: int
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code == code
    assert served == []


# ---------------------------------------------------------------- list, ps, show


def test_list_table(fake: FakeOllama) -> None:
    fake.on(
        "GET",
        "/api/tags",
        json={
            "models": [
                {
                    "name": "gemma3:270m",
                    "digest": "e" * 64,
                    "size": 253_000_000,
                    "modified_at": iso(-timedelta(minutes=2, seconds=5)),
                },
                {
                    "name": "mine:latest",
                    "digest": "f" * 64,
                    "size": 1_610_000_000,
                    "modified_at": iso(-timedelta(days=3)),
                    "offload": {"source": "ollama", "path": "/o/blobs/sha256-f"},
                },
            ],
            "offload": {
                "unusable": [
                    {"name": "bad:latest", "source": "path", "reason": "bad.gguf: a FIFO", "path": "/m/bad.gguf"}
                ],
                "scan_stopped": None,
            },
        },
    )
    result = invoke(fake, "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED", "SOURCE"]
    assert lines[1].split() == ["gemma3:270m", "e" * 12, "253", "MB", "2", "minutes", "ago", "store"]
    assert lines[2].split() == ["mine:latest", "f" * 12, "1.6", "GB", "3", "days", "ago", "ollama"]
    assert lines[3] == ""
    assert lines[4].split() == ["NOT", "USABLE", "SOURCE", "WHY", "PATH"]
    assert lines[5].split() == ["bad:latest", "path", "bad.gguf:", "a", "FIFO", "/m/bad.gguf"]


def test_ps_table_shows_processor_and_placement(fake: FakeOllama) -> None:
    fake.on(
        "GET",
        "/api/ps",
        json={
            "models": [
                {
                    "name": "gemma3:270m",
                    "digest": "a" * 64,
                    "size": 1000,
                    "size_vram": 520,
                    "context_length": 4096,
                    "expires_at": iso(timedelta(minutes=4, seconds=30)),
                    "offload": {
                        "backend": "cuda", "layers_on_gpu": 10, "layers_total": 19, "verified": True, "parallel": 4
                    },
                },
                {"name": "cpu:latest", "digest": "b" * 64, "size": 1000, "size_vram": 0, "expires_at": None},
            ]
        },
    )
    result = invoke(fake, "ps")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "ID",
        "SIZE",
        "PROCESSOR",
        "CONTEXT",
        "UNTIL",
        "BACKEND",
        "GPU",
        "LAYERS",
        "PARALLEL",
    ]
    assert "48%/52% CPU/GPU" in lines[1]
    assert "4 minutes from now" in lines[1]
    assert lines[1].split()[-3:] == ["cuda", "10/19", "4"]  # the slots the model was loaded with
    assert "100% CPU" in lines[2]
    assert "Forever" in lines[2]


SHOW: dict[str, Any] = {
    "template": "{{ .Prompt }}",
    "parameters": 'stop                           "<end_of_turn>"\ntemperature                    1',
    "license": "Gemma Terms of Use\n\nLast modified: February 21, 2024\nmore",
    "modelfile": "FROM x\n",
    "details": {"family": "gemma3", "parameter_size": "268.10M", "quantization_level": "Q4_K_M"},
    "model_info": {
        "general.architecture": "gemma3",
        "gemma3.context_length": 32768,
        "gemma3.embedding_length": 640,
    },
    "capabilities": ["completion"],
}


def test_show_summary(fake: FakeOllama) -> None:
    fake.on("POST", "/api/show", json=SHOW)
    result = invoke(fake, "show", "gemma3:270m")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("/api/show")[0].json() == {"model": "gemma3:270m"}
    facts = {
        tuple(line.split()[:-1]): line.split()[-1] for line in result.stdout.splitlines() if line.strip()
    }
    assert facts[("architecture",)] == "gemma3"
    assert facts[("parameters",)] == "268.10M"
    assert facts[("context", "length")] == "32768"
    assert facts[("embedding", "length")] == "640"
    assert facts[("quantization",)] == "Q4_K_M"
    assert "completion" in result.stdout
    assert "Last modified: February 21, 2024" in result.stdout
    assert '"<end_of_turn>"' in result.stdout


@pytest.mark.parametrize("flag", ["--template", "--parameters", "--license", "--modelfile"])
def test_show_one_field(fake: FakeOllama, flag: str) -> None:
    fake.on("POST", "/api/show", json=SHOW)
    result = invoke(fake, "show", "gemma3:270m", flag)
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == SHOW[flag[2:]].rstrip("\n")


def test_show_takes_one_flag_only(fake: FakeOllama) -> None:
    assert invoke(fake, "show", "m", "--template", "--license").exit_code == 2


def test_show_missing_model(fake: FakeOllama) -> None:
    fake.on("POST", "/api/show", status=404, json={"error": 'model "nope" not found, try pulling it first'})
    result = invoke(fake, "show", "nope")
    assert result.exit_code == 1
    assert 'model "nope" not found' in result.stderr


# ---------------------------------------------------------------- rm, cp, stop, pull, version


def test_rm_goes_on_after_a_failure_and_exits_1(fake: FakeOllama) -> None:
    fake.on("DELETE", "/api/delete", status=404, json={"error": 'model "b" not found'})
    result = invoke(fake, "rm", "a", "b")
    assert result.exit_code == 1
    assert [r.json() for r in fake.requests_to("/api/delete")] == [{"model": "a"}, {"model": "b"}]
    assert 'model "b" not found' in result.stderr

    fake.on("DELETE", "/api/delete", json=None)
    result = invoke(fake, "rm", "a")
    assert result.exit_code == 0
    assert result.stdout == "deleted 'a'\n"


def test_cp(fake: FakeOllama) -> None:
    fake.on("POST", "/api/copy", json=None)
    result = invoke(fake, "cp", "gemma3:270m", "mine")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("/api/copy")[0].json() == {"source": "gemma3:270m", "destination": "mine"}
    assert result.stdout == "copied 'gemma3:270m' to 'mine'\n"


def test_cp_waits_without_a_read_timeout(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    # Adopting a model found on disk copies and hashes a whole GGUF on the server.
    waits: list[bool] = []
    real = ApiClient.request

    def recording(self: ApiClient, method: str, path: str, body: Any = None, *, wait: bool = False) -> Any:
        waits.append(wait)
        return real(self, method, path, body, wait=wait)

    monkeypatch.setattr(ApiClient, "request", recording)
    fake.on("POST", "/api/copy", json=None)
    assert invoke(fake, "cp", "llama3.2:3b", "mine").exit_code == 0
    assert waits == [True]


def test_stop_sends_keep_alive_zero(fake: FakeOllama) -> None:
    fake.on("POST", "/api/generate", json={"model": "m", "response": "", "done": True})
    result = invoke(fake, "stop", "m")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("/api/generate")[0].json() == {"model": "m", "prompt": "", "keep_alive": 0}


def test_pull_prints_statuses(fake: FakeOllama) -> None:
    fake.on(
        "POST",
        "/api/pull",
        ndjson=[
            {"status": "pulling manifest"},
            {"status": "pulling abc", "digest": DIGEST, "total": 100, "completed": 40},
            {"status": "pulling abc", "digest": DIGEST, "total": 100, "completed": 100},
            {"status": "success"},
        ],
    )
    result = invoke(fake, "pull", "gemma3:270m")
    assert result.exit_code == 0, result.output
    assert "pulling manifest" in result.stderr
    assert "success" in result.stderr


def test_pull_error_line(fake: FakeOllama) -> None:
    fake.on(
        "POST", "/api/pull", ndjson=[{"status": "pulling manifest"}, {"error": "pull model manifest: 404"}]
    )
    result = invoke(fake, "pull", "nope")
    assert result.exit_code == 1
    assert "pull model manifest: 404" in result.stderr


def test_version_with_and_without_server(fake: FakeOllama) -> None:
    result = invoke(fake, "version")
    assert result.exit_code == 0
    assert "client version is 0.1.0" in result.stdout
    assert "server version is 0.0.0-fake" in result.stdout
    result = runner.invoke(app, ["version", "--host", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 0
    assert "client version is 0.1.0" in result.stdout
    assert "not running" in result.stderr


# ---------------------------------------------------------------- not running


@pytest.mark.parametrize(
    "args", [["list"], ["ps"], ["show", "m"], ["rm", "m"], ["run", "m", "hi"], ["stop", "m"]]
)
def test_not_running(args: list[str]) -> None:
    port = free_port()  # bound and released: nothing listens there
    result = runner.invoke(app, [*args, "--host", f"127.0.0.1:{port}"])
    assert result.exit_code == 1
    expected = f"offload is not running at http://127.0.0.1:{port} — start it with: offload serve"
    assert expected in result.stderr


def test_env_host_is_used(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_HOST", fake.url)
    fake.on("GET", "/api/tags", json={"models": []})
    assert runner.invoke(app, ["list"]).exit_code == 0
    assert fake.requests_to("/api/tags")


# ---------------------------------------------------------------- run


def chunks(*pieces: str, final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [
        {"message": {"role": "assistant", "content": p}, "done": False} for p in pieces
    ]
    done = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}
    return [*lines, {**done, **(final or {})}]


def test_run_streams_a_one_shot_reply(fake: FakeOllama) -> None:
    fake.on(
        "POST",
        "/api/chat",
        ndjson=chunks("Hel", "lo", " world", final={"eval_count": 3, "eval_duration": 10**9}),
    )
    flags = ["--system", "be brief", "--temperature", "0.5", "--seed", "7", "--num-predict", "9", "--verbose"]
    result = invoke(fake, "run", "gemma3:270m", "say", "hello", *flags)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello world\n"
    assert "eval rate:" in result.stderr
    body = fake.requests_to("/api/chat")[0].json()
    assert body == {
        "model": "gemma3:270m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello"}],
        "stream": True,
        "options": {"temperature": 0.5, "seed": 7, "num_predict": 9},
    }


def test_run_mid_stream_error(fake: FakeOllama) -> None:
    fake.on("POST", "/api/chat", ndjson=[*chunks("partial")[:1], {"error": "runner crashed: out of memory"}])
    result = invoke(fake, "run", "m", "hi")
    assert result.exit_code == 1
    assert result.stdout.startswith("partial")
    assert "runner crashed: out of memory" in result.stderr


def test_run_error_status(fake: FakeOllama) -> None:
    fake.on("POST", "/api/chat", status=404, json={"error": 'model "m" not found, try pulling it first'})
    result = invoke(fake, "run", "m", "hi")
    assert result.exit_code == 1
    assert 'model "m" not found, try pulling it first' in result.stderr


def test_run_reads_piped_stdin(fake: FakeOllama) -> None:
    fake.on("POST", "/api/chat", ndjson=chunks("ok\n"))
    result = invoke(fake, "run", "m", stdin="summarize this\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok\n"
    assert fake.requests_to("/api/chat")[0].json()["messages"] == [
        {"role": "user", "content": "summarize this\n"}
    ]


def test_run_no_stream(fake: FakeOllama) -> None:
    fake.on("POST", "/api/chat", json={"message": {"role": "assistant", "content": "whole"}, "done": True})
    result = invoke(fake, "run", "m", "hi", "--no-stream")
    assert result.exit_code == 0, result.output
    assert result.stdout == "whole\n"
    assert fake.requests_to("/api/chat")[0].json()["stream"] is False


def test_run_empty_stdin_only_loads(fake: FakeOllama) -> None:
    fake.on("POST", "/api/generate", json={"model": "m", "response": "", "done": True})
    result = invoke(fake, "run", "m", stdin="")
    assert result.exit_code == 0, result.output
    assert fake.requests_to("/api/generate")[0].json() == {"model": "m"}
    assert not fake.requests_to("/api/chat")


def repl(fake: FakeOllama, inputs: list[str]) -> tuple[str, ChatSession]:
    """Drive chat_repl with scripted lines; EOF after the last one."""
    feed = iter(inputs)
    out: list[str] = []

    def read(prompt: str) -> str:
        out.append(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    with ApiClient(fake.url) as api:
        session = ChatSession(api, "m", system="sys")
        chat_repl(session, read, out.append, out.append)
    return "".join(out), session


def test_repl_keeps_history_and_clears_it(fake: FakeOllama) -> None:
    fake.on("POST", "/api/chat", ndjson=chunks("answer"))
    text, session = repl(fake, ["one", "two", "/clear", "three", "/bye", "never sent"])
    bodies = [r.json()["messages"] for r in fake.requests_to("/api/chat")]
    assert [[m["content"] for m in b] for b in bodies] == [
        ["sys", "one"],
        ["sys", "one", "answer", "two"],
        ["sys", "three"],
    ]
    assert "Cleared session context" in text
    assert len(session.history) == 2


def test_repl_multiline_unknown_command_and_errors(fake: FakeOllama) -> None:
    fake.on("POST", "/api/chat", ndjson=[{"error": "context length exceeded"}])
    text, session = repl(fake, ['"""first', "second", 'third"""', "/nope", "/?"])
    (request,) = fake.requests_to("/api/chat")
    assert request.json()["messages"][-1]["content"] == "first\nsecond\nthird"
    assert "Unknown command '/nope'" in text
    assert "/clear" in text
    assert session.history == []  # a failed turn is not remembered


# ---------------------------------------------------------------- create


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    from tests.fixtures.gguf_files import write_tiny_gguf

    return write_tiny_gguf(tmp_path / "tiny.gguf")


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_from_file_uploads_the_blob(fake: FakeOllama, gguf: Path) -> None:
    fake.on("POST", "/api/create", ndjson=[{"status": "creating model"}, {"status": "success"}])
    result = invoke(fake, "create", "tiny", "--from-file", str(gguf), "--system", "be kind")
    assert result.exit_code == 0, result.output
    digest = file_digest(gguf)
    assert fake.blobs == {digest: gguf.read_bytes()}
    assert fake.requests_to(f"/api/blobs/{digest}")[0].method == "HEAD"
    assert fake.requests_to("/api/create")[0].json() == {
        "model": "tiny",
        "stream": True,
        "system": "be kind",
        "files": {"tiny.gguf": digest},
    }
    assert "success" in result.stderr


def test_create_skips_a_blob_the_server_has(fake: FakeOllama, gguf: Path) -> None:
    fake.blobs[file_digest(gguf)] = b"already there"
    fake.on("POST", "/api/create", ndjson=[{"status": "success"}])
    result = invoke(fake, "create", "tiny", "--from-file", str(gguf))
    assert result.exit_code == 0, result.output
    assert [r.method for r in fake.received if r.path.startswith("/api/blobs/")] == ["HEAD"]


def test_create_from_modelfile(fake: FakeOllama, gguf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        'FROM ./tiny.gguf\nPARAMETER temperature 0.2\nPARAMETER stop "<x>"\nSYSTEM """Be terse."""\n'
    )
    fake.on("POST", "/api/create", ndjson=[{"status": "success"}])
    result = invoke(fake, "create", "tiny", "-f", str(modelfile))
    assert result.exit_code == 0, result.output
    body = fake.requests_to("/api/create")[0].json()
    assert body["files"] == {"tiny.gguf": file_digest(gguf)}
    assert body["system"] == "Be terse."
    assert body["parameters"] == {"temperature": 0.2, "stop": ["<x>"]}


def test_create_from_a_model_name(fake: FakeOllama, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM gemma3:270m\nSYSTEM hi\n")
    fake.on("POST", "/api/create", ndjson=[{"status": "success"}])
    result = invoke(fake, "create", "mine", "-f", str(modelfile))
    assert result.exit_code == 0, result.output
    assert fake.requests_to("/api/create")[0].json() == {
        "model": "mine",
        "stream": True,
        "system": "hi",
        "from": "gemma3:270m",
    }
    assert not fake.blobs


def test_create_error_line(fake: FakeOllama, gguf: Path) -> None:
    fake.on("POST", "/api/create", ndjson=[{"status": "parsing"}, {"error": "invalid GGUF: bad magic"}])
    result = invoke(fake, "create", "tiny", "--from-file", str(gguf))
    assert result.exit_code == 1
    assert "invalid GGUF: bad magic" in result.stderr


def test_create_needs_one_source(fake: FakeOllama, gguf: Path, tmp_path: Path) -> None:
    assert invoke(fake, "create", "x", "-f", str(tmp_path / "none"), "--from-file", str(gguf)).exit_code == 2
    assert invoke(fake, "create", "x", "-f", str(tmp_path / "none")).exit_code == 1


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (253_000_000, "253 MB"),
        (1_610_000_000, "1.6 GB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert cli_format.human_bytes(n) == text


@pytest.mark.parametrize(
    ("size", "vram", "text"),
    [(100, 0, "100% CPU"), (100, 100, "100% GPU"), (100, 52, "48%/52% CPU/GPU"), (100, 200, "Unknown")],
)
def test_processor(size: int, vram: int, text: str) -> None:
    assert cli_format.processor(size, vram) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "Less than a second ago"), (1, "1 second ago"), (90, "About a minute ago"), (125, "2 minutes ago"),
     (3 * 3600, "3 hours ago"), (3 * 86400, "3 days ago"), (-300, "5 minutes from now")],
)  # fmt: skip
def test_human_time(seconds: float, text: str) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert cli_format.human_time(now - timedelta(seconds=seconds), now) == text


def test_parse_time_accepts_go_nanoseconds() -> None:
    parsed = cli_format.parse_time("2024-05-01T12:34:56.123456789-07:00")
    assert parsed == datetime(2024, 5, 1, 19, 34, 56, 123456, tzinfo=UTC)
    assert cli_format.parse_time("garbage") is None

"""Templates from clients and from GGUF files, through the HTTP API: no code execution, bounded time and memory.

Three ways a template arrives: /api/generate `template`, /api/create TEMPLATE (field or Modelfile), and a GGUF's
`tokenizer.chat_template`. Escapes toward Python internals are a 400 `template_error` with nothing executed;
denial-of-service templates (`range(10**9)`, huge repetition, doubling strings, nested loops) end with a 400
within the render deadline and under a memory bound, while the server keeps answering other requests.
This suite is never deleted or loosened.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from offload.errors import TemplateError
from offload.models import templates
from tests.fixtures.gguf_files import write_tiny_gguf
from tests.security.apps import (
    Served,
    assert_ollama_error,
    assert_openai_error,
    assert_still_serving,
    digest_of,
    served,
    tree,
)

USER = [{"role": "user", "content": "hi"}]
MARKER = "offload-template-escape-ran"

ESCAPES = [
    "{{ cycler.__init__.__globals__.os.popen('touch " + MARKER + "').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch " + MARKER + "') }}",
    "{{ lipsum.__globals__['os'].system('touch " + MARKER + "') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    # "{{ range" reads as Go template syntax (ignored for the model's own template); these reach Jinja.
    "{{ [range][0].__globals__ }}",
    "{{ [range][0].__closure__[0].cell_contents }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{0.__globals__}'.format(cycler.__init__) }}",
    "{{ messages|attr('__class__') }}",
    "{{ namespace.mro()[-1].__subclasses__() }}",
    "{{ strftime_now.__globals__ }}",
]


def _assert_refused(response: Any, *, openai: bool) -> None:
    if openai:
        assert_openai_error(response, 400, TemplateError.code)
    else:
        assert_ollama_error(response, 400)
    for leaked in ("<module", "<function", "<class", "<built-in", "<bound"):  # nothing of Python's internals
        assert leaked not in response.text, response.text


def _upload_model(s: Served, name: str, chat_template: str) -> None:
    """A GGUF whose own chat template is `chat_template`, uploaded and created as `name`, as a client would."""
    path = write_tiny_gguf(s.root / f"{name}.gguf", chat_template=chat_template)
    content = path.read_bytes()
    path.unlink()
    digest = digest_of(content)
    assert s.client.post(f"/api/blobs/{digest}", content=content).status_code == 201
    created = s.client.post("/api/create", json={"model": name, "files": {"m.gguf": digest}, "stream": False})
    assert created.status_code == 200, created.text


@pytest.mark.parametrize("template", ESCAPES)
def test_template_escapes_execute_nothing(tmp_path: Path, template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where `touch` would leave its mark
    with served(tmp_path) as s:
        before = tree(s.root)
        # 1. /api/generate `template`
        _assert_refused(
            s.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "template": template}), openai=False
        )
        # 2. /api/create TEMPLATE: compiled when stored (these are valid Jinja), refused when rendered.
        for name, body in (
            ("evil-field", {"model": "evil-field", "from": "tiny", "template": template, "stream": False}),
            ("evil-modelfile", {"model": "evil-modelfile", "modelfile": f'FROM tiny\nTEMPLATE """{template}"""\n'}),
        ):
            assert s.client.post("/api/create", json=body).status_code == 200
            _assert_refused(s.client.post("/api/chat", json={"model": name, "messages": USER}), openai=False)
            _assert_refused(s.client.post("/v1/chat/completions", json={"model": name, "messages": USER}), openai=True)
        # 3. the GGUF's own chat template
        _upload_model(s, "evil-gguf", template)
        _assert_refused(s.client.post("/api/chat", json={"model": "evil-gguf", "messages": USER}), openai=False)
        _assert_refused(
            s.client.post("/v1/chat/completions", json={"model": "evil-gguf", "messages": USER}), openai=True
        )
        assert s.scheduler.requests == []
        assert not (tmp_path / MARKER).exists() and not Path(MARKER).exists()
        created = set(tree(s.root)) - set(before)
        assert all(p.startswith("home/models/") for p in created), created
        assert_still_serving(s.client)


def test_a_broken_template_is_refused_when_created(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        for template in ("{% for m in messages %}", "{{ x | no_such_filter }}", "{% if %}"):
            response = s.client.post("/api/create", json={"model": "broken", "from": "tiny", "template": template})
            text = assert_ollama_error(response, 400)
            assert text.startswith("invalid template")
            assert not s.store.exists("broken")
        # An Ollama (Go) template is stored: it is skipped, with a warning, when used.
        response = s.client.post(
            "/api/create", json={"model": "go", "from": "tiny", "template": "{{ .Prompt }}", "stream": False}
        )
        assert response.status_code == 200


# ---------------------------------------------------------------- denial of service

DOS = [
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(1000000000) %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ 'x' * 1000000000 }}",
    "{{ ['x'] * 1000000000 }}",
    "{{ 2 ** 100000000 }}",
    "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    "{% set a = 'x' * 4000000 %}{% set b = a ~ a %}{{ b }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + ['x' * 4000000 ~ i] %}{% endfor %}",
    "{% set a = 'x' * 4000000 %}{% macro m() %}{% for i in range(100000) %}{{ a }}{% endfor %}{% endmacro %}{{ m() }}",
    "{% set a = 'x' * 4000000 %}{% set l = [a, a, a, a] %}{{ [l, l, l, l] }}",
    "{% set a = 'x' * 4000000 %}{{ a.replace('x', a) }}",
    "{{ ('{0}' * 100000).format('x' * 4000000) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ (1).to_bytes(10**9, 'big') }}",
    "{{ lipsum(10**9) }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
]


@pytest.mark.parametrize("template", DOS)
def test_template_dos_ends_fast_and_small(tmp_path: Path, template: str) -> None:
    with served(tmp_path) as s:
        tracemalloc.start()
        try:
            started = time.monotonic()
            response = s.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "template": template})
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        text = assert_ollama_error(response, 400)
        assert text.startswith("template"), text
        assert elapsed < templates.RENDER_SECONDS + 5  # tracemalloc slows everything down; the bound is the deadline
        assert peak < 96 * 1024 * 1024, peak
        assert s.scheduler.requests == []
        assert_still_serving(s.client)


def test_a_slow_template_hits_the_deadline_while_other_requests_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(templates, "RENDER_SECONDS", 1.5)
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with served(tmp_path) as s:
        result: dict[str, Any] = {}

        def slow() -> None:
            started = time.monotonic()
            result["response"] = s.client.post(
                "/api/generate", json={"model": "tiny", "prompt": "hi", "template": spin}
            )
            result["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(0.3)
        # The render runs in a worker thread, never on the event loop: the server answers meanwhile.
        started = time.monotonic()
        assert s.client.get("/api/version").status_code == 200
        assert time.monotonic() - started < 1.0
        assert worker.is_alive()
        worker.join(10)
        assert not worker.is_alive()
        assert_ollama_error(result["response"], 400)
        assert result["response"].json()["error"] == "template rendering took longer than 1.5 s"
        assert 1.5 <= result["seconds"] < 4
        assert_still_serving(s.client)


def test_template_output_is_bounded(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        over = "{% for i in range(5) %}{{ 'x' * 1000000 }}{% endfor %}"
        assert_ollama_error(
            s.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "template": over}), 400
        )
        under = "{% for i in range(3) %}{{ 'x' * 1000000 }}{% endfor %}"
        ok = s.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "template": under, "stream": False})
        assert ok.status_code == 200
        assert len(s.scheduler.requests[-1].prompt) == 3_000_000


def test_a_gguf_template_dos_is_a_400_for_that_model_only(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        _upload_model(s, "slow", "{% for i in range(10**9) %}{% endfor %}")
        _assert_refused(s.client.post("/api/chat", json={"model": "slow", "messages": USER}), openai=False)
        _assert_refused(s.client.post("/v1/chat/completions", json={"model": "slow", "messages": USER}), openai=True)
        ok = s.client.post("/api/chat", json={"model": "tiny", "messages": USER, "stream": False})
        assert ok.status_code == 200

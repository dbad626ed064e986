"""Chat templates: built-in formats, HF-style GGUF templates, selection order, and the sandbox."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest

from offload import errors
from offload.models import sandbox, templates
from offload.models.templates import (
    BUILTIN_TEMPLATES,
    ChatMessage,
    builtin_template,
    looks_like_go_template,
    render_chat,
    render_prompt,
    select_template,
)

if TYPE_CHECKING:
    from offload.models.gguf import GGUFFile

CONVERSATION = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "Bye"),
)


@dataclass(frozen=True)
class FakeGGUF:
    """The three attributes select_template reads from a GGUFFile."""

    architecture: str = "unknown"
    chat_template: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def gguf(**kwargs: Any) -> GGUFFile:
    return cast("GGUFFile", FakeGGUF(**kwargs))


def render(template: str, messages: Sequence[ChatMessage] = CONVERSATION, **kwargs: Any) -> str:
    kwargs.setdefault("bos_token", "<s>")
    kwargs.setdefault("eos_token", "</s>")
    return render_chat(template, messages, **kwargs)


# --- built-in templates --------------------------------------------------------------------

BUILTIN_CASES = [
    (
        "gemma",
        "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "llama2",
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]",
    ),
    (
        "llama3",
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    ("mistral", "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]"),
    (
        "chatml",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "phi3",
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nBye<|end|>\n<|assistant|>\n",
    ),
]


def test_every_builtin_template_has_a_case() -> None:
    assert {name for name, _ in BUILTIN_CASES} == set(BUILTIN_TEMPLATES)


@pytest.mark.parametrize(("name", "expected"), BUILTIN_CASES)
def test_builtin_template_renders_conversation(name: str, expected: str) -> None:
    assert render(BUILTIN_TEMPLATES[name]) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma", "<s><start_of_turn>user\nHi<end_of_turn>\n"),
        ("llama3", "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
        ("chatml", "<|im_start|>user\nHi<|im_end|>\n"),
        ("phi3", "<|user|>\nHi<|end|>\n"),
    ],
)
def test_builtin_without_generation_prompt(name: str, expected: str) -> None:
    out = render(BUILTIN_TEMPLATES[name], [ChatMessage("user", "Hi")], add_generation_prompt=False)
    assert out == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma", "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>model\n"),
        ("mistral", "[INST] S [/INST]"),
        ("llama2", "[INST] <<SYS>>\nS\n<</SYS>>\n\n [/INST]"),
    ],
)
def test_builtin_system_only_becomes_a_user_turn(name: str, expected: str) -> None:
    assert render(BUILTIN_TEMPLATES[name], [ChatMessage("system", "S")], bos_token="") == expected


@pytest.mark.parametrize("name", ["gemma", "llama2", "mistral"])
def test_builtin_rejects_roles_it_cannot_express(name: str) -> None:
    with pytest.raises(errors.TemplateError, match="tool"):
        render(BUILTIN_TEMPLATES[name], [ChatMessage("tool", "42")])


@pytest.mark.parametrize(
    ("architecture", "tokens", "expected"),
    [
        ("gemma", None, "gemma"),
        ("gemma2", None, "gemma"),
        ("gemma3", None, "gemma"),
        ("gemma3n", None, "gemma"),
        ("Gemma3", None, "gemma"),
        ("llama", ["<s>", "<|start_header_id|>", "<|eot_id|>"], "llama3"),
        ("llama", ["<s>", "[INST]", "[/INST]"], "mistral"),
        ("llama", ["<s>", "<|im_start|>"], "chatml"),
        ("llama", ["<s>", "</s>"], "llama2"),
        ("llama", None, "llama2"),
        ("qwen2", None, "chatml"),
        ("qwen2moe", None, "chatml"),
        ("qwen3", None, "chatml"),
        ("qwen3moe", None, "chatml"),
        ("mistral", None, "mistral"),
        ("mistral3", None, "mistral"),
        ("phi3", None, "phi3"),
    ],
)
def test_builtin_template_by_architecture(architecture: str, tokens: list[str] | None, expected: str) -> None:
    assert builtin_template(architecture, tokens) == BUILTIN_TEMPLATES[expected]


@pytest.mark.parametrize("architecture", ["bert", "unknown", "", "t5"])
def test_builtin_template_unknown_architecture(architecture: str) -> None:
    assert builtin_template(architecture) is None


# --- selection -----------------------------------------------------------------------------

GGUF_TEMPLATE = "{% for m in messages %}[{{ m.role }}]{% endfor %}"


@pytest.mark.parametrize(
    ("explicit", "model", "expected"),
    [
        ("EXPLICIT", gguf(architecture="gemma3", chat_template=GGUF_TEMPLATE), "EXPLICIT"),
        (None, gguf(architecture="gemma3", chat_template=GGUF_TEMPLATE), GGUF_TEMPLATE),
        ("", gguf(architecture="gemma3", chat_template=GGUF_TEMPLATE), GGUF_TEMPLATE),
        ("  \n", gguf(architecture="gemma3", chat_template=GGUF_TEMPLATE), GGUF_TEMPLATE),
        (None, gguf(architecture="gemma3", chat_template=""), BUILTIN_TEMPLATES["gemma"]),
        (None, gguf(architecture="qwen3"), BUILTIN_TEMPLATES["chatml"]),
        (None, gguf(architecture="bert"), BUILTIN_TEMPLATES["chatml"]),
        (
            None,
            gguf(architecture="llama", metadata={"tokenizer.ggml.tokens": ("<s>", "<|start_header_id|>")}),
            BUILTIN_TEMPLATES["llama3"],
        ),
        (
            None,
            gguf(architecture="llama", metadata={"tokenizer.ggml.tokens": "bogus"}),
            BUILTIN_TEMPLATES["llama2"],
        ),
        # An Ollama Modelfile TEMPLATE is Go syntax: skipped for the model's own template.
        (
            "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}",
            gguf(chat_template=GGUF_TEMPLATE),
            GGUF_TEMPLATE,
        ),
    ],
)
def test_select_template_order(explicit: str | None, model: GGUFFile, expected: str) -> None:
    assert select_template(model, explicit) == expected


@pytest.mark.parametrize(
    ("text", "is_go"),
    [
        ("{{ .Prompt }}", True),
        ("{{- if .Messages }}", True),
        ("{{- range .Messages }}{{ end }}", True),
        ("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", False),
        ("{%- if messages[0].role == 'system' -%}", False),
    ],
)
def test_looks_like_go_template(text: str, is_go: bool) -> None:
    assert looks_like_go_template(text) is is_go


# --- HF-style templates as GGUF files carry them --------------------------------------------

# Written in the style of the templates on Hugging Face: bos_token, message['content'] | trim,
# a namespace, loop.first/loop.last, raise_exception on bad alternation.
HF_STYLE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {%- if loop.last and message['role'] == 'assistant' %}{{ eos_token }}{% endif %}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""


def test_hf_style_template_renders() -> None:
    out = render(HF_STYLE, bos_token="<bos>", eos_token="<eos>")
    assert out == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_hf_style_template_loop_last() -> None:
    messages = [ChatMessage("user", "  Hi  "), ChatMessage("assistant", "Yo")]
    out = render(HF_STYLE, messages, bos_token="<bos>", eos_token="<eos>", add_generation_prompt=False)
    assert out == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<eos><end_of_turn>\n"


def test_hf_style_template_raise_exception() -> None:
    with pytest.raises(errors.TemplateError, match="roles must alternate") as info:
        render(HF_STYLE, [ChatMessage("user", "a"), ChatMessage("user", "b")])
    assert info.value.status == 400
    assert info.value.code == "template_error"


def test_selected_gguf_template_is_rendered() -> None:
    model = gguf(architecture="gemma3", chat_template=HF_STYLE)
    out = render_prompt(select_template(model, None), "Hi", None, bos_token="<bos>", eos_token="<eos>")
    assert out == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (None, "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
        ("", "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
        ("Sys", "<s><start_of_turn>user\nSys\n\nHi<end_of_turn>\n<start_of_turn>model\n"),
    ],
)
def test_render_prompt(system: str | None, expected: str) -> None:
    out = render_prompt(BUILTIN_TEMPLATES["gemma"], "Hi", system, bos_token="<s>", eos_token="</s>")
    assert out == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ messages[1].content | tojson }}", '"Hi"'),
        ("{{ {'k': 'é <&>'} | tojson }}", '{"k": "é <&>"}'),
        (
            "{{ {'b': 1, 'a': [1, 2]} | tojson(indent=1, sort_keys=true) }}",
            json.dumps({"b": 1, "a": [1, 2]}, indent=1, sort_keys=True),
        ),
        ("{{ tools is none }}|{{ add_generation_prompt }}", "True|True"),
        ("[{{ bos_token }}][{{ eos_token }}]", "[][]"),
        (
            "{% for m in messages %}{% if m.role == 'assistant' %}{% break %}{% endif %}{{ m.role[0] }}"
            "{% endfor %}",
            "su",
        ),
        (
            "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.role[0] }}{% endfor %}",
            "uau",
        ),
        ("{% generation %}{{ messages[2].content }}{% endgeneration %}", "Hello!"),
        (
            "{{ range(3)|list }}|{{ range(4)|length }}|{{ range(3)|reverse|list }}|{{ 2 in range(3) }}",
            "[0, 1, 2]|4|[2, 1, 0]|True",
        ),
        ("{{ messages | map(attribute='role') | join(',') }}", "system,user,assistant,user"),
        ("{{ messages | selectattr('role', 'equalto', 'user') | list | length }}", "2"),
        (
            "{{ 1700000000 | string }}|{{ '%d' | format(12345678) }}|{{ '{} {}'.format(12345678, 'x') }}",
            "1700000000|12345678|12345678 x",
        ),
        (
            "{{ 'call 1234567 %s' % 'x' }}|{{ '{:>5}'.format('ab') }}|{{ '%05.1f' % 2.5 }}",
            "call 1234567 x|   ab|002.5",
        ),
        ("{{ range(0, 5000000, 1000000) | list }}", "[0, 1000000, 2000000, 3000000, 4000000]"),
        ("{{ messages[0].missing is defined }}{% if messages[0].tool_calls %}x{% endif %}", "False"),
        ("{{ '%s-%d' % ('a', 1) }}|{{ '{}!'.format('b') }}|{{ 'ab' * 2 }}|{{ 2 ** 10 }}", "a-1|b!|abab|1024"),
    ],
)
def test_hf_features(template: str, expected: str) -> None:
    assert render(template, bos_token=None, eos_token=None) == expected


def test_strftime_now() -> None:
    year = render("{{ strftime_now('%Y') }}")
    assert year == time.strftime("%Y") or int(year) == int(time.strftime("%Y")) - 1  # midnight on 31 Dec


def test_chat_message_is_frozen() -> None:
    message = ChatMessage("user", "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.role = "system"  # type: ignore[misc]


def test_template_compiled_once() -> None:
    source = "{{ messages | length }} compiled-once marker"
    before = sandbox.compiled_template.cache_info().hits
    assert render(source) == "4 compiled-once marker"
    assert render(source) == "4 compiled-once marker"
    assert sandbox.compiled_template.cache_info().hits == before + 1


# --- failures and the sandbox --------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{% if %}",
        "{% for m in messages %}",
        "{{ messages[0] }",
        "{% endfor %}",
        "{% unknown_tag %}",
        "{{ messages | no_such_filter }}",
    ],
)
def test_syntax_errors(template: str) -> None:
    with pytest.raises(errors.TemplateError, match="invalid template"):
        render(template)


@pytest.mark.parametrize(
    "template",
    [
        "{{ undefined_thing.attribute }}",
        "{{ messages[0].content + 1 }}",
        "{{ 1 / 0 }}",
        "{{ undefined_function() }}",
        "{{ messages[99].content }}",
        "{{ messages | tojson }}{{ namespace() | tojson }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_runtime_errors(template: str) -> None:
    with pytest.raises(errors.TemplateError):
        render(template)


SANDBOX_ESCAPES = [
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ messages.__class__ }}",
    "{{ messages[0]['__class__'] }}",
    "{{ messages|attr('__class__') }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{0.__globals__}'.format(cycler.__init__) }}",
    "{{ '{0.__globals__}'.format(lipsum) }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages.pop() }}",
]


@pytest.mark.parametrize("template", SANDBOX_ESCAPES)
def test_sandbox_escapes_blocked(template: str) -> None:
    with pytest.raises(errors.TemplateError, match="sandbox"):
        render(template)


def test_messages_are_not_mutated_by_templates() -> None:
    messages = [ChatMessage("user", "Hi")]
    with pytest.raises(errors.TemplateError):
        render("{{ messages.clear() }}", messages)
    assert messages == [ChatMessage("user", "Hi")]


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",  # many small pieces
        "{% for i in range(100000) %}{% for j in range(100) %}ab{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ ['x'] * 1000000000 }}",
        "{{ 'x' * 4000000 + 'y' * 4000000 }}",
        "{{ 10 ** 100000 }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 'x' | indent(1000000000) }}",
        "{{ '{:>999999999}'.format('x') }}",
        "{{ '{:>{}}'.format('x', 1000000000) }}",
        "{{ '%999999999s' % 'x' }}",
        "{{ '%999999999s' | format('x') }}",
        "{{ '%*s' | format(1000000000, 'x') }}",
        "{{ '%.999999999d' % 1 }}",
        "{{ [1] | batch(1000000000, 0) | list }}",
        "{% for i in range(1000000000) %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    ],
)
def test_huge_output_and_values_are_bounded(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(errors.TemplateError):
        render(template)
    assert time.monotonic() - started < 3


def test_output_just_under_the_bound_is_fine() -> None:
    out = render("{% for i in range(4) %}{{ 'x' * 1000000 }}{% endfor %}")
    assert len(out) == 4_000_000


def test_render_time_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.2)
    started = time.monotonic()
    with pytest.raises(errors.TemplateError, match="longer than"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    assert time.monotonic() - started < 2


def test_template_source_size_is_bounded() -> None:
    with pytest.raises(errors.TemplateError, match="template longer than"):
        render("x" * (templates.MAX_TEMPLATE_CHARS + 1))

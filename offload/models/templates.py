"""Chat templates: choosing one for a model and rendering it safely.

A template is Jinja source in the Hugging Face dialect (the text GGUF files carry as
``tokenizer.chat_template``). It sees ``messages`` (a list of ``{"role", "content"}`` dicts),
``bos_token``, ``eos_token``, ``add_generation_prompt``, ``tools`` (always None here), and the
helpers HF provides: ``raise_exception(msg)``, ``strftime_now(fmt)``, a ``tojson`` filter that
keeps non-ASCII text, ``{% break %}``/``{% continue %}`` and a no-op ``{% generation %}`` block.

Templates come from downloaded files and from API clients, so they are untrusted: they run in
Jinja's immutable sandbox, where any attempt to reach Python internals (``__globals__``,
``__subclasses__``...) is an error rather than a silent empty string, and rendering is bounded
(output size, sequence sizes built by operators, range length, wall-clock time). Every failure
surfaces as ``errors.TemplateError``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from offload import errors

if TYPE_CHECKING:
    from jinja2.parser import Parser

    from offload.models.gguf import GGUFFile

log = logging.getLogger(__name__)

MAX_TEMPLATE_CHARS = 1024 * 1024
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_RANGE = 100_000
RENDER_SECONDS = 5.0
# Results of ``**`` above this many bits are refused: no chat template needs big numbers, and
# computing them is the cheapest way to pin a CPU.
_MAX_POWER_BITS = 4096
# A format width or precision of seven digits or more ("{:>9999999}", "%9999999d"), or one taken
# from the arguments ("%*d", "{:{}}"), could allocate gigabytes before any size check ran.
_WIDE_PERCENT = re.compile(r"%[-+ #0]*(?:\d{7,}|\*|\d*\.(?:\d{7,}|\*))")
_WIDE_BRACE = re.compile(r"\{[^{}]*:[^{}]*(?:\d{7,}|\{)")
# Filters whose integer arguments set the size of what they build.
_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
# Not a valid Jinja identifier, so no template can read or shadow it.
_BUDGET_KEY = "offload.budget"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


# --- built-in templates --------------------------------------------------------------------
# Used when a GGUF carries no chat template. Written for this project; every literal goes through
# an expression so trim_blocks/lstrip_blocks cannot change the output.

# Roles without their own turn (system) are folded into the next user turn; text left over at the
# end (a system message with no user message after it) becomes a user turn of its own.
_GEMMA = r"""{{- bos_token -}}
{%- set ns = namespace(pending='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {%- set ns.pending = ns.pending ~ m.content ~ '\n\n' -%}
  {%- elif m.role == 'user' -%}
    {{- '<start_of_turn>user\n' ~ ns.pending ~ m.content ~ '<end_of_turn>\n' -}}
    {%- set ns.pending = '' -%}
  {%- elif m.role == 'assistant' -%}
    {{- '<start_of_turn>model\n' ~ m.content ~ '<end_of_turn>\n' -}}
  {%- else -%}
    {{- raise_exception('gemma templates support system, user and assistant roles, not ' ~ m.role) -}}
  {%- endif -%}
{%- endfor -%}
{%- if ns.pending -%}
  {{- '<start_of_turn>user\n' ~ ns.pending[:-2] ~ '<end_of_turn>\n' -}}
{%- endif -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"""

_LLAMA3 = r"""{{- bos_token -}}
{%- for m in messages -%}
  {{- '<|start_header_id|>' ~ m.role ~ '<|end_header_id|>\n\n' ~ m.content ~ '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"""

# Llama 2 wraps the system prompt in <<SYS>> inside the first [INST]; the prompt always ends
# with [/INST], so add_generation_prompt changes nothing.
_LLAMA2 = r"""{%- set ns = namespace(pending='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {%- set ns.pending = ns.pending ~ '<<SYS>>\n' ~ m.content ~ '\n<</SYS>>\n\n' -%}
  {%- elif m.role == 'user' -%}
    {{- bos_token ~ '[INST] ' ~ ns.pending ~ m.content ~ ' [/INST]' -}}
    {%- set ns.pending = '' -%}
  {%- elif m.role == 'assistant' -%}
    {{- ' ' ~ m.content ~ ' ' ~ eos_token -}}
  {%- else -%}
    {{- raise_exception('llama2 templates support system, user and assistant roles, not ' ~ m.role) -}}
  {%- endif -%}
{%- endfor -%}
{%- if ns.pending -%}{{- bos_token ~ '[INST] ' ~ ns.pending ~ ' [/INST]' -}}{%- endif -%}"""

_MISTRAL = r"""{{- bos_token -}}
{%- set ns = namespace(pending='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {%- set ns.pending = ns.pending ~ m.content ~ '\n\n' -%}
  {%- elif m.role == 'user' -%}
    {{- '[INST] ' ~ ns.pending ~ m.content ~ ' [/INST]' -}}
    {%- set ns.pending = '' -%}
  {%- elif m.role == 'assistant' -%}
    {{- m.content ~ eos_token -}}
  {%- else -%}
    {{- raise_exception('mistral templates support system, user and assistant roles, not ' ~ m.role) -}}
  {%- endif -%}
{%- endfor -%}
{%- if ns.pending -%}{{- '[INST] ' ~ ns.pending[:-2] ~ ' [/INST]' -}}{%- endif -%}"""

_CHATML = r"""{%- for m in messages -%}
  {{- '<|im_start|>' ~ m.role ~ '\n' ~ m.content ~ '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""

_PHI3 = r"""{%- for m in messages -%}
  {{- '<|' ~ m.role ~ '|>\n' ~ m.content ~ '<|end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"""

BUILTIN_TEMPLATES: Mapping[str, str] = {
    "gemma": _GEMMA,
    "llama2": _LLAMA2,
    "llama3": _LLAMA3,
    "mistral": _MISTRAL,
    "chatml": _CHATML,
    "phi3": _PHI3,
}

_BY_ARCHITECTURE: Mapping[str, str] = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml", "qwen3moe": "chatml",
    "mistral": "mistral", "mistral3": "mistral",
    "phi3": "phi3",
}  # fmt: skip


def builtin_template(architecture: str, tokens: Sequence[str] | None = None) -> str | None:
    """Jinja source of the built-in template for a GGUF architecture, or None if there is none.

    ``llama`` covers several chat formats, so the vocabulary (``tokenizer.ggml.tokens``) decides:
    Llama 3 header tokens, then Mistral's ``[INST]`` control token, then ChatML's
    ``<|im_start|>``; a plain Llama 2 vocabulary (or none given) gets the Llama 2 format.
    """
    arch = architecture.lower()
    if arch == "llama":
        # Membership tests on the sequence itself: building a set of a 128k vocabulary costs more.
        vocab: Sequence[str] = tokens if tokens is not None else ()
        if "<|start_header_id|>" in vocab:
            return _LLAMA3
        if "[INST]" in vocab:
            return _MISTRAL
        if "<|im_start|>" in vocab:
            return _CHATML
        return _LLAMA2
    key = _BY_ARCHITECTURE.get(arch)
    return None if key is None else BUILTIN_TEMPLATES[key]


# Ollama Modelfiles carry Go templates ({{ .Prompt }}, {{ if .System }}); Jinja cannot run them.
_GO_TEMPLATE = re.compile(r"\{\{-?\s*(?:\.[A-Za-z]|(?:if|range|with|else|end)\b)")


def looks_like_go_template(text: str) -> bool:
    """True when ``text`` uses Go template syntax (as Ollama's TEMPLATE layers do), not Jinja."""
    return _GO_TEMPLATE.search(text) is not None


def select_template(gguf: GGUFFile, explicit: str | None) -> str:
    """The template to render for a model: ``explicit`` (a Modelfile/API template), else the GGUF's
    ``tokenizer.chat_template``, else the built-in one for its architecture, else ChatML.

    An explicit template in Go syntax (imported from Ollama) is skipped with a warning, since
    rendering it could only fail; a non-empty template is never otherwise second-guessed.
    """
    if explicit and explicit.strip():
        if not looks_like_go_template(explicit):
            return explicit
        log.warning("ignoring a Go-syntax (Ollama) template; using the model's own chat template")
    if gguf.chat_template and gguf.chat_template.strip():
        return gguf.chat_template
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, Sequence) or isinstance(tokens, (str, bytes)):
        tokens = None
    return builtin_template(gguf.architecture, tokens) or _CHATML


# --- the sandbox ---------------------------------------------------------------------------


class _Budget:
    """Wall-clock allowance of one render, checked at every call, operator and range step."""

    __slots__ = ("deadline",)

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise errors.TemplateError(f"template rendering took longer than {RENDER_SECONDS:g} s")


def _check_size(value: Any) -> None:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_OUTPUT_CHARS:
        raise errors.TemplateError(f"template built a value longer than {MAX_OUTPUT_CHARS} items")


class _BoundedRange:
    """``range`` for templates: at most MAX_RANGE items, each step charged to the render budget."""

    __slots__ = ("_budget", "_range")

    def __init__(self, budget: _Budget, *args: int) -> None:
        self._range = range(*args)
        self._budget = budget
        if len(self._range) > MAX_RANGE:
            raise errors.TemplateError(f"template range() longer than {MAX_RANGE} items")

    def __iter__(self) -> Iterator[int]:
        for i in self._range:
            self._budget.tick()
            yield i

    def __reversed__(self) -> Iterator[int]:
        return reversed(self._range)

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: int) -> int:
        return self._range[index]

    def __contains__(self, value: object) -> bool:
        return value in self._range


class _BoundedNamespace(Namespace):
    """``namespace()`` whose attributes cannot grow past the size bound (``ns.s = ns.s ~ ns.s``)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(value)
        super().__setitem__(name, value)


class _GenerationTag(Extension):
    """HF's ``{% generation %}...{% endgeneration %}`` marks assistant text for training; here it
    renders its body unchanged so such templates still work."""

    tags = {"generation"}  # noqa: RUF012 (the base class declares it a plain set)

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so large widths/counts are refused before it runs and large results after."""

    @functools.wraps(func)  # keeps jinja_pass_arg, so context-taking filters still get it
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if name in _SIZING_FILTERS:
            for arg in (*args[1:], *kwargs.values()):  # args[0] is the value being filtered
                if isinstance(arg, int) and abs(arg) > MAX_OUTPUT_CHARS:
                    raise errors.TemplateError(f"template filter {name!r} argument too large")
        if name == "format" and args and isinstance(args[0], str) and _WIDE_PERCENT.search(args[0]):
            raise errors.TemplateError("template format field too wide")
        result = func(*args, **kwargs)
        _check_size(result)
        return result

    return wrapper


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF's tojson: plain json.dumps, no HTML escaping (Jinja's own escapes '<' and '&').
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: object) -> None:
    raise errors.TemplateError(f"chat template error: {_short(str(message))}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _budget_of(context: Context) -> _Budget | None:
    budget = context.parent.get(_BUDGET_KEY)
    return budget if isinstance(budget, _Budget) else None


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # The default returns an Undefined that renders as "", hiding the attempt; refuse instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _WIDE_BRACE.search(value.__self__):
            raise errors.TemplateError("template format field too wide")
        return wrapped

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget_of(context)
        if budget is not None:
            budget.tick()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * left.bit_length() > _MAX_POWER_BITS:
                raise errors.TemplateError("template arithmetic result too large")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, (str, list, tuple)) and isinstance(count, int)
                if sized and len(seq) * count > MAX_OUTPUT_CHARS:
                    raise errors.TemplateError("template built a value too large")
        elif (
            operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple))
        ):
            if len(left) + len(right) > MAX_OUTPUT_CHARS:
                raise errors.TemplateError("template built a value too large")
        elif operator == "%" and isinstance(left, str) and _WIDE_PERCENT.search(left):
            raise errors.TemplateError("template format field too wide")
        result = self.binop_table[operator](left, right)
        _check_size(result)
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget_of(__context)
        if budget is not None:
            budget.tick()
        # Checking arguments, not just results, stops a recursive macro that doubles a string.
        for arg in (*args, *kwargs.values()):
            _check_size(arg)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(result)
        return result


@functools.lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    env = _Sandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compiled(source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise errors.TemplateError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        return _compile(source)
    except jinja2.TemplateSyntaxError as exc:
        raise errors.TemplateError(
            f"invalid template: {_short(exc.message or str(exc))} (line {exc.lineno})"
        ) from exc
    except RecursionError as exc:
        raise errors.TemplateError("invalid template: nested too deeply") from exc
    except Exception as exc:  # the compiler is foreign code; whatever it raises is the template's fault
        raise errors.TemplateError(f"invalid template: {_short(f'{type(exc).__name__}: {exc}')}") from exc


# --- rendering -----------------------------------------------------------------------------


def render_chat(
    template: str,
    messages: Sequence[ChatMessage],
    *,
    bos_token: str | None,
    eos_token: str | None,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with the Jinja chat ``template`` in the sandbox.

    Missing special tokens render as "". Output is capped at MAX_OUTPUT_CHARS characters and the
    render at RENDER_SECONDS; bounding the number and size of messages is the caller's job.
    Raises errors.TemplateError for every failure: syntax, undefined values used wrongly, sandbox
    violations, ``raise_exception`` from the template, limits.
    """
    compiled = _compiled(template)
    budget = _Budget(RENDER_SECONDS)
    variables: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "bos_token": bos_token or "",
        "eos_token": eos_token or "",
        "add_generation_prompt": add_generation_prompt,
        "tools": None,
        # Per render: both need this render's budget or bounds.
        "range": functools.partial(_BoundedRange, budget),
        "namespace": _BoundedNamespace,
        _BUDGET_KEY: budget,
    }
    pieces: list[str] = []
    total = 0
    try:
        for piece in compiled.generate(variables):
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise errors.TemplateError(f"template output longer than {MAX_OUTPUT_CHARS} characters")
            budget.tick()
            pieces.append(piece)
    except errors.OffloadError:
        raise
    except SecurityError as exc:
        raise errors.TemplateError(f"template blocked by the sandbox: {_short(str(exc))}") from exc
    except jinja2.TemplateError as exc:
        raise errors.TemplateError(f"template error: {_short(str(exc))}") from exc
    except RecursionError as exc:
        raise errors.TemplateError("template recursed too deeply") from exc
    except Exception as exc:  # template code runs foreign operations; translate whatever they raise
        raise errors.TemplateError(f"template error: {_short(f'{type(exc).__name__}: {exc}')}") from exc
    return "".join(pieces)


def render_prompt(
    template: str, prompt: str, system: str | None, *, bos_token: str | None, eos_token: str | None
) -> str:
    """The prompt for a non-raw /api/generate call: an optional system message and one user
    message, rendered with the generation prompt appended."""
    messages = [ChatMessage("system", system)] if system else []
    messages.append(ChatMessage("user", prompt))
    return render_chat(template, messages, bos_token=bos_token, eos_token=eos_token)

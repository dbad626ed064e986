"""Chat templates: choosing one for a model and rendering it safely.

A template is Jinja source in the Hugging Face dialect (the text GGUF files carry as
``tokenizer.chat_template``). It sees ``messages`` (a list of ``{"role", "content"}`` dicts),
``bos_token``, ``eos_token``, ``add_generation_prompt``, ``tools`` (always None here), and the
helpers HF provides: ``raise_exception(msg)``, ``strftime_now(fmt)``, a ``tojson`` filter that
keeps non-ASCII text, ``{% break %}``/``{% continue %}`` and a no-op ``{% generation %}`` block.

Templates come from downloaded files and from API clients, so they are untrusted: they run in
the bounded Jinja sandbox of ``models/sandbox.py`` (no Python internals; time, output, every value
built and all of them together bounded). Every failure surfaces as ``errors.TemplateError``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from offload.models import sandbox
from offload.models.sandbox import MAX_OUTPUT_CHARS, MAX_RANGE, MAX_TEMPLATE_CHARS

if TYPE_CHECKING:
    from offload.models.gguf import GGUFFile

log = logging.getLogger(__name__)

__all__ = ["MAX_OUTPUT_CHARS", "MAX_RANGE", "MAX_TEMPLATE_CHARS", "RENDER_SECONDS"]

# Read at each render, so a test (or a caller) may change it.
RENDER_SECONDS = sandbox.RENDER_SECONDS


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


# --- rendering -----------------------------------------------------------------------------


def render_chat(
    template: str,
    messages: Sequence[ChatMessage],
    *,
    bos_token: str | None,
    eos_token: str | None,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with the Jinja chat ``template`` in the sandbox (models/sandbox.py).

    Missing special tokens render as "". Output, every value built and the render time (RENDER_SECONDS) are
    bounded there; bounding the number of messages is the caller's job. Raises errors.TemplateError for every
    failure: syntax, undefined values used wrongly, sandbox violations, ``raise_exception`` from the
    template, limits.
    """
    compiled = sandbox.compiled_template(template)
    variables: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "bos_token": bos_token or "",
        "eos_token": eos_token or "",
        "add_generation_prompt": add_generation_prompt,
        "tools": None,
    }
    return sandbox.render(compiled, variables, seconds=RENDER_SECONDS)


def check_template(template: str) -> None:
    """Compile a client's template now, so a syntax error is a 400 when it is stored, not at every request.
    Go-syntax templates (from Ollama Modelfiles) pass: they are skipped, with a warning, when used."""
    if template.strip() and not looks_like_go_template(template):
        sandbox.compiled_template(template)


def render_prompt(
    template: str, prompt: str, system: str | None, *, bos_token: str | None, eos_token: str | None
) -> str:
    """The prompt for a non-raw /api/generate call: an optional system message and one user
    message, rendered with the generation prompt appended."""
    messages = [ChatMessage("system", system)] if system else []
    messages.append(ChatMessage("user", prompt))
    return render_chat(template, messages, bos_token=bos_token, eos_token=eos_token)

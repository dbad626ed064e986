"""The Jinja sandbox every chat template renders in, bounded in time and memory.

Templates come from downloaded GGUF files and from API clients (/api/create TEMPLATE, /api/generate
`template`), so they are untrusted. They run in Jinja's immutable sandbox, where reaching Python internals
(``__globals__``, ``__subclasses__``...) is an error rather than a silent empty string, and where no list or
dict can be changed in place. On top of it, one render (`render`) is bounded:

- time: a deadline, checked at every call, operator, loop step and output piece;
- size: no value a template builds, and no output, exceeds MAX_OUTPUT_CHARS characters. Sizes are estimated
  before an operation runs wherever its result could be much larger than its inputs (``'x' * n``,
  ``s.ljust(n)``, ``s.replace('', big)``, ``sep.join(items)``, ``('{0}' * n).format(big)``, ``'%s' % big``,
  ``big ~ big``, ``[big] * n`` printed, filters with widths), so nothing huge is allocated to be refused later.
  A value's size is what ``str()`` would print: a list counts its items' sizes, so ``[[big] * 4] * 4`` is
  measured, not just its length;
- memory in all: every value built (operators, calls, filters, concatenation, captured blocks) is charged to
  MAX_BUILT_CHARS, so a loop that keeps building values below the size bound still ends;
- loops: every step of a ``for`` loop is charged to the deadline, whatever it iterates over.

Filters that can blow up beyond any estimate and that chat templates do not use (``wordwrap``, ``urlize``,
``pprint``) are left out; ``lipsum`` is capped. Every failure surfaces as ``errors.TemplateError``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum

from offload import errors

MAX_TEMPLATE_CHARS = 1024 * 1024
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_BUILT_CHARS = 32 * 1024 * 1024
MAX_RANGE = 100_000
RENDER_SECONDS = 5.0
# Results of ``**`` and ``*`` on integers above this many bits are refused: no chat template needs big
# numbers, and computing them is the cheapest way to pin a CPU.
MAX_INT_BITS = 4096
# What a container adds per item when measured: the separator str() prints, and a pointer's worth of memory.
_ITEM_COST = 8
_OTHER_COST = 64  # objects whose str() is a short fixed text (macros, loops, generators, Undefined)
# A format width or precision of seven digits or more ("{:>9999999}", "%9999999d"), or one taken
# from the arguments ("%*d", "{:{}}"), could allocate gigabytes before any size check ran.
_WIDE_PERCENT = re.compile(r"%[-+ #0]*(?:\d{7,}|\*|\d*\.(?:\d{7,}|\*))")
_WIDE_BRACE = re.compile(r"\{[^{}]*:[^{}]*(?:\d{7,}|\{)")
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
# Filters whose integer arguments set the size of what they build.
_SIZING_FILTERS = frozenset({"center", "indent", "truncate", "batch", "slice"})
_LEFT_OUT_FILTERS = frozenset({"wordwrap", "urlize", "pprint"})
_MAX_TOJSON_INDENT = 16
_MAX_ROUND_DIGITS = 100
_MAX_STRFTIME_FORMAT = 1024
_LIPSUM_LIMITS = {"n": 100, "min": 1000, "max": 1000}


def _fail(what: str) -> errors.TemplateError:
    return errors.TemplateError(f"template {what}")


class Render:
    """One render's allowance: the deadline, the characters built so far, measured container sizes.

    Lists and dicts cannot change during a render (the sandbox is immutable), so a container's size is
    measured once and remembered by identity; the cache holds the container so its id stays its own.
    """

    __slots__ = ("_sizes", "built", "deadline", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.built = 0
        self._sizes: dict[int, tuple[object, int]] = {}

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _fail(f"rendering took longer than {self.seconds:g} s")

    def size(self, value: Any, limit: int = MAX_OUTPUT_CHARS) -> int:
        """Characters ``str(value)`` would print, about; stops counting once past `limit`."""
        if isinstance(value, str | bytes | bytearray):
            return len(value)
        if value is None or isinstance(value, bool | float):
            return 24
        if isinstance(value, int):
            return value.bit_length() // 3 + 2
        if isinstance(value, Mapping | ItemsView):
            parts: Iterable[Any] = (
                part for pair in (value.items() if isinstance(value, Mapping) else value) for part in pair
            )
            per_part = _ITEM_COST // 2
        elif isinstance(value, list | tuple | set | frozenset | KeysView | ValuesView):
            parts, per_part = value, _ITEM_COST
        else:
            return _OTHER_COST  # including _BoundedNamespace, which prints no attributes
        remembered = isinstance(value, list | tuple | dict | set | frozenset)
        known = self._sizes.get(id(value)) if remembered else None
        if known is not None:
            return known[1]
        total = 2
        for part in parts:
            total += per_part + self.size(part, limit - total)
            if total > limit:
                return total  # partial: not remembered
        if remembered:
            self._sizes[id(value)] = (value, total)
        return total

    def check(self, value: Any) -> Any:
        """`value`, if it is within MAX_OUTPUT_CHARS."""
        if self.size(value) > MAX_OUTPUT_CHARS:
            raise _fail(f"built a value longer than {MAX_OUTPUT_CHARS} characters")
        return value

    def charge(self, value: Any) -> Any:
        """`value`, newly built: checked, and its size added to what this render built."""
        self.built += self.size(self.check(value))
        if self.built > MAX_BUILT_CHARS:
            raise _fail(f"built more than {MAX_BUILT_CHARS} characters in all")
        return value

    def expect(self, estimate: int) -> None:
        """Refuse an operation whose result would be `estimate` characters, before running it."""
        if estimate > MAX_OUTPUT_CHARS:
            raise _fail(f"would build a value of about {estimate} characters, more than {MAX_OUTPUT_CHARS}")


_CURRENT: contextvars.ContextVar[Render | None] = contextvars.ContextVar("offload_template_render", default=None)


def _render() -> Render:
    """The render in progress; outside one (constant folding while compiling) a fresh allowance."""
    return _CURRENT.get() or Render(RENDER_SECONDS)


class _BoundedRange:
    """``range`` for templates: at most MAX_RANGE items, each step charged to the render's deadline."""

    __slots__ = ("_range", "_render")

    def __init__(self, render: Render, *args: int) -> None:
        self._range = range(*args)
        self._render = render
        if len(self._range) > MAX_RANGE:
            raise _fail(f"range() longer than {MAX_RANGE} items")

    def __iter__(self) -> Iterator[int]:
        for i in self._range:
            self._render.tick()
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
    """``namespace()`` whose attributes cannot grow past the size bound (``ns.s = ns.s ~ ns.s``), and whose
    str() does not print them (that would be a way to print a value without measuring it)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _render().check(value)
        super().__setitem__(name, value)

    def __repr__(self) -> str:
        return "<namespace>"


class _Buffer(list[str]):
    """Where a macro, a captured ``{% set %}`` block or a filter block collects its output: bounded as the
    template's own output is, in characters and in pieces (an empty piece still costs one)."""

    __slots__ = ("_chars",)

    def __init__(self) -> None:
        super().__init__()
        self._chars = 0

    def _add(self, piece: str) -> None:
        self._chars += len(piece) + 1
        if self._chars > MAX_OUTPUT_CHARS:
            raise _fail(f"output longer than {MAX_OUTPUT_CHARS} characters")
        _render().tick()

    def append(self, piece: str) -> None:
        self._add(piece)
        super().append(piece)

    def extend(self, pieces: Iterable[str]) -> None:
        for piece in pieces:
            self.append(piece)


class _GenerationTag(Extension):
    """HF's ``{% generation %}...{% endgeneration %}`` marks assistant text for training; here it
    renders its body unchanged so such templates still work."""

    tags = {"generation"}  # noqa: RUF012 (the base class declares it a plain set)

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _CodeGenerator(CodeGenerator):
    """Jinja's compiler with two hooks: captured output goes to a `_Buffer`, and ``~`` to a checked join."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_TICK_FILTER = "offload.tick"  # not an identifier, so no template can name it


def _ticking(items: Iterable[Any]) -> Iterator[Any]:
    render = _render()
    for item in items:
        render.tick()
        yield item


# --- method calls whose result can dwarf their inputs ----------------------------------------


def _expect_str_method(
    render: Render, target: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Check a str/bytes method call before it runs; returns the positional arguments to call it with (an
    iterator given to join is read into a tuple so it can be measured)."""
    text = target.decode("latin-1") if isinstance(target, bytes) else target
    plain = tuple(arg.decode("latin-1") if isinstance(arg, bytes) else arg for arg in args)
    if name in _WIDTH_METHODS:
        width = plain[0] if plain else kwargs.get("width")
        if isinstance(width, int):
            render.expect(width)
    elif name == "expandtabs":
        tabsize = plain[0] if plain else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            render.expect(len(text) + text.count("\t") * max(tabsize, 0))
    elif name == "replace" and len(plain) >= 2 and isinstance(plain[0], str):
        count = plain[2] if len(plain) > 2 else kwargs.get("count", -1)
        _expect_replace(render, text, plain[0], plain[1], count)
    elif name == "join" and args:
        items = tuple(_ticking(args[0]))
        render.expect(render.size(items) + len(text) * max(0, len(items) - 1))
        return (items, *args[1:])
    elif name == "translate" and plain and isinstance(plain[0], Mapping):
        widest = max((render.size(value) for value in plain[0].values()), default=1)
        render.expect(len(text) * max(widest, 1))
    return args


def _expect_replace(render: Render, text: str, old: str, new: Any, count: Any = -1) -> None:
    """Refuse ``text.replace(old, new, count)`` before it runs when its result would be too large (an empty
    `old` matches between every character)."""
    hits = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    render.expect(len(text) + hits * max(0, render.size(new) - len(old)))


def _percent_estimate(render: Render, fmt: str, values: Any) -> int:
    """Characters ``fmt % values`` could print: every field may print all of `values`."""
    if _WIDE_PERCENT.search(fmt):
        raise _fail("format field too wide")
    return len(fmt) + fmt.count("%") * render.size(values)


# --- filters ----------------------------------------------------------------------------------


def _expect_filter(render: Render, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Check a filter's arguments (after any context argument) before it runs; returns them, an iterator given
    to join read into a tuple."""
    if name in _SIZING_FILTERS:
        for arg in (*args[1:], *kwargs.values()):  # args[0] is the value being filtered
            if isinstance(arg, int) and abs(arg) > MAX_OUTPUT_CHARS:
                raise _fail(f"filter {name!r} argument too large")
    if not args:
        return args
    value = args[0]
    if name == "join":
        items = tuple(_ticking(value)) if not isinstance(value, str) else value
        separator = args[1] if len(args) > 1 else kwargs.get("d", "")
        render.expect(render.size(items) + render.size(separator) * max(0, len(items) - 1))
        return (items, *args[1:])
    if name == "replace" and len(args) >= 3:
        _expect_replace(render, str(value), str(args[1]), args[2])
    elif name == "indent":
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        text = str(value)
        render.expect(len(text) + (text.count("\n") + 1) * (width if isinstance(width, int) else render.size(width)))
    elif name == "format" and isinstance(value, str):
        render.expect(_percent_estimate(render, value, (*args[1:], *kwargs.values())))
    elif name == "sum":
        start = args[2] if len(args) > 2 else kwargs.get("start", 0)
        if isinstance(start, bool) or not isinstance(start, int | float):
            raise _fail("filter 'sum' takes a number as start")
    elif name == "round":
        digits = args[1] if len(args) > 1 else kwargs.get("precision", 0)
        if isinstance(digits, int) and abs(digits) > _MAX_ROUND_DIGITS:
            raise _fail("filter 'round' precision too large")
    return args


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter: arguments measured and amplifying calls estimated before it runs, its result charged."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/environment goes first

    @functools.wraps(func)  # keeps jinja_pass_arg, so context-taking filters still get it
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        render = _render()
        render.tick()
        for arg in (*args[skip:], *kwargs.values()):
            render.check(arg)
        checked = _expect_filter(render, name, args[skip:], kwargs)
        return render.charge(func(*args[:skip], *checked, **kwargs))

    return wrapper


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """HF's tojson: plain JSON, no HTML escaping (Jinja's own escapes '<' and '&'); written piece by piece so
    indentation cannot grow the text past the bound before it is measured."""
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= _MAX_TOJSON_INDENT):
        raise _fail(f"tojson indent must be an integer from 0 to {_MAX_TOJSON_INDENT}")
    if separators is not None and sum(len(str(part)) for part in separators) > _MAX_TOJSON_INDENT:
        raise _fail("tojson separators too long")
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    render = _render()
    pieces: list[str] = []
    total = 0
    for piece in encoder.iterencode(value):
        total += len(piece)
        if total > MAX_OUTPUT_CHARS:
            raise _fail(f"built a value longer than {MAX_OUTPUT_CHARS} characters")
        render.tick()
        pieces.append(piece)
    return "".join(pieces)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    for label, given in (("n", n), ("min", min), ("max", max)):
        if not isinstance(given, int) or given > _LIPSUM_LIMITS[label]:
            raise _fail(f"lipsum {label} must be an integer up to {_LIPSUM_LIMITS[label]}")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


def _raise_exception(message: object) -> None:
    raise errors.TemplateError(f"chat template error: {short(str(message))}")


def _strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str) or len(fmt) > _MAX_STRFTIME_FORMAT:
        raise _fail(f"strftime_now format longer than {_MAX_STRFTIME_FORMAT} characters")
    return datetime.now().strftime(fmt)


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the environment --------------------------------------------------------------------------


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    @staticmethod
    def new_buffer() -> _Buffer:
        return _Buffer()

    def concat(self, pieces: Iterable[str]) -> str:
        # Joins captured output (macros, {% set %} blocks); _Buffer bounded the pieces already.
        return str(_render().charge("".join(pieces)))

    @staticmethod
    def checked_join(parts: Sequence[Any]) -> str:
        """The ``~`` operator: sizes first, then the string, charged."""
        render = _render()
        render.tick()
        render.expect(sum(render.size(part) for part in parts))
        return str(render.charge("".join(map(str, parts))))

    def _generate(
        self, source: nodes.Template, name: str | None, filename: str | None, defer_init: bool = False
    ) -> str:
        # Every for loop iterates through a ticking wrapper, so loops over big lists end at the deadline too.
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _TICK_FILTER, [], [], None, None, lineno=loop.lineno)
        return super()._generate(source, name, filename, defer_init)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # The default returns an Undefined that renders as "", hiding the attempt; refuse instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja swaps str.format for its own formatter when the attribute is read; the call that follows
        # never sees the string again, so the estimate is made in this wrapper.
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        if _WIDE_BRACE.search(fmt):
            raise _fail("format field too wide")

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            render = _render()
            render.expect(len(fmt) + fmt.count("{") * sum(render.size(arg) for arg in (*args, *kwargs.values())))
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        render = _render()
        render.tick()
        both_ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))
        if operator == "**" and both_ints and abs(left) > 1:
            if right * left.bit_length() > MAX_INT_BITS:
                raise _fail("arithmetic result too large")
        elif operator == "*" and both_ints:
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _fail("arithmetic result too large")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int):
                    render.expect(render.size(seq) * count)
        elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            render.expect(render.size(left) + render.size(right))
        elif operator == "%" and isinstance(left, str):
            render.expect(_percent_estimate(render, left, right))
        return render.charge(self.binop_table[operator](left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        render = _render()
        render.tick()
        # Checking arguments, not just results, stops a recursive macro that doubles a string.
        for arg in (*args, *kwargs.values()):
            render.check(arg)
        target = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(target, str | bytes):
            args = _expect_str_method(render, target, name, args, kwargs)
        elif isinstance(target, int) and name == "to_bytes":
            length = args[0] if args else kwargs.get("length", 1)
            if isinstance(length, int):
                render.expect(length)
        return render.charge(super().call(__context, __obj, *args, **kwargs))


@functools.lru_cache(maxsize=1)
def environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag])
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items() if name not in _LEFT_OUT_FILTERS}
    env.filters[_TICK_FILTER] = _ticking
    env.finalize = _render_check
    env.globals["lipsum"] = _lipsum
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _render_check(value: Any) -> Any:
    # Every {{ expression }} passes here before str(): a value that would print too much never does.
    return _render().check(value)


@functools.lru_cache(maxsize=32)
def compiled_template(source: str) -> jinja2.Template:
    """The template compiled in the sandbox; cached by source. Raises TemplateError."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise errors.TemplateError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise errors.TemplateError(f"invalid template: {short(exc.message or str(exc))} (line {exc.lineno})") from exc
    except RecursionError as exc:
        raise errors.TemplateError("invalid template: nested too deeply") from exc
    except errors.OffloadError:
        raise
    except Exception as exc:  # the compiler is foreign code; whatever it raises is the template's fault
        raise errors.TemplateError(f"invalid template: {short(f'{type(exc).__name__}: {exc}')}") from exc


def render(template: jinja2.Template, variables: Mapping[str, Any], *, seconds: float = RENDER_SECONDS) -> str:
    """Render a compiled template with `variables` (plus a bounded ``range`` and ``namespace``) within the
    bounds in the module docstring. Raises TemplateError for every failure: syntax found late, undefined
    values used wrongly, sandbox violations, ``raise_exception``, limits."""
    state = Render(seconds)
    token = _CURRENT.set(state)

    def bounded_range(*args: int) -> _BoundedRange:
        # A closure, not a partial: a partial's public .args would hand the template this render's state.
        return _BoundedRange(state, *args)

    context = {**variables, "range": bounded_range, "namespace": _BoundedNamespace}
    pieces: list[str] = []
    total = 0
    try:
        for piece in template.generate(context):
            total += len(piece) + 1
            if total > MAX_OUTPUT_CHARS:
                raise _fail(f"output longer than {MAX_OUTPUT_CHARS} characters")
            state.tick()
            pieces.append(piece)
    except errors.OffloadError:
        raise
    except SecurityError as exc:
        raise errors.TemplateError(f"template blocked by the sandbox: {short(str(exc))}") from exc
    except jinja2.TemplateError as exc:
        raise errors.TemplateError(f"template error: {short(str(exc))}") from exc
    except RecursionError as exc:
        raise errors.TemplateError("template recursed too deeply") from exc
    except MemoryError as exc:
        raise errors.TemplateError("template ran out of memory") from exc
    except Exception as exc:  # template code runs foreign operations; translate whatever they raise
        raise errors.TemplateError(f"template error: {short(f'{type(exc).__name__}: {exc}')}") from exc
    finally:
        _CURRENT.reset(token)
    return "".join(pieces)

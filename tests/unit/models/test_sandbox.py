"""The render bounds of models/sandbox.py, operation by operation: refused before the big value exists."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from offload import errors
from offload.models import sandbox

BIG = "{% set a = 'x' * 4000000 %}"


def render(source: str, **variables: object) -> str:
    return sandbox.render(sandbox.compiled_template(source), {"messages": [], **variables})


@pytest.mark.parametrize(
    "source",
    [
        BIG + "{% set b = a ~ a %}",
        BIG + "{{ (a ~ a)|length }}",
        BIG + "{{ [a] * 2 }}",
        BIG + "{{ ([a] * 1000)|join }}",
        BIG + "{{ ['x'] * 100000 | join(a) }}",
        BIG + "{{ a.join(['x'] * 100000) }}",
        BIG + "{{ a.join(range(10000)|map('string')) }}",
        BIG + "{{ 'x'|replace('x', a)|replace('x', a) }}",
        BIG + "{{ 'xx'.replace('', a) }}",
        BIG + "{{ ('x\n' * 1000000)|indent(a) }}",
        BIG + "{{ ('%(x)s' * 100000) % {'x': a} }}",
        BIG + "{{ ('%s' * 3) | format(a, a, a) }}",
        BIG + "{{ '{}{}'.format(a, a) }}",
        BIG + "{{ '{x}{x}'.format_map({'x': a}) }}",
        BIG + "{{ 'x'.translate({120: a}) * 1 }}{{ ('x' * 10).translate({120: a}) }}",
        BIG + "{% set l = [a, a] %}{{ l|string }}",
        BIG + "{% set l = [a, a] %}{{ l|tojson }}",
        BIG + "{% set l = [a, a] %}{{ {'k': l}.items() }}",
        BIG + "{% set l = [a, a] %}{{ l }}",
        BIG + "{% set n = namespace(l=[a, a]) %}",
        "{{ ('\t' * 1000).expandtabs(100000000) }}",
        "{{ 'x'.center(1000000000) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ 'x'.encode().ljust(1000000000) }}",
        "{{ (1).to_bytes(1000000000, 'big') }}",
        "{{ (10 ** 1000) * (10 ** 1000) }}",
        "{{ [[1]] * 1000 | sum(start=[]) }}",
        "{{ 5 | round(-1000000000) }}",
        "{{ strftime_now('%c' * 100000) }}",
        "{{ lipsum(1000) }}",
        "{{ [1, [2]] | tojson(indent=1000000) }}",
        "{{ [1] | tojson(indent='" + " " * 100 + "') }}",
        "{{ 'x' | wordwrap(1) }}",
        "{{ 'http://a' | urlize(target='x') }}",
        "{{ [1] | pprint }}",
    ],
)
def test_refused_before_the_value_exists(source: str) -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(errors.TemplateError):
            render(source)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < sandbox.RENDER_SECONDS  # refused by an estimate, not by the deadline
    # The 4 MB string of BIG, its copies in flight and the sandbox's bookkeeping; never the value refused.
    assert peak < 40 * 1024 * 1024, peak


def test_values_built_in_all_are_bounded() -> None:
    source = "{% for i in range(100000) %}{% set b = 'y' * 3000000 ~ i %}{% endfor %}"
    with pytest.raises(errors.TemplateError, match=f"built more than {sandbox.MAX_BUILT_CHARS} characters in all"):
        render(source)


def test_buffered_output_is_bounded_in_pieces_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty pieces cost nothing to print but a list slot each: a macro cannot collect millions of them.
    monkeypatch.setattr(sandbox, "MAX_OUTPUT_CHARS", 10_000)
    source = "{% macro m() %}{% for i in range(100000) %}{{ '' }}{% endfor %}{% endmacro %}{{ m() }}"
    with pytest.raises(errors.TemplateError, match="output longer than 10000 characters"):
        render(source)
    assert render("{% macro m() %}{% for i in range(9000) %}{{ '' }}{% endfor %}{% endmacro %}{{ m() }}") == ""


def test_loops_over_lists_are_charged_to_the_deadline() -> None:
    source = "{% set l = range(100000)|list %}{% for x in l %}{% for y in l %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(errors.TemplateError, match=r"longer than 0\.3 s"):
        sandbox.render(sandbox.compiled_template(source), {}, seconds=0.3)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ ['a', 'b'] | join(', ') }}", "a, b"),
        ("{{ messages | map(attribute='role') | join('|') }}", "user|assistant"),
        ("{{ ', '.join(messages | map(attribute='content')) }}", "hi, hello"),
        ("{{ 'a-b'.replace('-', '+') }}|{{ 'ab' | replace('b', 'c') }}", "a+b|ac"),
        ("{{ 'x'.ljust(3, '.') }}|{{ '7'.zfill(3) }}|{{ 'ab'.center(4) }}", "x..|007| ab "),
        ("{{ 'a\tb'.expandtabs(4) }}", "a   b"),
        ("{{ '{}:{}'.format('k', 1) }}|{{ '%s=%d' % ('n', 2) }}|{{ '%s!' | format('hey') }}", "k:1|n=2|hey!"),
        ("{{ {'a': [1, 2]} | tojson }}", '{"a": [1, 2]}'),
        ("{{ {'a': [1]} | tojson(indent=2) }}", '{\n  "a": [\n    1\n  ]\n}'),
        ("{{ 'line\nnext' | indent(2, first=True) }}", "  line\n  next"),
        ("{{ [1, 2, 3] | sum }}|{{ [1.5] | sum(start=1) }}", "6|2.5"),
        ("{{ 2.567 | round(2) }}|{{ (3).to_bytes(2, 'big') }}", "2.57|b'\\x00\\x03'"),
        (
            "{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s ~ m.content %}{% endfor %}"
            "{{ ns.s }}",
            "hihello",
        ),
        ("{{ ns }}{% set ns = namespace(a=1) %}{{ ns }}", "<namespace>"),
        ("{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m('a') ~ m('b') }}", "[a][b]"),
        ("{% set b %}{{ 'x' * 3 }}{% endset %}{{ b }}", "xxx"),
        ("{% for x in messages recursive %}{{ x.role }}{% endfor %}", "userassistant"),
        ("{{ (2 ** 100) * 3 }}", str(2**100 * 3)),
        ("{{ lipsum(1, html=False, min=2, max=3) | length > 0 }}", "True"),
    ],
)
def test_ordinary_templates_still_work(source: str, expected: str) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render(source, messages=messages) == expected


def test_the_range_global_hands_out_nothing_of_the_render() -> None:
    # A plain closure: no public attributes (a functools.partial would show the render state as .args).
    assert render("{{ range.args }}{{ range.func }}{{ range.keywords is defined }}") == "False"
    with pytest.raises(errors.TemplateError, match="sandbox"):
        render("{{ range.__closure__ }}")

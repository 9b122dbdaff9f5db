"""{var} interpolation of %%tmchat bodies: str.format where braces name variables, else verbatim."""

from __future__ import annotations

import json

import pytest

from tmlab.jupyter.template import interpolate


class Obj:
    attr = "ATTR"

    @property
    def broken(self) -> str:
        raise RuntimeError("boom")


NS = {"topic": "tokens", "n": 3.14159, "d": {"k": "V", "0": "zero"}, "o": Obj(), "xs": [10, 20]}


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        ("Explain {topic}.", "Explain tokens."),
        ("{o.attr} {d[k]} {xs[1]}", "ATTR V 20"),
        ("{n:.2f} {topic!r}", "3.14 'tokens'"),
        ("{{topic}} is written {topic}", "{topic} is written tokens"),
        ("{{{topic}}}", "{tokens}"),
        # a field that names no variable stays as written, next to one that does
        ("{topic}: {undefined} and {0} and {}", "tokens: {undefined} and {0} and {}"),
        ('{topic} as JSON: {"a": 1}', 'tokens as JSON: {"a": 1}'),
        ("{o.missing} {o.broken} {d[nokey]} {topic}", "{o.missing} {o.broken} {d[nokey]} tokens"),
    ],
)
def test_fields_that_name_variables_are_replaced(body: str, sent: str) -> None:
    assert interpolate(body, NS) == sent


@pytest.mark.parametrize(
    "body",
    [
        '{"a": 1}',
        '{"a": {"b": [1, 2, {"c": null}]}}',
        "def f():\n    return {x: 1 for x in y}\n",
        "for (i = 0; i < n; i++) { a[i] = {}; }",
        "{undefined}",
        "{{ jinja }} and }{ and {{",
        "{{literal}}",  # escapes alone name no variable: nothing to format
        "",
        "no braces at all",
    ],
)
def test_a_body_whose_braces_name_no_variable_is_sent_unchanged(body: str) -> None:
    assert interpolate(body, NS) == body


def test_json_body_stays_valid_json() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": {"m": {}}})
    assert json.loads(interpolate(body, NS)) == json.loads(body)


def test_an_escaped_variable_turns_on_the_format_rules() -> None:
    # {{topic}} names a variable: the writer wanted str.format, so the braces collapse
    assert interpolate("write {{topic}} literally", NS) == "write {topic} literally"

"""``{name}`` interpolation of a ``%%tmchat`` cell body from the notebook's variables.

Like :meth:`str.format` with the user namespace as keyword arguments (``{name}``,
``{obj.attr}``, ``{d[key]}``, ``{x!r}``, ``{x:.2f}``; ``{{`` and ``}}`` are literal braces), with
two differences that keep bodies full of JSON or code intact:

- a field that does not name a defined variable (``{"a": 1}``, ``{x}`` with no ``x``,
  ``{0}``, a failing attribute or format) is left exactly as written, never an error;
- a body whose braces name no variable at all is sent unchanged, ``{{``/``}}`` included:
  ``{"a": {"b": 1}}`` stays valid JSON. As soon as one field names a variable (also an
  escaped ``{{name}}``), the str.format rules apply to the whole body.

A body that is sent with a ``{word}`` left as written because no variable has that name (a
prompt template whose variable was not defined: ``Explain tokens to a {audience}.``) gets a
one-line notice from :func:`unnamed_fields`; a body that reads as JSON or code gets none.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

__all__ = ["interpolate", "unnamed_fields", "unnamed_notice"]

# name, then .attr / [key] parts, then !conversion and :format_spec (as str.format has them)
_FIELD = re.compile(r"([^\W\d]\w*(?:\.[^\W\d]\w*|\[[^\[\]{}]+\])*)(?:!([rsa]))?(?::([^{}]*))?")
_BRACED = re.compile(r"\{([^{}]*)\}")
_ESCAPED = re.compile(r"\{\{([^{}]*)\}\}")
_formatter = string.Formatter()


def _resolve(field: str, namespace: Mapping[str, Any]) -> str | None:
    """The formatted value of one replacement field, or None when it names no variable."""
    m = _FIELD.fullmatch(field)
    if m is None:
        return None
    name, conversion, spec = m.groups()
    try:
        obj, _ = _formatter.get_field(name, (), namespace)
        if conversion:
            obj = _formatter.convert_field(obj, conversion)
        return _formatter.format_field(obj, spec or "")
    except Exception:  # a missing key or attribute, a bad format spec: not a variable here
        return None


def interpolate(body: str, namespace: Mapping[str, Any]) -> str:
    """``body`` with the fields that name variables of ``namespace`` replaced (see module)."""
    if "{" not in body and "}" not in body:
        return body
    out: list[str] = []
    named = False
    i, n = 0, len(body)
    while i < n:
        j = min((k for k in (body.find("{", i), body.find("}", i)) if k != -1), default=n)
        out.append(body[i:j])
        if j == n:
            break
        i = j
        if body.startswith("{{", i):
            escaped = _ESCAPED.match(body, i)
            if escaped and _resolve(escaped.group(1), namespace) is not None:
                named = True  # {{name}}: the writer escaped a variable, so str.format rules
            out.append("{")
            i += 2
        elif body.startswith("}}", i):
            out.append("}")
            i += 2
        elif body[i] == "{" and (field := _BRACED.match(body, i)):
            value = _resolve(field.group(1), namespace)
            if value is None:
                out.append(field.group(0))
            else:
                out.append(value)
                named = True
            i = field.end()
        else:
            out.append(body[i])
            i += 1
    return "".join(out) if named else body


_WORD = re.compile(r"(?<![{$])\{([^\W\d]\w*)\}(?!\})")
# What code or JSON has and a prompt rarely does: a brace alone on a line or closing one, a
# JSON object's start, a block or statement end, an assignment or call around the braces, a
# "key": value pair, an f-string.
_CODE = re.compile(
    r"^\s*[{\[]\s*$|^\s*[}\]]|^\s*\{\s*\"|[;{]\s*$|[=(]\s*\{|\}\s*[);]|\{\s*\"\w*\"\s*:"
    r"|\bf[\"'][^\"']*\{",
    re.MULTILINE,
)


def unnamed_fields(body: str, namespace: Mapping[str, Any]) -> list[str]:
    """The ``{word}`` fields of a prose ``body`` that name no variable of ``namespace``, in
    order, once each: a template's variable that was not defined, sent as written.

    Only single-brace plain names count (``{audience}``, not ``{{audience}}``, ``{0}`` or
    ``{"a": 1}``), and none in a body that reads as JSON or code (braces opening a line or a
    block, ``=``/``(`` before a brace, ``;``, ``"key":``): there braces are the text itself.
    """
    if "{" not in body or _CODE.search(body):
        return []
    names = []
    for m in _WORD.finditer(body):
        name = m.group(1)
        if name not in names and _resolve(name, namespace) is None:
            names.append(name)
    return names


def unnamed_notice(body: str, namespace: Mapping[str, Any]) -> str | None:
    """One line saying which ``{word}`` fields name no variable (``None`` when all do)."""
    names = unnamed_fields(body, namespace)
    if not names:
        return None
    fields = ", ".join("{" + n + "}" for n in names)
    first = names[0]
    verb = "names no variable" if len(names) == 1 else "name no variables"
    return (
        f"note: {fields} {verb} in this notebook, so the braces are sent as written; "
        f"define it first ({first} = ...) to fill it in"
    )

"""The ``%%tmchat`` flags, generated from the parameter table :data:`tmlab.PARAMS`.

Every parameter becomes ``--kebab-case`` with the table's type and check: numbers parse as
``int``/``float`` and are checked against the table's range, enums against its choices,
booleans are switches (``--ignore-eos`` / ``--no-ignore-eos``), JSON parameters take a JSON
string (or a plain string: ``--stop "###"``). A comma-separated list of numbers or choices
(``--temperature 0,0.7,1.4``) asks for a small sweep. The magic's own flags (``--model``,
``--system``, ``--logprobs N``, ``--json``, ``--no-stream``, ``--show``, ``--out``,
``--continue``, ``--new``, ``--debug``, ``--repeat``, ``--prefill``, ``--branch``) are
declared here once, too.

Argparse never exits or prints here: every problem is a :class:`FlagError` with one line
that names the flag and what it accepts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tmlab.errors import ParameterError
from tmlab.params import PARAMS, Param, validate_params

__all__ = [
    "DEFAULT_SHOW",
    "OWN_FLAGS",
    "SHOW_CHOICES",
    "FlagError",
    "Flags",
    "LineParser",
    "Own",
    "flag_name",
    "help_text",
    "parse_flags",
]

SHOW_CHOICES = ("answer", "reasoning", "logprobs", "trace", "usage", "raw")
DEFAULT_SHOW = frozenset({"answer", "reasoning", "usage"})

# Table parameters the magic sets through its own flags instead (``--logprobs [N]`` sets
# ``logprobs`` and ``top_logprobs`` at once); ``--top-logprobs`` is still generated.
_OWN = frozenset({"logprobs"})
_SWEEPABLE = ("float", "int", "enum")
_IDENTIFIER = re.compile(r"[^\W\d]\w*")


class FlagError(ValueError):
    """A flag of ``%%tmchat`` is wrong; the message is one line naming it and what is allowed."""


def flag_name(param: str) -> str:
    """The flag of a table parameter: ``top_k`` -> ``--top-k``."""
    return "--" + param.replace("_", "-")


@dataclass(frozen=True)
class Own:
    """One of the magic's own flags: names, metavar, what it takes, one-line help."""

    names: tuple[str, ...]
    metavar: str | None
    allowed: str
    help: str
    default: str


# The magic's own flags, in help order. Their argparse definitions are in _parser().
OWN_FLAGS: tuple[Own, ...] = (
    Own(
        ("--model", "-m"),
        "NAME",
        "a model the server serves (%tmmodels); a comma list: sweep",
        "the model to ask",
        "%tmconfig model, else the server's",
    ),
    Own(("--system",), "TEXT", "a string", "a system message sent first", "none"),
    Own(
        ("--logprobs",),
        "[N]",
        "N in 0..20",
        "return token logprobs and the N most likely alternatives per token "
        "(sets logprobs and top_logprobs)",
        "off",
    ),
    Own(
        ("--json",),
        None,
        "switch",
        "ask for a JSON object (response_format={'type': 'json_object'})",
        "off",
    ),
    Own(
        ("--no-stream",),
        None,
        "switch",
        "wait for the whole answer instead of streaming it",
        "stream",
    ),
    Own(
        ("--show",),
        "LIST",
        ",".join(SHOW_CHOICES),
        "what the output shows, comma-separated",
        ",".join(sorted(DEFAULT_SHOW)) + " (+logprobs with --logprobs)",
    ),
    Own(
        ("--out",),
        "VAR",
        "a Python identifier",
        "also store the ChatResult in this notebook variable",
        "none (the cell's value is the ChatResult: _ / Out[n])",
    ),
    Own(
        ("--continue",),
        None,
        "switch",
        "send this notebook's earlier %%tmchat turns first, so a follow-up works",
        "off",
    ),
    Own(
        ("--new",),
        None,
        "switch",
        "forget the earlier %%tmchat turns and start a new conversation",
        "off",
    ),
    Own(("--debug",), None, "switch", "show the full traceback on error", "off"),
    Own(
        ("--trace",),
        "[POSITIONS]",
        "positions like 0-4,9 (each in 0..255)",
        "show the sampler's stages under the answer: the distribution after each stage of "
        "the chain, at every position or at these (sets sampler_trace; tmlab's embedded server)",
        "off",
    ),
    Own(
        ("--repeat",),
        "N",
        "int ≥ 1",
        "send the request N times (a sweep; with comma lists: per grid cell)",
        "1",
    ),
    Own(
        ("--prefill",),
        "TEXT",
        "a string",
        "the answer starts with TEXT and the model continues it (continue_final_message; "
        "a server other than the embedded one is checked once first)",
        "none",
    ),
    Own(
        ("--branch",),
        "ID:POS[:TOKEN]",
        "history id : position : an alternative's text, or #N for a token id",
        "continue answer ID (this session's, or any asked with logprobs) from position POS "
        "with TOKEN "
        "(default: the most likely alternative not generated); on one line: %tmchat --branch ...",
        "none",
    ),
)


@dataclass
class Flags:
    """What a ``%%tmchat`` line asked for."""

    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    model: str | None = None
    system: str | None = None
    stream: bool = True
    show: frozenset[str] = DEFAULT_SHOW
    out: str | None = None
    continue_: bool = False
    new: bool = False
    debug: bool = False
    repeat: int | None = None
    prefill: str | None = None
    branch: tuple[int, int, str | int | None] | None = None

    @property
    def models(self) -> list[str] | None:
        """The models of a sweep over ``--model a,b``; None for one model."""
        if self.model is None or "," not in self.model:
            return None
        return [m.strip() for m in self.model.split(",") if m.strip()]

    @property
    def is_sweep(self) -> bool:
        """True when the line asks for several requests (comma lists or --repeat)."""
        several = bool(self.grid) or self.models is not None
        return several or (self.repeat is not None and self.repeat > 1)


class LineParser(argparse.ArgumentParser):
    """An ArgumentParser that raises FlagError (one line) instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise FlagError(_explain_argparse(message))

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise FlagError(message or "bad flags")


def _explain_argparse(message: str) -> str:
    """Turn argparse's messages into one line that names the flag and what it accepts."""
    m = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
    if m:
        flag, rest = m.groups()
        allowed = _allowed_of(flag)
        if rest.startswith("expected one argument"):
            return f"{flag} needs a value" + (f" ({allowed})" if allowed else "")
        if rest.startswith("ignored explicit argument"):
            return f"{flag} is a switch and takes no value"
        return f"{flag}: {rest}"
    m = re.match(r"unrecognized arguments: (.*)", message)
    if m:
        words = m.group(1).split()
        flag = words[0]
        if flag.startswith("-"):
            close = difflib.get_close_matches(flag, _all_flags(), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            return f"unknown flag {flag}{hint} (%%tmchat? lists them)"
        return f"unexpected value {flag!r} (values follow their flag; quote text with spaces)"
    return message


def _all_flags() -> list[str]:
    names = [flag_name(p) for p in PARAMS if p not in _OWN]
    return names + [n for own in OWN_FLAGS for n in own.names]


def _allowed_of(flag: str) -> str | None:
    for p in PARAMS.values():
        if flag == flag_name(p.name):
            return p.allowed
    for own in OWN_FLAGS:
        if flag in own.names:
            return own.allowed
    return None


def _scalar(p: Param, text: str) -> Any:
    """Parse one value of parameter ``p`` from text; range checks come later (the table)."""
    if p.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({p.allowed})") from None
    if p.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int ({p.allowed})") from None
    if p.kind == "enum":
        if text not in p.choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {p.allowed}")
        return text
    if p.kind == "json":
        try:
            return json.loads(text)
        except ValueError:
            return text  # a plain string: --stop "###", --tool-choice auto
    return text


def _converter(p: Param) -> Any:
    def convert(text: str) -> Any:
        if p.kind in _SWEEPABLE and "," in text:
            values = [_scalar(p, part.strip()) for part in text.split(",") if part.strip()]
            if not values:
                raise argparse.ArgumentTypeError(f"{text!r} lists no value ({p.allowed})")
            return _Several(values)
        return _scalar(p, text)

    convert.__name__ = p.kind  # argparse names the type in some messages
    return convert


class _Several(list[Any]):
    """Several values of one flag (a comma list): a sweep over them."""


def _metavar(p: Param) -> str | None:
    if p.kind == "bool":
        return None
    if p.kind == "enum":
        return "{" + ",".join(p.choices) + "}"
    return {"float": "FLOAT", "int": "INT", "str": "TEXT", "json": "JSON"}[p.kind]


def _parser() -> LineParser:
    parser = LineParser(prog="%%tmchat", add_help=False, allow_abbrev=False, exit_on_error=False)
    for p in PARAMS.values():
        if p.name in _OWN:
            continue
        flag = flag_name(p.name)
        if p.kind == "bool":
            parser.add_argument(
                flag, dest=p.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS
            )
        else:
            parser.add_argument(
                flag,
                dest=p.name,
                type=_converter(p),
                metavar=_metavar(p),
                default=argparse.SUPPRESS,
            )
    own = parser.add_argument_group("magic")
    own.add_argument("--model", "-m", dest="_model")
    own.add_argument("--system", dest="_system")
    own.add_argument("--logprobs", dest="_logprobs", nargs="?", const=True, type=_top_n)
    own.add_argument("--json", dest="_json", action="store_true")
    own.add_argument("--no-stream", dest="_no_stream", action="store_true")
    own.add_argument("--show", dest="_show", type=_show)
    own.add_argument("--out", dest="_out", type=_identifier)
    own.add_argument("--continue", dest="_continue", action="store_true")
    own.add_argument("--new", dest="_new", action="store_true")
    own.add_argument("--debug", dest="_debug", action="store_true")
    own.add_argument("--trace", dest="_trace", nargs="?", const=True, type=_positions)
    own.add_argument("--repeat", dest="_repeat", type=_repeat)
    own.add_argument("--prefill", dest="_prefill")
    own.add_argument("--branch", dest="_branch", type=_branch)
    return parser


def _top_n(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int (N in 0..20)") from None
    if not 0 <= n <= 20:
        raise argparse.ArgumentTypeError(f"{n} is out of range (N in 0..20)")
    return n


def _positions(text: str) -> list[int]:
    """``0-4,9`` → [0, 1, 2, 3, 4, 9] (generated positions to trace, each in 0..255)."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            a = int(low)
            b = int(high) if high else a
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of positions like 0-4,9"
            ) from None
        if not 0 <= a <= b < 256:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r}: positions are in 0..255 (the first 256 generated tokens)"
            )
        out.extend(range(a, b + 1))
    return sorted(set(out))


def _show(text: str) -> frozenset[str]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in parts if s not in SHOW_CHOICES]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"{','.join(bad) or repr(text)} is not in {','.join(SHOW_CHOICES)}"
        )
    return frozenset(parts)


def _identifier(text: str) -> str:
    if not _IDENTIFIER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python identifier")
    return text


def _repeat(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int ≥ 1")
    return n


def _branch(text: str) -> tuple[int, int, str | int | None]:
    """``ID:POS[:TOKEN]``: TOKEN is an alternative's text (may hold colons), ``#N`` an id."""
    parts = text.split(":", 2)
    try:
        row, position = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ID:POS[:TOKEN] (e.g. 12:5, 12:5:' sea', 12:5:#1234)"
        ) from None
    if row < 1 or position < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: ID ≥ 1 and POS ≥ 0")
    if len(parts) < 3 or parts[2] == "":
        return row, position, None
    token = parts[2]
    if token.startswith("#") and token[1:].isdigit():
        return row, position, int(token[1:])
    return row, position, token


_PARSER: LineParser | None = None


def parse_flags(line: str) -> Flags:
    """Parse a ``%%tmchat`` line; raises :class:`FlagError` (one line) on any problem.

    Values are checked against the table here, so a bad value is reported before anything
    is sent.
    """
    global _PARSER
    if _PARSER is None:
        _PARSER = _parser()
    try:
        words = shlex.split(line)
    except ValueError as exc:  # "No closing quotation"
        raise FlagError(f"cannot split the flags: {exc} (quote text with spaces)") from None
    try:
        ns = vars(_PARSER.parse_args(words))
    except argparse.ArgumentError as exc:  # exit_on_error=False raises these
        raise FlagError(_explain_argparse(str(exc))) from None
    flags = Flags(
        model=ns.pop("_model"),
        system=ns.pop("_system"),
        stream=not ns.pop("_no_stream"),
        out=ns.pop("_out"),
        continue_=ns.pop("_continue"),
        new=ns.pop("_new"),
        debug=ns.pop("_debug"),
        repeat=ns.pop("_repeat"),
    )
    if flags.continue_ and flags.new:
        raise FlagError("--continue and --new exclude each other")
    flags.prefill = ns.pop("_prefill")
    flags.branch = ns.pop("_branch")
    _check_continuation(flags, ns)
    top = ns.pop("_logprobs")
    trace = ns.pop("_trace")
    as_json = ns.pop("_json")
    show = ns.pop("_show")
    params: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    for name, value in ns.items():
        if isinstance(value, _Several):
            grid[name] = list(value)
        else:
            params[name] = value
    if top is not None:
        params["logprobs"] = True
        if top is not True:
            params["top_logprobs"] = top
    if trace is not None:
        if "sampler_trace" in params:
            raise FlagError("--trace and --sampler-trace exclude each other")
        params["sampler_trace"] = True if trace is True else {"positions": trace}
    if as_json:
        if "response_format" in params:
            raise FlagError("--json and --response-format exclude each other")
        params["response_format"] = {"type": "json_object"}
    _check(params, grid)
    flags.params = params
    flags.grid = grid
    if show is not None:
        flags.show = show
    else:
        if params.get("logprobs"):
            flags.show = flags.show | {"logprobs"}
        if trace is not None:
            flags.show = flags.show | {"trace"}
    return flags


def _check_continuation(flags: Flags, ns: dict[str, Any]) -> None:
    """--prefill and --branch: one request, which continues an assistant message."""
    used = [
        f for f, v in (("--prefill", flags.prefill), ("--branch", flags.branch)) if v is not None
    ]
    if not used:
        return
    if len(used) == 2:
        raise FlagError("--prefill and --branch exclude each other")
    several = any(isinstance(v, _Several) for v in ns.values()) or "," in (flags.model or "")
    if several or (flags.repeat or 1) > 1:
        raise FlagError(f"{used[0]} makes one request: no comma lists or --repeat with it")
    if flags.branch is not None:
        for flag, value in (("--continue", flags.continue_), ("--system", flags.system)):
            if value:
                raise FlagError(f"--branch continues row ID's own conversation: no {flag}")
        if flags.model is not None:
            raise FlagError("--branch goes to the model that answered row ID: no --model")
    for name in ("continue_final_message", "add_generation_prompt", "continue_token_ids"):
        if name in ns:
            raise FlagError(f"{used[0]} sets {flag_name(name)} itself")


def _check(params: dict[str, Any], grid: dict[str, list[Any]]) -> None:
    """Validate against the table; a ParameterError becomes a FlagError naming the flag."""
    try:
        validate_params(params)
        for name, values in grid.items():
            for value in values:
                validate_params({**params, name: value})
    except ParameterError as exc:
        raise FlagError(f"{flag_name(exc.param)}: {exc}") from None


def _rows() -> Iterable[tuple[str, str, str, str]]:
    """(flag, allowed, help, default) for every flag, table parameters first."""
    from tmlab.jupyter.controls import default_note  # imports ipywidgets: only for the help

    for p in PARAMS.values():
        if p.name in _OWN:
            continue
        flag = flag_name(p.name)
        if p.kind == "bool":
            flag += f" / --no-{p.name.replace('_', '-')}"
        else:
            flag += f" {_metavar(p)}" if p.kind != "enum" else ""
        allowed = p.allowed + (" (comma list: sweep)" if p.kind in _SWEEPABLE else "")
        yield flag, allowed, p.help, f"not sent (server default{default_note(p)})"
    for own in OWN_FLAGS:
        flag = "/".join(own.names) + (f" {own.metavar}" if own.metavar else "")
        yield flag, own.allowed, own.help, own.default


def help_text() -> str:
    """The ``%%tmchat?`` help from the table: each flag, its allowed values, help and default."""
    lines = [
        "%%tmchat [flags]  — send the cell body as a user message and stream the answer.",
        "",
        "{name}, {obj.attr} and {d[key]} in the body are replaced by notebook variables",
        "(like str.format; {{ and }} are literal braces); a body whose braces name no variable",
        "(JSON, code) is sent unchanged. The cell's value is the ChatResult (_ and Out[n]).",
        "Errors print one line; --debug shows the traceback. Shell-style quoting: --stop '###'.",
        "",
    ]
    rows = list(_rows())
    n_params = sum(1 for p in PARAMS if p not in _OWN)
    sections = (
        ("Request parameters (tmlab.PARAMS):", rows[:n_params]),
        ("Magic:", rows[n_params:]),
    )
    for title, section in sections:
        lines.append(title)
        for flag, allowed, help_, default in section:
            lines.append(f"  {flag}")
            lines.append(f"      {help_}")
            lines.append(f"      allowed: {allowed}; default: {default}")
        lines.append("")
    lines.append("Example: %%tmchat --temperature 0.7 --top-k 40 --max-tokens 256 --logprobs 5")
    return "\n".join(lines)

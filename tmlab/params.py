"""The one table of request parameters, and validation generated from it.

Every request parameter of the Tensormesh chat-completions surface is declared once, in
:data:`PARAMS`: its type, allowed range or choices, the API's default as the reference page
states it (``None`` where the page gives none), one line of help and the kind of control that
edits it. Validation, the magic's flags, the widget's controls and the docs are all views of
this table; a new server parameter is one more line here.

A parameter is sent only when it is given: the default documents what the server does
without it, tmlab never fills it in. Combinations the API rejects are a
:class:`~tmlab.ParameterError` before anything is sent; combinations it accepts with an
unclear meaning (``max_tokens`` together with ``max_completion_tokens``) are sent as given,
with a :class:`ParameterWarning`.

Parameters that are not in the table can still be sent through ``extra_body={...}``,
unvalidated, for servers that know more than this table does.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from tmlab.errors import ParameterError

__all__ = [
    "NOT_GIVEN",
    "PARAMS",
    "NotGiven",
    "Param",
    "ParameterWarning",
    "params_table",
    "validate_params",
]

Kind = Literal["float", "int", "bool", "str", "enum", "json"]
Control = Literal["slider", "int_slider", "dropdown", "text", "toggle", "json"]


class NotGiven:
    """Sentinel type: a parameter that was not given (distinct from an explicit ``None``)."""

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Final = NotGiven()


class ParameterWarning(UserWarning):
    """Parameters that the API accepts but whose combined meaning depends on the server."""


@dataclass(frozen=True)
class Param:
    """One request parameter: what it accepts and how it is edited.

    ``minimum``/``maximum`` bound what is valid; ``ui_min``/``ui_max``/``step`` bound the
    slider that edits it (a narrower, useful range). ``shape`` checks a JSON-ish value and
    returns an error message or ``None``. ``default`` is the API's default as the reference
    page gives it (``None``: the page gives none); it is documentation, never sent for you.
    """

    name: str
    kind: Kind
    control: Control
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    ui_min: float | None = None
    ui_max: float | None = None
    step: float | None = None
    shape: Callable[[Any], str | None] | None = None
    shape_help: str = ""
    group: str = "sampling"
    default: Any = None

    @property
    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.kind == "enum":
            return " | ".join(repr(c) for c in self.choices)
        if self.kind in ("float", "int"):
            lo = "-inf" if self.minimum is None else _fmt(self.minimum)
            hi = "inf" if self.maximum is None else _fmt(self.maximum)
            if self.exclusive_minimum:
                return f"{self.kind} > {lo}" + ("" if self.maximum is None else f" and ≤ {hi}")
            if self.maximum is None:
                return f"{self.kind} ≥ {lo}"
            return f"{self.kind} in {lo}..{hi}"
        if self.kind == "bool":
            return "True | False"
        if self.kind == "str":
            return "a string"
        return self.shape_help or "JSON value"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- shape checkers for JSON-valued parameters -------------------------------------------


def _stop(v: Any) -> str | None:
    if isinstance(v, str):
        return None
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return None if len(v) <= 4 else "at most 4 stop sequences"
    return "a string or a list of up to 4 strings"


def _dict(v: Any) -> str | None:
    return None if isinstance(v, dict) else "an object (dict)"


def _stream_options(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "an object such as {'include_usage': True}"
    if "include_usage" in v and not isinstance(v["include_usage"], bool):
        return "include_usage must be a bool"
    return None


def _response_format(v: Any) -> str | None:
    if not isinstance(v, dict) or v.get("type") not in ("json_object", "text", "json_schema"):
        return "{'type': 'json_object'} or {'type': 'text'}"
    return None


def _tools(v: Any) -> str | None:
    if not isinstance(v, list):
        return "a list of {'type': 'function', 'function': {'name': ..., 'parameters': {...}}}"
    for i, tool in enumerate(v):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return f"tools[{i}] must be {{'type': 'function', 'function': {{'name': str, ...}}}}"
        if tool.get("type", "function") != "function":
            return f"tools[{i}].type must be 'function'"
    return None


def _tool_choice(v: Any) -> str | None:
    if v in ("auto", "none", "required"):
        return None
    if isinstance(v, dict) and isinstance((v.get("function") or {}).get("name"), str):
        return None
    return "'auto' | 'none' | 'required' | {'type': 'function', 'function': {'name': ...}}"


def _logit_bias(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "a dict of token id -> bias in -100..100"
    for key, bias in v.items():
        try:
            int(key)
        except (TypeError, ValueError):
            return f"key {key!r} is not a token id"
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            return f"bias {bias!r} for token {key} is not a number in -100..100"
    return None


def _speculation(v: Any) -> str | None:
    if isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, int) for t in v)):
        return None
    return "a string or a list of token ids"


def _function_call(v: Any) -> str | None:
    if v in ("auto", "none") or (isinstance(v, dict) and isinstance(v.get("name"), str)):
        return None
    return "'auto' | 'none' | {'name': ...}"


def _list(v: Any) -> str | None:
    return None if isinstance(v, list) else "a list"


def _token_ids(v: Any) -> str | None:
    if isinstance(v, list) and v and all(type(t) is int and t >= 0 for t in v):
        return None
    return "a non-empty list of token ids (ints ≥ 0)"


def _sampler_trace(v: Any) -> str | None:
    if v is True or v is False:
        return None
    if not isinstance(v, dict) or set(v) - {"top", "positions"}:
        return "true or {'top': 1..100, 'positions': [0..255, ...]}"
    top = v.get("top", 20)
    if type(top) is not int or not 1 <= top <= 100:
        return f"top={top!r} is not in 1..100"
    positions = v.get("positions")
    if positions is not None and (
        not isinstance(positions, list)
        or not all(type(p) is int and 0 <= p < 256 for p in positions)
    ):
        return "positions must be a list of generated positions in 0..255"
    return None


def _logprobs_for(v: Any) -> str | None:
    if (
        isinstance(v, list)
        and 1 <= len(v) <= 50
        and all((type(t) is int and t >= 0) or (isinstance(t, str) and t) for t in v)
    ):
        return None
    return "a list of 1..50 token ids (ints ≥ 0) or single tokens' texts"


# --- the table ----------------------------------------------------------------------------

# One line per parameter, so that a new server parameter is one more line: a table is
# read across, hence no wrapping here (fmt: off, and E501 is not checked in this file).
# fmt: off
_TABLE: tuple[Param, ...] = (
    # sampling
    Param("temperature", "float", "slider", "Sampling temperature; 0 is greedy, higher is more random.", minimum=0, maximum=2, ui_min=0, ui_max=2, step=0.05),
    Param("top_k", "int", "int_slider", "Keep only the K most likely tokens at each step (0 or -1: off).", minimum=-1, ui_min=0, ui_max=100, step=1),
    Param("top_p", "float", "slider", "Nucleus sampling: keep the smallest set of tokens whose mass ≥ p.", minimum=0, maximum=1, ui_min=0, ui_max=1, step=0.01),
    Param("min_p", "float", "slider", "Drop tokens whose probability is below min_p × the top token's.", minimum=0, maximum=1, ui_min=0, ui_max=1, step=0.01),
    Param("typical_p", "float", "slider", "Typical sampling: keep tokens of near-typical information.", minimum=0, maximum=1, exclusive_minimum=True, ui_min=0.01, ui_max=1, step=0.01),
    Param("repetition_penalty", "float", "slider", "Divide the logits of tokens already seen (1 = off).", minimum=0, exclusive_minimum=True, ui_min=0.5, ui_max=2, step=0.05),
    Param("presence_penalty", "float", "slider", "Penalise tokens that appeared at all so far.", minimum=-2, maximum=2, ui_min=-2, ui_max=2, step=0.1),
    Param("frequency_penalty", "float", "slider", "Penalise tokens by how often they appeared so far.", minimum=-2, maximum=2, ui_min=-2, ui_max=2, step=0.1),
    Param("mirostat_target", "float", "slider", "Mirostat v2 target surprise (perplexity target).", minimum=0, ui_min=0, ui_max=10, step=0.1),
    Param("mirostat_lr", "float", "slider", "Mirostat v2 learning rate.", minimum=0, ui_min=0, ui_max=1, step=0.01),
    Param("seed", "int", "text", "Random seed for best-effort reproducible sampling.", minimum=-(2**63), maximum=2**64 - 1),
    Param("logit_bias", "json", "json", "Add a bias (-100..100) to the logits of token ids.", shape=_logit_bias, shape_help="a dict of token id -> bias in -100..100"),
    # length
    Param("max_tokens", "int", "int_slider", "Maximum number of tokens to generate.", minimum=1, ui_min=1, ui_max=1024, step=1, group="length"),
    Param("max_completion_tokens", "int", "int_slider", "Alternative name for max_tokens; with both, the limit used depends on the server.", minimum=1, ui_min=1, ui_max=1024, step=1, group="length"),
    Param("n", "int", "int_slider", "How many choices to generate (needs temperature > 0 when > 1).", minimum=1, maximum=128, ui_min=1, ui_max=8, step=1, group="length", default=1),
    Param("stop", "json", "text", "Stop sequence(s): generation ends before any of them.", shape=_stop, shape_help="a string or a list of up to 4 strings", group="length"),
    Param("ignore_eos", "bool", "toggle", "Keep generating past the end-of-sequence token.", group="length", default=False),
    Param("prompt_truncate_len", "int", "text", "Truncate the prompt to this many tokens, oldest messages first.", minimum=1, group="length"),
    Param("context_length_exceeded_behavior", "enum", "dropdown", "When prompt + max_tokens exceed the context: clamp (truncate) or fail (error).", choices=("truncate", "error"), group="length", default="truncate"),
    # output
    Param("logprobs", "bool", "toggle", "Return the log-probability of each generated token.", group="output"),
    Param("top_logprobs", "int", "int_slider", "How many most likely alternatives to return per token (needs logprobs).", minimum=0, maximum=20, ui_min=0, ui_max=20, step=1, group="output"),
    Param("echo", "bool", "toggle", "Echo the prompt in front of the completion.", group="output", default=False),
    Param("echo_last", "int", "text", "Echo the last N tokens of the prompt.", minimum=0, group="output"),
    Param("return_token_ids", "bool", "toggle", "Return token ids (choices[].token_ids, prompt_token_ids).", group="output", default=False),
    Param("raw_output", "bool", "toggle", "Return the templated prompt and the raw completion.", group="output", default=False),
    Param("perf_metrics_in_response", "bool", "toggle", "Include server performance metrics.", group="output", default=False),
    Param("response_format", "json", "json", "Force the output format, e.g. {'type': 'json_object'}.", shape=_response_format, shape_help="{'type': 'json_object'} or {'type': 'text'}", group="output"),
    Param("stream_options", "json", "json", "Streaming options, e.g. {'include_usage': True}.", shape=_stream_options, shape_help="{'include_usage': bool}", group="output"),
    # reasoning
    Param("reasoning_effort", "enum", "dropdown", "How much the model reasons before answering.", choices=("none", "low", "medium", "high"), group="reasoning"),
    Param("reasoning_history", "enum", "dropdown", "How earlier assistant reasoning enters the prompt.", choices=("disabled", "interleaved", "preserved"), group="reasoning"),
    Param("thinking", "json", "json", "Anthropic-style reasoning config, e.g. {'type': 'enabled'}.", shape=_dict, shape_help="an object", group="reasoning"),
    # tools
    Param("tools", "json", "json", "Functions the model may call.", shape=_tools, shape_help="a list of {'type': 'function', 'function': {...}}", group="tools"),
    Param("tool_choice", "json", "dropdown", "Which tool, if any, the model must call.", choices=("auto", "none", "required"), shape=_tool_choice, shape_help="'auto' | 'none' | 'required' | {'type': 'function', 'function': {'name': ...}}", group="tools", default="auto"),
    Param("parallel_tool_calls", "bool", "toggle", "Allow several tool calls in one answer.", group="tools"),
    Param("functions", "json", "json", "Deprecated: use tools.", shape=_list, shape_help="a list", group="tools"),
    Param("function_call", "json", "json", "Deprecated: use tool_choice.", shape=_function_call, shape_help="'auto' | 'none' | {'name': ...}", group="tools"),
    # serving
    Param("speculation", "json", "text", "Speculative decoding prompt or token ids.", shape=_speculation, shape_help="a string or a list of token ids", group="serving"),
    Param("prediction", "json", "json", "Predicted output for speculative decoding.", shape=_dict, shape_help="an object", group="serving"),
    Param("prompt_cache_isolation_key", "str", "text", "Isolation key for prompt caching.", group="serving"),
    Param("user", "str", "text", "An identifier of your end user.", group="serving"),
    Param("metadata", "json", "json", "Metadata stored with the request for tracing.", shape=_dict, shape_help="an object", group="serving"),
    # extensions: not on the Tensormesh page; the help says who honours them
    Param("logprobs_mode", "enum", "dropdown", "Extension, not on the Tensormesh page (honoured per request by tmlab's embedded server; vLLM sets it server-wide with --logprobs-mode): what logprobs describe, raw_logprobs (the model's distribution before sampling) or processed_logprobs (the one the token was drawn from).", choices=("raw_logprobs", "processed_logprobs"), group="extensions"),
    Param("add_generation_prompt", "bool", "toggle", "Not on the Tensormesh page; vLLM and the embedded server: end the prompt with the assistant header (servers default to true).", group="extensions"),
    Param("continue_final_message", "bool", "toggle", "Not on the Tensormesh page; vLLM and the embedded server: continue the final assistant message instead of starting a new one.", group="extensions"),
    Param("sampler_trace", "json", "json", "Not on the Tensormesh page; the embedded server only: for each generated position (the first 256), the distribution after each stage of the sampler chain (raw, logit_bias, penalties, grammar, top_k, typical_p, top_p, min_p, temperature) with its top candidates; true or {'top': N ≤ 100, 'positions': [...]}.", shape=_sampler_trace, shape_help="true or {'top': 1..100, 'positions': [0..255, ...]}", group="extensions"),
    Param("logprobs_for", "json", "json", "Not on the Tensormesh page; the embedded server only: these tokens' raw and processed log-probability and rank at every generated position, in or out of the top 20 (token ids or single tokens' texts).", shape=_logprobs_for, shape_help="a list of 1..50 token ids or single tokens' texts", group="extensions"),
    Param("continue_token_ids", "json", "json", "Not on the Tensormesh page; the embedded server only: the final assistant message as token ids, used verbatim instead of re-tokenising its text (needs continue_final_message).", shape=_token_ids, shape_help="a non-empty list of token ids (ints ≥ 0)", group="extensions"),
)
# fmt: on

PARAMS: Final[Mapping[str, Param]] = {p.name: p for p in _TABLE}
"""Every request parameter, by name, in display order."""

# Set by the client itself, never through **params.
RESERVED: Final = frozenset({"model", "messages", "stream"})


def check_param(p: Param, value: Any) -> Any:
    """Check one value; return it as sent (numbers as plain Python ``int``/``float``)."""
    if value is None:  # explicit null: the API accepts null for every parameter
        return None
    kind = p.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParameterError(p.name, f"{p.name}={value!r} is not a bool", p.allowed)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ParameterError(p.name, f"{p.name}={value!r} is not a string", p.allowed)
        return value
    if kind == "enum":
        if value not in p.choices:
            raise ParameterError(p.name, f"{p.name}={value!r} is not one of the choices", p.allowed)
        return value
    if kind in ("int", "float"):
        number = _number(p, value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ParameterError(p.name, f"{p.name}={value!r} is not finite", p.allowed)
        lo, hi = p.minimum, p.maximum
        below = lo is not None and (number <= lo if p.exclusive_minimum else number < lo)
        if below or (hi is not None and number > hi):
            raise ParameterError(p.name, f"{p.name}={value!r} is out of range", p.allowed)
        return number
    # json
    if p.shape is not None:
        problem = p.shape(value)
        if problem is not None:
            raise ParameterError(p.name, f"{p.name}={value!r} is not valid: {problem}", p.allowed)
    return value


def _number(p: Param, value: Any) -> int | float:
    """``value`` as a plain ``int`` or ``float``, or ParameterError.

    Any ``numbers.Integral`` / ``numbers.Real`` is accepted (numpy scalars, from sweeps and
    widgets), but not a bool; an int parameter takes a whole float (``3.0``) too.
    """
    kind = type(value)  # plain int and float first: this runs for every request
    if kind is int or (kind is float and p.kind == "float"):
        return value
    if not isinstance(value, bool):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            number = float(value)
            if p.kind == "float":
                return number
            if number.is_integer():  # 3.0 for an int parameter is fine
                return int(number)
    what = "an int" if p.kind == "int" else "a number"
    raise ParameterError(p.name, f"{p.name}={value!r} is not {what}", p.allowed)


def validate_params(params: Mapping[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """Check request parameters against :data:`PARAMS` and return those to send.

    Values equal to :data:`NOT_GIVEN` are dropped; an explicit ``None`` is kept (sent as
    JSON null). Raises :class:`~tmlab.ParameterError` naming the parameter and what is
    allowed, for unknown names, wrong types, out-of-range values, unknown choices and the
    combinations the API rejects. Warns (:class:`ParameterWarning`, unless ``warn=False``)
    about combinations it accepts with a server-dependent meaning; they are still sent.
    """
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is NOT_GIVEN:
            continue
        if name in RESERVED:
            raise ParameterError(
                name,
                f"{name!r} is set by the client, not as a parameter",
                "pass it as chat()'s own argument",
            )
        p = PARAMS.get(name)
        if p is None:
            close = [k for k in PARAMS if k.startswith(name[:4])] if len(name) >= 4 else []
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ParameterError(
                name,
                f"unknown parameter {name!r}{hint}",
                "a parameter of tmlab.PARAMS, or pass it in extra_body={...}",
            )
        out[name] = check_param(p, value)
    _check_combinations(out)
    if warn and out.get("max_tokens") is not None and out.get("max_completion_tokens") is not None:
        warnings.warn(
            f"max_tokens={out['max_tokens']} and max_completion_tokens="
            f"{out['max_completion_tokens']} are both set: the API accepts both, but which "
            "limit applies depends on the server (tmlab's local server uses the smaller); "
            "both are sent. Set only one to be sure.",
            ParameterWarning,
            stacklevel=_caller_level(),
        )
    return out


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning from here at the first caller outside tmlab."""
    frame = sys._getframe(1)  # validate_params
    level = 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("tmlab."):
        frame = frame.f_back
        level += 1
    return level


def _check_combinations(p: Mapping[str, Any]) -> None:
    if p.get("continue_final_message") and p.get("add_generation_prompt"):
        raise ParameterError(
            "continue_final_message",
            "continue_final_message=True with add_generation_prompt=True: a final message "
            "cannot be continued after a new assistant header (vLLM rejects it too)",
            "continue_final_message=True alone, or add_generation_prompt alone",
        )
    if p.get("continue_token_ids") is not None and not p.get("continue_final_message"):
        raise ParameterError(
            "continue_token_ids",
            "continue_token_ids needs continue_final_message=True",
            "continue_token_ids=[...] with continue_final_message=True",
        )
    top = p.get("top_logprobs")
    if top is not None and top > 0 and not p.get("logprobs"):
        raise ParameterError(
            "top_logprobs", f"top_logprobs={top} needs logprobs=True", "0..20, with logprobs=True"
        )
    n = p.get("n")
    if n is not None and n > 1 and p.get("temperature") == 0:
        raise ParameterError(
            "n",
            f"n={n} with temperature=0 would give {n} identical greedy answers; the API rejects it",
            "n=1 with temperature=0, or temperature > 0",
        )


def params_table() -> Any:
    """The parameter table as a pandas DataFrame, one row per parameter.

    Columns: name, group, type, allowed, default (the API's, as the reference page gives it;
    ``None`` where it gives none; tmlab sends a parameter only when it is given), control,
    help.
    """
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "name": p.name,
                "group": p.group,
                "type": p.kind,
                "allowed": p.allowed,
                "default": p.default,
                "control": p.control,
                "help": p.help,
            }
            for p in PARAMS.values()
        ]
    )

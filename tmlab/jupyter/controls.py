"""The Explorer's parameter controls, generated from :data:`tmlab.PARAMS`, and their code.

One :class:`ParamControl` per parameter, chosen by the table's ``control`` column, never
listed by hand:

- ``slider`` / ``int_slider`` → ``FloatSlider`` / ``IntSlider`` over ``ui_min..ui_max`` by
  ``step`` (widened when a value outside that useful range is set from code);
- ``dropdown`` → ``Dropdown`` of the choices (blank while unset, so any pick is a change);
- ``toggle`` → ``Checkbox``;
- ``text`` → ``Text`` (an ``int`` is parsed as one; a JSON-valued one such as ``stop`` is
  parsed as JSON when it is JSON, else kept as the string typed); ``seed`` also gets a
  "random" toggle that draws a fresh seed for every request (shown in the box, so the run can
  be repeated);
- ``json`` → ``Textarea`` parsed as JSON (or a Python literal); a parse or shape error shows
  in the control, in red, and the request is not sent.

**Untouched is unset.** A control starts unset: dimmed, labelled "unset" (with the server's
default when the table knows it) and nothing is sent for it; an unset ``max_tokens`` says
that the session's default length limit is sent instead (``%tmconfig max_tokens``). An
unset slider rests at the server's default when the table knows it, else mid-range with its
number hidden (so that no number reads as a value sent, and either end, such as temperature
0, is a change). Touching
it (in the browser or by assigning ``control.value``) marks it set; its reset button unsets it
again. Each control's tooltip is the table's help line.

**Which parameters get a control** (:func:`editable`): every parameter of the table except
those of group ``tools`` (the panel shows text answers and cannot run a tool call) and those
named ``stream*`` (the panel always streams; the client sets the stream options itself), and
the continuation extensions (the panel continues an answer itself when an alternative token is
clicked).
**Which are shown at once** (:func:`featured`): group ``sampling`` except its JSON-edited ones,
plus :data:`FEATURED` (the length limit, logprobs and reasoning effort); the others sit in a
collapsed "advanced" section, by group.

The parameters set become, in :mod:`tmlab.jupyter.codeline`, the equivalent
``client.chat(...)`` call and ``%%tmchat`` line, to paste into code.
"""

from __future__ import annotations

import ast
import html
import json
import random
from collections.abc import Iterable, Mapping
from typing import Any, Final

import ipywidgets as widgets
import traitlets

from tmlab.client.settings import LENGTH_LIMITS, session
from tmlab.errors import ParameterError
from tmlab.meta import LOCAL_SAMPLING_DEFAULTS
from tmlab.params import NOT_GIVEN, PARAMS, Param, validate_params

__all__ = [
    "FEATURED",
    "ParamControl",
    "build_controls",
    "default_note",
    "editable",
    "featured",
    "layout_controls",
    "link_logprobs",
    "set_params",
]

FEATURED: Final = ("max_tokens", "logprobs", "top_logprobs", "reasoning_effort")
"""Parameters outside group ``sampling`` shown at once (the rest of their groups is advanced)."""

_DESCRIPTION_WIDTH: Final = "150px"
_SEED_RANGE: Final = 2**31  # drawn seeds stay small enough to read and type


# How a prompt is continued: the Explorer does that itself when you click an alternative
# (Branching); as free controls they would only turn a question into a 400.
_CONTINUATION = frozenset({"add_generation_prompt", "continue_final_message", "continue_token_ids"})


def editable(p: Param) -> bool:
    """Whether the Explorer offers a control for ``p`` (see the module docstring)."""
    return p.group != "tools" and not p.name.startswith("stream") and p.name not in _CONTINUATION


def featured(p: Param) -> bool:
    """Whether ``p``'s control is shown at once rather than in the "advanced" section."""
    return (p.group == "sampling" and p.control != "json") or p.name in FEATURED


def _default(p: Param) -> Any:
    """The server's default from the table (``Param.default``), or ``None`` if unknown."""
    value = getattr(p, "default", None)
    return None if value is NOT_GIVEN else value


def default_note(p: Param) -> str:
    """What a server does when ``p`` is not sent, where known: ``": 1 (embedded server), 1
    (Tensormesh page)"``; ``""`` when neither is known.

    The embedded server's value is what it uses (:data:`tmlab.meta.LOCAL_SAMPLING_DEFAULTS`),
    the Tensormesh page's the parameter table's ``default``; the one of the server this session
    talks to comes first.
    """
    local = LOCAL_SAMPLING_DEFAULTS.get(p.name)
    page = _default(p)
    parts = []
    if local is not None:
        off = " = off" if p.name == "top_k" and local == 0 else ""
        parts.append(f"{_fmt(local)}{off} (embedded server)")
    if page is not None:
        parts.append(f"{_fmt(page)} (Tensormesh page)")
    if len(parts) == 2 and not _session_is_local():
        parts.reverse()
    return ": " + ", ".join(parts) if parts else ""


def _session_is_local() -> bool:
    """Whether this session's requests go to the embedded server (no key, no base URL)."""
    from tmlab.client.settings import resolve_settings

    try:
        return resolve_settings(None, None, None).local
    except Exception:  # a setting that does not resolve: the order does not matter then
        return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _numeric_default(p: Param) -> float | None:
    value = _default(p)
    return None if isinstance(value, bool) or not isinstance(value, int | float) else value


def _resting(p: Param, lo: float, hi: float) -> float:
    """Where an unset slider rests: the server's default when known, else mid-range.

    Mid-range rather than an end, so that every value, the ends included (temperature 0),
    is a change, which marks the slider set; its number is hidden while unset.
    """
    default = _numeric_default(p)
    if default is not None:
        return min(max(default, lo), hi)
    step = p.step or (1 if p.kind == "int" else 0.01)
    return lo + round((hi - lo) / 2 / step) * step


def _hint(p: Param) -> str:
    """A short placeholder for a text box (the table's full range can be 20 digits long)."""
    if p.kind == "int":
        low = p.minimum is not None and p.minimum > -(2**31)
        return "an integer" + (f" ≥ {p.minimum:g}" if low else "")
    return p.shape_help or p.allowed


def _make_input(p: Param) -> widgets.ValueWidget:
    common: dict[str, Any] = {
        "description": p.name,
        "tooltip": p.help,
        "style": {"description_width": _DESCRIPTION_WIDTH},
    }
    default = _default(p)
    if p.control in ("slider", "int_slider"):
        lo = p.ui_min if p.ui_min is not None else (p.minimum if p.minimum is not None else 0)
        hi = p.ui_max if p.ui_max is not None else (p.maximum if p.maximum is not None else 1)
        at = _resting(p, lo, hi)
        if p.control == "int_slider":
            return widgets.IntSlider(
                value=int(at),
                min=int(lo),
                max=int(hi),
                step=int(p.step or 1),
                continuous_update=False,
                layout=widgets.Layout(width="420px"),
                **common,
            )
        return widgets.FloatSlider(
            value=float(at),
            min=float(lo),
            max=float(hi),
            step=float(p.step or 0.01),
            continuous_update=False,
            readout_format=".2f",
            layout=widgets.Layout(width="420px"),
            **common,
        )
    if p.control == "dropdown":
        return widgets.Dropdown(
            options=list(p.choices),
            value=None,  # blank while unset (the status names the default): any pick is a change
            layout=widgets.Layout(width="300px"),
            **common,
        )
    if p.control == "toggle":
        return widgets.Checkbox(value=bool(default), indent=True, **common)
    placeholder = "" if default is None else _fmt(default)
    if p.control == "json":
        return widgets.Textarea(
            value="",
            placeholder=placeholder or p.shape_help,
            rows=2,
            layout=widgets.Layout(width="420px"),
            **common,
        )
    return widgets.Text(
        value="",
        placeholder=placeholder or _hint(p),
        continuous_update=False,
        layout=widgets.Layout(width="300px"),
        **common,
    )


class ParamControl(widgets.HBox):
    """The editor of one parameter: its input, an "unset" marker and a reset button.

    ``value`` is the parsed value; assigning it marks the parameter set (so does any change
    made in the browser), :meth:`reset` unsets it. ``is_set`` says whether it is sent,
    ``error`` why the text typed is not a valid value (``""`` when it is), ``revision``
    counts the user's changes (observe it to react to any of them).
    """

    is_set = traitlets.Bool(False, help="True once touched: the parameter is sent.")
    error = traitlets.Unicode("", help="Why the text typed is not valid ('' when it is).")
    revision = traitlets.Int(0, help="Incremented at every change of value, set state or reset.")

    def __init__(self, param: Param, **kwargs: Any) -> None:
        self.param = param
        self.input = _make_input(param)
        self.reset_button = widgets.Button(
            icon="undo",
            tooltip=f"reset {param.name}: send nothing (the server's default)",
            layout=widgets.Layout(width="34px"),
        )
        self.reset_button.add_class("tmlab-reset")
        self.status = widgets.HTML(layout=widgets.Layout(min_width="160px"))
        self.status.add_class("tmlab-status")
        self.random: widgets.ToggleButton | None = None
        children: list[widgets.Widget] = [self.input, self.reset_button]
        if param.name == "seed":
            self.random = widgets.ToggleButton(
                value=False,
                description="random",
                tooltip="draw a new random seed for every request (shown here, so it can be "
                "repeated)",
                layout=widgets.Layout(width="80px"),
            )
            self.random.add_class("tmlab-seed-random")
            self.random.observe(self._on_random, names="value")
            children.insert(1, self.random)
        children.append(self.status)
        super().__init__(children=children, **kwargs)
        self.add_class("tmlab-control")
        self.add_class(f"tmlab-control-{param.name}")
        self._quiet = False
        self._value: Any = None
        self._reset_input()
        self.input.observe(self._on_input, names="value")
        self.reset_button.on_click(lambda _button: self.reset())
        self._restyle()

    # -- value ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The parameter's name."""
        return self.param.name

    @property
    def value(self) -> Any:
        """The parameter's value as it would be sent (parsed from the text for text/json)."""
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self._quiet = True
        try:
            self._show(value)
        finally:
            self._quiet = False
        self._commit(value)

    def sent_value(self) -> Any:
        """The value to send; :class:`~tmlab.ParameterError` if the text typed is invalid."""
        if self.error:
            raise ParameterError(self.name, self.error)
        return self._value

    def reset(self) -> None:
        """Unset: send nothing for this parameter (the server's default)."""
        self._reset_input()
        self.error = ""
        self.is_set = False
        self._restyle()
        self.revision += 1

    def draw_seed(self) -> None:
        """With "random" on, put a fresh random seed in the box (no change notification)."""
        if self.random is not None and self.random.value:
            self._quiet = True
            try:
                self._value = random.randrange(_SEED_RANGE)
                self.input.value = str(self._value)
            finally:
                self._quiet = False

    def refresh_status(self) -> None:
        """Redraw the status (an unset ``max_tokens`` shows the session's default in force)."""
        self._restyle()

    # -- internals -----------------------------------------------------------------------

    def _reset_input(self) -> None:
        self._quiet = True
        try:
            p, default = self.param, _default(self.param)
            if p.control in ("slider", "int_slider"):
                self.input.value = _resting(p, self.input.min, self.input.max)
            elif p.control == "dropdown":
                self.input.value = None
            elif p.control == "toggle":
                self.input.value = bool(default)
            else:
                self.input.value = ""
            if self.random is not None:
                self.random.value = False
            self._value = None if p.control in ("text", "json", "dropdown") else self.input.value
        finally:
            self._quiet = False

    def _show(self, value: Any) -> None:
        """Put ``value`` into the input widget (widening a slider's range if needed)."""
        p, w = self.param, self.input
        if p.control in ("slider", "int_slider"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(self.name, f"{self.name}={value!r} is not a number", p.allowed)
            if value > w.max:
                w.max = value
            if value < w.min:
                w.min = value
            w.value = value
        elif p.control == "dropdown":
            if value not in p.choices:
                raise ParameterError(self.name, f"{self.name}={value!r} is not a choice", p.allowed)
            w.value = value
        elif p.control == "toggle":
            w.value = bool(value)
        elif isinstance(value, str) and (p.kind == "str" or p.control == "text"):
            w.value = value
        else:
            w.value = _fmt(value) if p.control == "text" else json.dumps(value, indent=None)

    def _on_input(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self._accept(change["new"])

    def _on_random(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        if change["new"]:
            self.draw_seed()
            self.error = ""
            self.is_set = True
        self._restyle()
        self.revision += 1

    def _accept(self, shown: Any) -> None:
        """The input now shows ``shown`` (changed in the browser): parse it, mark it set."""
        p = self.param
        if p.control in ("text", "json") and not str(shown).strip() and p.kind != "str":
            self.reset()  # an emptied box: back to "send nothing"
            return
        try:
            value = self._parse(shown)
        except ParameterError as exc:
            self._set_state(None, exc)
        else:
            self._commit(value)

    def _commit(self, value: Any) -> None:
        """``value`` is the parameter's value now: check it alone, mark the parameter set."""
        try:
            # One value alone: the table's range, choices and shape checks (combinations
            # are checked on the whole request; top_logprobs is checked with its companion).
            name = self.param.name
            alone = {"logprobs": True, name: value} if name == "top_logprobs" else {name: value}
            value = validate_params(alone)[name]
        except ParameterError as exc:
            self._set_state(value, exc)
        else:
            self._set_state(value, None)

    def _set_state(self, value: Any, problem: ParameterError | None) -> None:
        self._value = value
        self.error = "" if problem is None else (problem.args[0] if problem.args else str(problem))
        self.is_set = True
        self._restyle()
        self.revision += 1

    def _parse(self, shown: Any) -> Any:
        p = self.param
        if p.control in ("slider", "int_slider"):
            value: Any = int(shown) if p.kind == "int" else float(shown)
        elif p.control in ("dropdown", "toggle") or p.kind == "str":
            value = shown
        elif p.kind == "int":
            text = str(shown).strip()
            try:
                value = int(text)
            except ValueError:
                raise ParameterError(
                    p.name, f"{p.name}={text!r} is not an integer", p.allowed
                ) from None
        else:
            value = _parse_json(p, str(shown))
        return value

    def _restyle(self) -> None:
        if self.param.control in ("slider", "int_slider"):
            # an unset slider's number would read as a value sent: shown only when it is one
            # (or when it is the server's known default)
            self.input.readout = self.is_set or _numeric_default(self.param) is not None
        if self.error:
            self.remove_class("tmlab-unset")
            self.add_class("tmlab-invalid")
            self.status.value = f'<span style="color: #c62828">⚠ {html.escape(self.error)}</span>'
            return
        self.remove_class("tmlab-invalid")
        if self.is_set:
            self.remove_class("tmlab-unset")
            self.add_class("tmlab-set")
            note = "random seed per request" if self.random and self.random.value else "sent"
            self.status.value = f'<span style="font-size: smaller">{note}</span>'
        else:
            self.remove_class("tmlab-set")
            self.add_class("tmlab-unset")
            shown = "unset · server default" + default_note(self.param)
            limit = session.max_tokens_default() if self.name == LENGTH_LIMITS[0] else None
            if limit is not None:  # the Explorer sends the session's default instead
                shown = f"unset · session default: {limit}"
            self.status.value = (
                f'<span style="font-size: smaller; opacity: 0.6">{html.escape(shown)}</span>'
            )


def _parse_json(p: Param, text: str) -> Any:
    """JSON, else a Python literal (the table's help shows ``{'type': ...}``); a ``text``
    control that is neither keeps the string typed (``stop=END``)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if p.control == "text":
        return text
    raise ParameterError(
        p.name, f"{p.name}: not valid JSON: {text[:60]!r}", p.shape_help or p.allowed
    )


def build_controls(initial: Mapping[str, Any] | None = None) -> dict[str, ParamControl]:
    """One :class:`ParamControl` per editable parameter, in table order; ``initial`` sets some."""
    controls = {name: ParamControl(p) for name, p in PARAMS.items() if editable(p)}
    for name, value in (initial or {}).items():
        if name in controls and value is not NOT_GIVEN:
            controls[name].value = value
    return controls


def link_logprobs(controls: Mapping[str, ParamControl]) -> None:
    """Couple the logprobs toggle and the top_logprobs slider.

    Moving top_logprobs above 0 turns logprobs on (the API rejects it otherwise); turning
    logprobs off or unsetting it unsets top_logprobs.
    """
    logprobs, top = controls.get("logprobs"), controls.get("top_logprobs")
    if logprobs is None or top is None:
        return

    def on_top(_change: object) -> None:
        if top.is_set and (top.value or 0) > 0 and logprobs.value is not True:
            logprobs.value = True

    def on_logprobs(_change: object) -> None:
        if top.is_set and (not logprobs.is_set or not logprobs.value):
            top.reset()

    top.observe(on_top, names="revision")
    logprobs.observe(on_logprobs, names="revision")


def layout_controls(
    controls: Mapping[str, ParamControl],
) -> tuple[widgets.VBox, widgets.Accordion]:
    """The featured controls in one box, the rest in a collapsed "advanced" accordion by group."""
    main = widgets.VBox([c for c in controls.values() if featured(c.param)])
    main.add_class("tmlab-controls")
    groups: dict[str, list[widgets.Widget]] = {}
    for c in controls.values():
        if not featured(c.param):
            groups.setdefault(c.param.group, []).append(c)
    sections: list[widgets.Widget] = []
    for group, members in groups.items():
        sections.append(widgets.HTML(f"<b>{html.escape(group)}</b>"))
        sections.extend(members)
    advanced = widgets.Accordion(children=[widgets.VBox(sections)], selected_index=None)
    advanced.set_title(0, f"advanced ({sum(len(m) for m in groups.values())} parameters)")
    advanced.add_class("tmlab-advanced")
    return main, advanced


# -- the same request as code -------------------------------------------------------------


def set_params(controls: Iterable[ParamControl]) -> dict[str, Any]:
    """The parameters set, by name; ParameterError for a control whose text is invalid."""
    return {c.name: c.sent_value() for c in controls if c.is_set}

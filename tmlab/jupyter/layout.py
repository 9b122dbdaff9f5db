"""Where the Explorer's parts go on the page: the answer beside the controls, and projector mode.

The Explorer is three parts (:func:`arrange`): a bar with Send and Stop, a column of controls
and a column with the answer and its tabs. One stylesheet (:data:`CSS`, an HTML widget inside
the panel, so it works in JupyterLab, Notebook 7 and Voilà alike, with no JavaScript) places
them with a CSS container query on the panel's own width:

- at :data:`WIDE_AT` px of panel or more, the controls scroll in a column on the left and the
  answer takes the rest of the width on the right; both columns are at most a viewport high,
  so Send and Stop (above them) and the answer's first lines are in view together;
- below that, the parts stack as before (bar, controls, answer).

Projector mode (``Explorer(large=True)``, ``tmlab demo --projector``) adds the class
``tmlab-large``: larger type in the controls, the answer and the token view, and only the
lesson's controls shown (:func:`show_only`; the others keep their values and are still sent
when set). Colours come from JupyterLab's theme variables, so the light and the dark theme
both read.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import ipywidgets as widgets

from tmlab import display as _display
from tmlab.errors import ParameterError
from tmlab.jupyter.controls import ParamControl

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = ["CSS", "LESSON_CONTROLS", "WIDE_AT", "answer_html", "arrange", "show_only"]

WIDE_AT = 800
"""Panel width (CSS px) from which the controls and the answer sit side by side: a notebook at
1280×720 with JupyterLab's file browser open has a panel of about 860 px."""

LESSON_CONTROLS = ("temperature", "top_k", "top_p", "seed")
"""The controls projector mode shows when the lesson names none."""

CSS = f"""<style>
.tmlab-explorer {{ container: tmlab-explorer / inline-size; overflow: visible; }}
.tmlab-lesson {{ overflow: visible; }}
.tmlab-explorer .tmlab-unset {{ opacity: 0.5; }}
.tmlab-explorer .tmlab-unset:hover {{ opacity: 0.85; }}
.tmlab-explorer .tmlab-invalid textarea, .tmlab-explorer .tmlab-invalid input {{
  outline: 2px solid #c62828; }}
.tmlab-explorer .tmlab-call pre {{ white-space: pre-wrap; word-break: break-all; margin: 0; }}
.tmlab-explorer .tmlab-bar {{ flex-flow: row wrap; align-items: center; overflow: visible;
  position: sticky; top: 0; z-index: 3; padding: 2px 0;
  background: var(--jp-layout-color0, #fff); }}
.tmlab-explorer .tmlab-body {{ display: flex; flex-direction: column; overflow: visible; }}
.tmlab-explorer .tmlab-col {{ overflow: visible; min-width: 0; }}
.tmlab-explorer .tmlab-col > *, .tmlab-explorer .tmlab-controls > * {{ flex-shrink: 0; }}
.tmlab-explorer .tmlab-answer .widget-html-content,
.tmlab-explorer .tmlab-answer {{ overflow-wrap: anywhere; }}
.tmlab-explorer .tmlab-pins {{ overflow-x: auto; }}
.tmlab-explorer .tmlab-reset, .tmlab-explorer .tmlab-seed-random {{ flex: 0 0 auto; }}
.tmlab-explorer .tmlab-control .tmlab-status {{ align-self: center; }}
.tmlab-explorer .tmlab-tabs > .lm-TabBar {{ overflow: visible; }}
.tmlab-explorer .tmlab-tabs > .lm-TabBar .lm-TabBar-content {{ flex-wrap: wrap; }}
.tmlab-explorer .tmlab-tabs > .lm-TabBar .lm-TabBar-tab {{ flex: 0 0 auto;
  min-width: fit-content; }}
.tmlab-explorer .tmlab-tv {{ overflow-wrap: anywhere; }}
.tmlab-explorer .tmlab-tv-tok {{ white-space: pre-wrap; }}
.tmlab-explorer .tmlab-tv-stream {{ color: #000; }}
@container tmlab-explorer (min-width: {WIDE_AT}px) {{
  .tmlab-explorer .tmlab-body {{ flex-direction: row; align-items: flex-start; gap: 10px; }}
  .tmlab-explorer .tmlab-left {{ flex: 0 0 clamp(400px, 52%, 640px);
    max-height: calc(100vh - 120px); overflow-y: auto; overflow-x: hidden;
    padding-right: 4px; box-sizing: border-box;
    border-right: 1px solid var(--jp-border-color2, #ddd); }}
  .tmlab-explorer .tmlab-right {{ flex: 1 1 0; max-height: calc(100vh - 120px);
    overflow: auto; }}
  .tmlab-explorer .tmlab-left .tmlab-control {{ flex-wrap: wrap; row-gap: 0; }}
  .tmlab-explorer .tmlab-left .tmlab-control .widget-slider,
  .tmlab-explorer .tmlab-left .tmlab-control .widget-textarea {{
    width: auto !important; flex: 3 1 260px; min-width: 260px; }}
  .tmlab-explorer .tmlab-left .tmlab-control .widget-text,
  .tmlab-explorer .tmlab-left .tmlab-control .widget-dropdown {{
    width: auto !important; flex: 1 1 200px; min-width: 160px; }}
  .tmlab-explorer .tmlab-left .tmlab-status {{ min-width: 0 !important; flex: 1 1 120px;
    max-width: 220px; }}
  .tmlab-explorer .tmlab-left .tmlab-status .widget-html-content {{ white-space: normal;
    line-height: 1.2; }}
  .tmlab-explorer.tmlab-large .tmlab-left {{ flex-basis: clamp(420px, 48%, 640px); }}
}}
.tmlab-explorer.tmlab-large, .tmlab-lesson.tmlab-large {{
  --jp-widgets-font-size: 20px; --jp-widgets-inline-height: 38px;
  --jp-widgets-inline-label-width: 160px; --jp-ui-font-size1: 18px;
  --jp-content-font-size1: 22px; font-size: 20px; }}
.tmlab-explorer.tmlab-large .tmlab-unset {{ opacity: 0.8; }}
.tmlab-explorer.tmlab-large .tmlab-left .tmlab-control .widget-slider {{ flex: 1 1 100%;
  min-width: 0; }}
.tmlab-explorer.tmlab-large .tmlab-reset {{ width: 48px !important; }}
.tmlab-explorer.tmlab-large .tmlab-control .widget-label {{ width: auto !important;
  flex: 0 0 auto; max-width: none; }}
.tmlab-explorer.tmlab-large .tmlab-seed-random {{ width: 110px !important; }}
.tmlab-explorer.tmlab-large .tmlab-status-line {{ font-size: 15px; line-height: 1.3; }}
.tmlab-explorer.tmlab-large .tmlab-load {{ display: none; }}
.tmlab-explorer.tmlab-large .tmlab-answer {{ font-size: 26px; line-height: 1.4; }}
.tmlab-explorer.tmlab-large .tmlab-tv {{ font-size: 26px; line-height: 1.9; }}
.tmlab-explorer.tmlab-large .tmlab-tv-note {{ font-size: 18px; }}
body:has(.tmlab-explorer.tmlab-large) .tmlab-tv-alts {{ font-size: 20px; }}
.tmlab-explorer.tmlab-large .lm-TabBar {{ min-height: 36px; }}
.tmlab-explorer.tmlab-large .lm-TabBar-tab {{ font-size: 16px; min-height: 34px;
  line-height: 34px; padding: 0 6px; }}
.tmlab-explorer.tmlab-large .tmlab-prompt textarea {{ font-size: 22px; }}
.tmlab-explorer.tmlab-large .tmlab-call,
.tmlab-explorer.tmlab-large .tmlab-advanced {{ display: none !important; }}
.tmlab-explorer.tmlab-large .widget-button {{ font-size: 20px; height: 40px; }}
</style>"""
"""The Explorer's stylesheet (scoped to ``.tmlab-explorer``)."""


def arrange(
    bar: Sequence[widgets.Widget],
    left: Sequence[widgets.Widget],
    right: Sequence[widgets.Widget],
) -> list[widgets.Widget]:
    """The Explorer's children: the stylesheet, the bar (Send, Stop …), and the two columns
    (``left``: prompt and controls; ``right``: the answer and its tabs).

    Class names for tests: ``tmlab-bar``, ``tmlab-body``, ``tmlab-left``, ``tmlab-right``.
    What keeps Send and Stop in view with the answer is that both columns are at most a
    viewport high (each scrolls inside). The bar is also ``position: sticky``, which only
    takes effect where no box around the panel scrolls (JupyterLab's output area and Voilà's
    page do: there it stays put); a box of one's own around the Explorer can take the class
    ``tmlab-lesson`` (``overflow: visible``).
    """
    top = widgets.HBox(list(bar))
    top.add_class("tmlab-bar")
    columns = []
    for side, children in (("left", left), ("right", right)):
        column = widgets.VBox(list(children))
        column.add_class("tmlab-col")
        column.add_class(f"tmlab-{side}")
        columns.append(column)
    body = widgets.Box(columns)
    body.add_class("tmlab-body")
    return [widgets.HTML(CSS), top, body]


def show_only(controls: Mapping[str, ParamControl], names: Iterable[str] | None) -> list[str]:
    """Show the controls named (in the table's order), hide the others; ``None`` shows all.

    A hidden control keeps its value, and a set one is still sent. Returns the names shown.
    Raises :class:`~tmlab.ParameterError` for a name that has no control.
    """
    wanted = None if names is None else list(names)
    if wanted is not None:
        unknown = [n for n in wanted if n not in controls]
        if unknown:
            raise ParameterError(
                "show",
                f"show: {unknown[0]!r} has no control",
                "name parameters with a control, e.g. " + ", ".join(LESSON_CONTROLS),
            )
    shown = []
    for name, control in controls.items():
        visible = wanted is None or name in wanted
        control.layout.display = None if visible else "none"
        if visible:
            shown.append(name)
    return shown


def answer_html(res: ChatResult) -> str:
    """The Answer tab: each choice's text (a continued prefix dimmed), tool calls, a note
    when partial, and the usage line."""
    out = []
    many = len(res.choices) > 1
    prefix = res.full_text[: len(res.full_text) - len(res.text)]
    if prefix:  # a branch or a prefill: what it continued, dimmed
        prefix = f'<span style="opacity: 0.6">{html.escape(prefix)}</span>'
    for choice in res.choices or []:
        label = f"<b>[{choice.index}]</b> " if many else ""
        before = prefix if choice.index == 0 else ""
        out.append(
            f'<div style="white-space: pre-wrap">{label}{before}{html.escape(choice.text)}</div>'
        )
    for call in res.tool_calls:
        fn = call.get("function") or {}
        signature = f"{fn.get('name')}({fn.get('arguments', '')})"
        out.append(f"<pre>{html.escape(signature)}</pre>")
    if not res.complete:
        out.append('<div style="color: #b26a00"><i>partial answer (stopped or broke off)</i></div>')
    out.append(
        '<div style="font-size: smaller; opacity: 0.7">'
        f"{html.escape(_display.usage_line(res))}</div>"
    )
    return "".join(out)

"""The Explorer: an ipywidgets 8 panel to send one prompt with sliders for every parameter.

::

    ex = tmlab.Explorer(prompt="Tell me a joke", temperature=0.7)
    ex                      # the panel; move sliders, click Send
    ex.runs_frame()         # the pinned runs as a DataFrame

The controls are generated from the parameter table (:mod:`tmlab.jupyter.controls`); only the
parameters touched are sent, plus the session's default ``max_tokens`` when no length limit is
set (``%tmconfig max_tokens``; the call line shows it). Requests run in a worker thread (never
on the kernel's main thread, never inside a trait observer), recorded in the history with
source ``explorer``; the answer streams in through a :class:`~tmlab.jupyter.live.Throttle`
(about 10 redraws a second). Stop takes effect at once, wherever the request is (queued behind
others on the server, in prompt evaluation, streaming, or waiting for a non-streamed answer):
the request runs as an asyncio task in the worker thread, and Stop cancels it, which closes
the connection (the server stops, or drops the queued request) and records what arrived as
``interrupted``; the partial answer stays on screen. Auto-send (off by default: requests may
cost money) sends :data:`AUTO_SEND_DELAY` seconds after the last change of a parameter
control, so a burst of slider moves is one request.

Stable names for code and tests: ``controls[name]`` (a :class:`ParamControl` per parameter),
``send_button``, ``stop_button``, ``pin_button``, ``auto_send``, ``prompt``, ``system``,
``model_widget``, ``tabs``, ``answer``, ``heatmap``, ``error`` (the error line),
``call_line``, ``whatif``, ``token_view`` (the clickable Tokens tab), ``branches`` (the
Branches tab); ``params()``, ``sent_params()``, ``run()``, ``stop()``, ``wait()``, ``pin()``,
``branch()``, ``show_run()``, ``runs_frame()``, ``show_controls()``, ``close()``; ``result``
(the last ChatResult).
CSS classes for browser tests (the token view's own are in ``tokenview.js``: ``tmlab-tv-tok``,
``tmlab-tv-alt``):
``tmlab-explorer``, ``tmlab-send``, ``tmlab-stop``, ``tmlab-pin``, ``tmlab-auto``,
``tmlab-prompt``, ``tmlab-model``, ``tmlab-answer``, ``tmlab-heatmap``, ``tmlab-error``,
``tmlab-control-<name>``, ``tmlab-reset``, ``tmlab-whatif``, ``tmlab-pins``,
``tmlab-tokenview``, ``tmlab-branches``; the layout's (:mod:`tmlab.jupyter.layout`):
``tmlab-bar``, ``tmlab-left``, ``tmlab-right``, ``tmlab-large``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import threading
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import pandas as pd

from tmlab import display as _display
from tmlab.client.history import request_source
from tmlab.client.settings import LENGTH_LIMITS, session_limit
from tmlab.errors import ParameterError
from tmlab.jupyter.codeline import chat_call, tmchat_line
from tmlab.jupyter.controls import (
    ParamControl,
    build_controls,
    layout_controls,
    link_logprobs,
    set_params,
)
from tmlab.jupyter.explain import error_line
from tmlab.jupyter.explorer_branches import BranchesView, BranchRunner
from tmlab.jupyter.job import ExplorerRequest, StoppedByUser, deadline, partial_result, send
from tmlab.jupyter.layout import LESSON_CONTROLS, answer_html, arrange, show_only
from tmlab.jupyter.live import Debounce, Throttle, cost_line
from tmlab.jupyter.load import LoadLine
from tmlab.jupyter.pins import Pin, pins_frame, pins_html
from tmlab.jupyter.tokenview import TokenView
from tmlab.jupyter.whatif import WhatIfPanel
from tmlab.params import PARAMS, ParameterWarning, validate_params
from tmlab.result import ChatResult, SessionLimit

if TYPE_CHECKING:
    from pathlib import Path

    from tmlab.client import Client
    from tmlab.client.stream import Delta

__all__ = ["Explorer", "StoppedByUser", "WhatIfPanel"]

CHANGE_LIMIT = "set max_tokens here, or `%tmconfig max_tokens=N|off`, to change"
"""How to change the session's default length limit from the Explorer."""

AUTO_SEND_DELAY = 0.4
"""Seconds of quiet after the last change before auto-send sends (a burst is one request)."""


class Explorer(widgets.VBox):
    """An ipywidgets panel to explore sampling parameters on one prompt.

    ``client`` defaults to ``tmlab.Client()`` (the session's settings; with no API key the
    embedded local model). ``initial_params`` set some controls (they count as touched);
    ``model`` picks the model. Displaying the Explorer shows the panel: the answer beside
    the controls where the panel is wide, stacked below them where it is narrow
    (:mod:`tmlab.jupyter.layout`). ``large=True`` is projector mode: larger type and token
    view, and only the controls named in ``show`` (default: the parameters given that have a
    control, else temperature, top_k, top_p and seed); ``show`` alone hides the others.
    """

    def __init__(
        self,
        client: Client | None = None,
        prompt: str = "",
        system: str = "",
        *,
        model: str | None = None,
        large: bool = False,
        show: Iterable[str] | None = None,
        **initial_params: Any,
    ) -> None:
        validate_params(initial_params)  # an unknown name or a bad value: fail here, clearly
        if client is None:
            from tmlab.client import Client

            client = Client()
        self.client = client
        self.result: ChatResult | None = None
        """The last result (a partial one after Stop or a broken stream; None after an error)."""
        self._job: ExplorerRequest | None = None
        self._jobs: list[ExplorerRequest] = []
        self._lock = threading.RLock()
        self._pins: list[Pin] = []
        self._debounce = Debounce(AUTO_SEND_DELAY, self._auto_fire)

        self.controls: dict[str, ParamControl] = build_controls(initial_params)
        # Parameters given that have no control (tools, stream_options …): sent as given.
        self._fixed = {k: v for k, v in initial_params.items() if k not in self.controls}
        link_logprobs(self.controls)
        main_controls, advanced = layout_controls(self.controls)

        # model: a dropdown filled from /models in a thread; a text box if that fails
        self._wanted_model = model
        self.model_widget: widgets.ValueWidget = widgets.Dropdown(
            description="model",
            options=[model] if model else [],
            value=model,
            layout=widgets.Layout(width="360px"),
        )
        self._model_box = widgets.HBox([self.model_widget])
        self._model_box.add_class("tmlab-model")
        self.model_widget.observe(self._on_setting, names="value")
        self._models_thread = threading.Thread(
            target=self._load_models, name="tmlab-explorer-models", daemon=True
        )

        self.system = widgets.Textarea(
            value=system,
            placeholder="system message (optional)",
            rows=1,
            layout=widgets.Layout(width="auto"),  # the panel's width, margins inside it
        )
        self.system.add_class("tmlab-system")
        self.prompt = widgets.Textarea(
            value=prompt, placeholder="prompt", rows=3, layout=widgets.Layout(width="auto")
        )
        self.prompt.add_class("tmlab-prompt")
        for box in (self.system, self.prompt):
            box.observe(self._on_setting, names="value")

        self.send_button = widgets.Button(
            description="Send", button_style="primary", icon="paper-plane", tooltip="send"
        )
        self.send_button.add_class("tmlab-send")
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", disabled=True, tooltip="stop the answer, keep it"
        )
        self.stop_button.add_class("tmlab-stop")
        self.pin_button = widgets.Button(
            description="Pin", icon="thumb-tack", disabled=True, tooltip="keep this run"
        )
        self.pin_button.add_class("tmlab-pin")
        self.auto_send = widgets.Checkbox(
            value=False,
            description="auto-send on change",
            indent=False,
            tooltip=f"send {AUTO_SEND_DELAY:g} s after the last change of a parameter "
            "(each request may cost money)",
        )
        self.auto_send.add_class("tmlab-auto")
        self.status = widgets.HTML()
        self.status.add_class("tmlab-status-line")
        self.load = LoadLine(client)
        """The server's load (requests running and queued, tokens/s), when it says."""
        self.send_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self.pin_button.on_click(lambda _b: self.pin())

        self.call_line = widgets.HTML()
        self.call_line.add_class("tmlab-call")
        self.error = widgets.HTML(layout=widgets.Layout(display="none"))
        self.error.add_class("tmlab-error")

        self.reasoning = widgets.HTML()
        self.reasoning_pane = widgets.Accordion(
            [self.reasoning], selected_index=None, layout=widgets.Layout(display="none")
        )
        self.reasoning_pane.set_title(0, "reasoning")
        self.reasoning_pane.add_class("tmlab-reasoning-pane")

        self.answer = widgets.HTML()
        self.answer.add_class("tmlab-answer")
        self.heatmap = widgets.HTML()
        self.heatmap.add_class("tmlab-heatmap")
        self.logprobs_view = widgets.HTML()
        self.logprobs_view.add_class("tmlab-logprobs")
        self.usage = widgets.HTML()
        self.usage.add_class("tmlab-usage")
        self.raw = widgets.HTML()
        self.raw.add_class("tmlab-raw")
        self.whatif = WhatIfPanel()
        # the Tokens tab: a hint when there are no logprobs, else the clickable token view
        self.token_view = TokenView(on_branch=self.branch)
        self.branches = BranchesView(on_select=self.show_run)
        self._brancher = BranchRunner(self)
        tokens_tab = widgets.VBox([self.heatmap, self.token_view])
        self.tabs = widgets.Tab(
            [
                self.answer,
                tokens_tab,
                self.logprobs_view,
                self.usage,
                self.raw,
                self.whatif,
                self.branches,
            ]
        )
        titles = ("Answer", "Tokens", "Logprobs", "Usage", "Raw JSON", "What-if", "Branches")
        for i, title in enumerate(titles):
            self.tabs.set_title(i, title)
        self.tabs.add_class("tmlab-tabs")

        self.pins_view = widgets.HTML()
        self.pins_view.add_class("tmlab-pins")
        self.clear_pins_button = widgets.Button(
            description="clear pins", icon="trash", layout=widgets.Layout(display="none")
        )
        self.clear_pins_button.on_click(lambda _b: self.clear_pins())

        for c in self.controls.values():
            c.observe(self._on_control, names="revision")

        bar = [self._model_box, self.send_button, self.stop_button, self.pin_button]
        super().__init__(
            arrange(
                [*bar, self.auto_send],
                [self.system, self.prompt, main_controls, advanced, self.call_line],
                [
                    self.status,
                    self.load.widget,
                    self.error,
                    self.reasoning_pane,
                    self.tabs,
                    self.pins_view,
                    self.clear_pins_button,
                ],
            )
        )
        self.large = large
        """Projector mode: larger type, fewer controls (the lesson's own)."""
        if large:
            self.add_class("tmlab-large")
            given = [n for n in initial_params if n in self.controls]
            show = show if show is not None else given or LESSON_CONTROLS
        self.show_controls(show)
        self.add_class("tmlab-explorer")
        self._refresh_call()
        self._models_thread.start()

    def __repr__(self) -> str:
        # Short: a frontend without widgets shows this instead of the panel.
        try:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        except ParameterError as exc:
            shown = f"invalid: {exc}"
        return f"<tmlab.Explorer ({shown or 'no parameter set'}): display it to see the panel>"

    def show_controls(self, names: Iterable[str] | None) -> list[str]:
        """Show only the controls named (``None``: all), e.g. a lesson's; hidden ones keep
        their values and are still sent when set. Returns the names shown."""
        return show_only(self.controls, names)

    # -- what is sent -----------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The parameters set, checked against the table: what is sent, apart from the
        session's default ``max_tokens`` (:meth:`sent_params`).

        Raises :class:`~tmlab.ParameterError` for a control whose text is invalid or for a
        combination the API rejects.
        """
        return validate_params({**self._fixed, **set_params(self.controls.values())})

    def sent_params(self) -> tuple[dict[str, Any], int | None]:
        """The parameters a Send sends, and the session's default ``max_tokens`` among them
        (``None`` when a length limit is set, or the default is off: ``%tmconfig
        max_tokens``)."""
        params = self.params()
        limit = session_limit(params)
        if limit is not None:
            params["max_tokens"] = limit
        return params, limit

    def _model(self) -> str | None:
        value = self.model_widget.value
        return str(value).strip() or None if value else None

    def _refresh_call(self) -> None:
        try:
            # a ParameterWarning (a combination the server may read either way) is shown
            # here, on the line, rather than printed at every move of a slider
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ParameterWarning)
                params, limit = self.sent_params()
        except ParameterError as exc:
            self.call_line.value = f'<span style="color: #c62828">⚠ {html.escape(str(exc))}</span>'
            return
        length = self.controls.get(LENGTH_LIMITS[0])
        if length is not None:
            length.refresh_status()  # "unset · session default: N", as %tmconfig has it now
        model, system = self._model(), self.system.value
        code = chat_call(params, self.prompt.value, system, model)
        flags = tmchat_line(params, system, model)
        notes = "".join(
            f'<div style="color: #b26a00">⚠ {html.escape(str(w.message))}</div>' for w in caught
        )
        if limit is not None:
            note = (
                f"max_tokens={limit} is the session's default, sent because max_tokens is "
                f"unset ({CHANGE_LIMIT})"
            )
            notes += f'<div style="font-size: smaller; opacity: 0.75">{html.escape(note)}</div>'
        self.call_line.value = (
            '<details open><summary style="font-size: smaller">the same request in code'
            f"</summary><pre>{html.escape(code)}\n{html.escape(flags)}</pre></details>{notes}"
        )

    def _on_control(self, _change: object) -> None:
        self._refresh_call()
        if self.auto_send.value:
            self._debounce()  # only schedules: the request runs later, in a thread

    def _on_setting(self, _change: object) -> None:
        self._refresh_call()

    def _auto_fire(self) -> None:
        self.run()

    # -- sending ------------------------------------------------------------------------

    def run(self) -> bool:
        """Send the request, as the Send button does; a running one is stopped first.

        Returns False (and shows the error line) when nothing could be sent.
        """
        with self._lock:
            if self._job is not None:
                self._job.cancel()
            seed = self.controls.get("seed")
            if seed is not None:
                seed.draw_seed()
            try:
                params, limit = self.sent_params()
                prompt = self.prompt.value
                if not prompt.strip():
                    raise ParameterError("prompt", "the prompt is empty", "write a prompt first")
            except ParameterError as exc:
                self._show_error(error_line(exc))
                return False
            self._refresh_call()
            job = ExplorerRequest(
                client=self.client,
                prompt=prompt,
                system=self.system.value or None,
                model=self._model(),
                params=params,
                session_limit=limit,
            )
            job.thread = threading.Thread(
                target=self._work, args=(job,), name="tmlab-explorer-request", daemon=True
            )
            self._job = job
            self._jobs = [j for j in self._jobs if j.thread and j.thread.is_alive()] + [job]
            self._show_error("")
            self.result = None
            self.answer.value = '<i style="opacity: 0.6">waiting for the model …</i>'
            self.reasoning.value = ""
            self.reasoning_pane.layout.display = "none"
            for view in (self.heatmap, self.logprobs_view, self.usage, self.raw):
                view.value = ""
            self.whatif.set_result(None)
            self.status.value = "sending …"
            self.stop_button.disabled = False
            self.pin_button.disabled = True
            job.thread.start()
            return True

    def stop(self) -> None:
        """Stop the answer being streamed; what arrived is kept (and recorded)."""
        with self._lock:
            self._debounce.cancel()
            job = self._job
            if job is not None and not job.stop.is_set():
                if job.thread is not None and job.thread.is_alive():
                    self.status.value = "stopping …"
                job.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a pending auto-send, the request running and the model list; True if done."""
        left = deadline(timeout)
        self._debounce.join(left())
        with self._lock:
            jobs = list(self._jobs)
        me = threading.current_thread()  # close() may run in a worker, from Widget.__del__
        for job in jobs:
            if job.thread is not None and job.thread is not me:
                job.thread.join(left())
        if self._models_thread.is_alive():
            self._models_thread.join(left())
        busy = any(
            j.thread is not None and j.thread is not me and j.thread.is_alive() for j in jobs
        )
        return not busy and not self._models_thread.is_alive()

    def _work(self, job: ExplorerRequest) -> None:
        """The worker thread: one streamed request, shown as it arrives."""
        throttle = Throttle(lambda: self._show_live(job), interval=0.1)

        def on_delta(delta: Delta) -> None:
            job.add(delta)
            throttle.poke()

        res: ChatResult | None = None
        problem: BaseException | None = None
        stopped = False
        try:
            # contextvars are not inherited by threads: the source is set here, in the sender
            with request_source("explorer"):
                res = send(job, on_delta)
        except StoppedByUser as exc:
            stopped = True
            res = exc.partial or partial_result(job)
        except Exception as exc:  # shown as one line in the widget; the next Send works
            problem = exc
            partial = getattr(exc, "partial", None)
            res = partial if isinstance(partial, ChatResult) else None
        try:
            self._finish(job, res, problem, stopped)
        except Exception as exc:  # a view that failed to render must not kill the thread
            self._show_error(f"could not show the answer: {error_line(exc)}")

    def _show_live(self, job: ExplorerRequest) -> None:
        if job is not self._job:
            return
        text = "".join(job.text)
        self.answer.value = (
            f'<div style="white-space: pre-wrap">{html.escape(text)} ▌</div>'
            if text
            else '<i style="opacity: 0.6">waiting for the answer …</i>'
        )
        thought = "".join(job.reasoning)
        if thought:
            self.reasoning_pane.layout.display = None
            self.reasoning_pane.set_title(0, f"reasoning ({len(thought)} chars, streaming)")
            self.reasoning.value = (
                f'<div style="white-space: pre-wrap">{html.escape(thought)}</div>'
            )
        self.status.value = f"streaming … {job.deltas} chunks"

    def _finish(
        self,
        job: ExplorerRequest,
        res: ChatResult | None,
        problem: BaseException | None,
        stopped: bool,
    ) -> None:
        if res is not None:  # the usage line names the session's limit, and how to change it
            if job.session_limit is not None:
                res.session_limit = SessionLimit(job.session_limit, CHANGE_LIMIT)
            elif res.session_limit is not None:  # a branch's, inherited or added
                res.session_limit = dataclasses.replace(res.session_limit, change=CHANGE_LIMIT)
        with self._lock:
            if job is not self._job:
                return  # superseded by a newer request: its views are the newer one's
            self.stop_button.disabled = True
            self.result = res
        if problem is not None:
            self._show_error(error_line(problem))
        if res is None:
            self.answer.value = ""
            self.status.value = ""
            return
        self._render(res)
        self.pin_button.disabled = False
        elapsed = time.perf_counter() - job.started
        if stopped:
            self.status.value = (
                f"<b>stopped</b> after {elapsed:.1f} s: the partial answer is kept "
                f"({len(res.text)} characters)"
            )
        elif problem is not None:
            self.status.value = "the answer broke off: what arrived is shown"
        else:  # the usage line itself is at the foot of the answer
            self.status.value = f"done in {elapsed:.1f} s"

    def _show_error(self, line: str) -> None:
        self.error.value = (
            f'<div style="color: #c62828">⚠ {html.escape(line)}</div>' if line else ""
        )
        self.error.layout.display = None if line else "none"

    # -- views of a result ----------------------------------------------------------------

    def _render(self, res: ChatResult) -> None:
        self.answer.value = answer_html(res)
        if res.reasoning:
            self.reasoning.value = (
                f'<div style="white-space: pre-wrap; opacity: 0.8">{html.escape(res.reasoning)}'
                "</div>"
            )
            self.reasoning_pane.set_title(0, f"reasoning ({len(res.reasoning)} chars)")
            self.reasoning_pane.layout.display = None
        frame = res.logprobs_frame()
        has_logprobs = len(frame) > 0
        if not has_logprobs:
            hint = (
                '<i style="opacity: 0.7">no logprobs in this answer: turn on <b>logprobs</b> '
                "(and <b>top_logprobs</b> for the alternatives) to see them</i>"
            )
            self.heatmap.value = hint
            self.logprobs_view.value = hint
        else:
            self.heatmap.value = _display.prob_legend_html()  # the colour scale's legend
            self.logprobs_view.value = _display.style_logprobs(frame).to_html()
        self.token_view.show(res if has_logprobs or res.parent is not None else None)
        self.branches.add(res)
        prices = _session_prices()
        lines = [_display.usage_line(res), cost_line(res, prices) or ""]  # cost, money saved
        self.usage.value = "".join(f"<div>{html.escape(x)}</div>" for x in lines if x) + (
            res.usage_frame(prices=prices).to_html(index=False, na_rep="—")
        )
        self.raw.value = (
            "<details><summary>request (as sent, no key)</summary>"
            f"<pre>{html.escape(json.dumps(res.request, indent=1, ensure_ascii=False))}</pre>"
            "</details><pre>"
            + html.escape(json.dumps(res.raw, indent=1, ensure_ascii=False, default=str))
            + "</pre>"
        )
        self.whatif.set_result(res if has_logprobs else None, res.request)

    # -- branches -----------------------------------------------------------------------

    def branch(self, owner: ChatResult, position: int, token: int | str) -> bool:
        """Branch ``owner`` at ``position`` with ``token``, as a click in the Tokens tab does:
        the branch streams into the token view and becomes the shown run (see
        :class:`~tmlab.jupyter.explorer_branches.BranchRunner`)."""
        return self._brancher.branch(owner, position, token)

    def show_run(self, res: ChatResult) -> None:
        """Show an earlier run of this Explorer in every tab (a click in the Branches tab)."""
        with self._lock:
            if self._job is not None and self._job.thread and self._job.thread.is_alive():
                return  # a request is running: its answer will be shown
            self.result = res
        self._show_error("")
        self._render(res)
        self.pin_button.disabled = False

    # -- pins ---------------------------------------------------------------------------

    def pin(self) -> None:
        """Keep the last run; pinned runs are shown side by side, differences highlighted."""
        res = self.result
        if res is None:
            return
        params = {k: v for k, v in res.request.items() if k in PARAMS and k != "stream_options"}
        self._pins.append(Pin(params, res.model, res))
        self._render_pins()

    def clear_pins(self) -> None:
        """Forget the pinned runs."""
        self._pins.clear()
        self._render_pins()

    def runs_frame(self) -> pd.DataFrame:
        """The pinned runs, one row each: parameters, answer, tokens, mean entropy, latency.

        ``mean_entropy`` is the mean over positions of the entropy over the returned
        alternatives (nats, a lower bound; NaN without top_logprobs). A parameter column is
        None for a run that did not send it (the server's default).
        """
        return pins_frame(self._pins)

    def export(self, directory: str, title: str = "tmlab lesson") -> Path:
        """Save the pinned runs for slides: ``index.html`` (parameters side by side, each
        answer's heatmap), ``runs.csv`` and ``answers.csv`` in ``directory``; see
        :func:`tmlab.export_lesson`, which adds answers and a sweep."""
        from tmlab.jupyter.export import export_lesson

        return export_lesson(directory, pins=self._pins, title=title)

    def _render_pins(self) -> None:
        self.clear_pins_button.layout.display = None if self._pins else "none"
        self.pins_view.value = pins_html(self._pins)

    # -- models ---------------------------------------------------------------------------

    def _load_models(self) -> None:
        """Fill the model dropdown from ``GET /models`` (a thread); a text box if that fails."""
        try:
            ids = [str(m.get("id")) for m in self.client.models() if isinstance(m, dict)]
            if not ids:
                raise ValueError("the server lists no models")
            default = self._wanted_model or self.client.model
        except Exception:  # any failure: the user can still type a model name
            self._use_text_model()
            return
        if default and default not in ids:
            ids.insert(0, default)
        self.model_widget.options = ids
        self.model_widget.value = default if default else ids[0]

    def _use_text_model(self) -> None:
        try:
            default = self._wanted_model or self.client.model
        except Exception:
            default = None
        text = widgets.Text(
            value=default or "",
            description="model",
            placeholder="model name (the model list could not be read)",
            layout=widgets.Layout(width="360px"),
        )
        text.observe(self._on_setting, names="value")
        old, self.model_widget = self.model_widget, text
        self._model_box.children = [text]
        old.close()
        self._refresh_call()

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop any request, wait for the threads (a few seconds at most) and close the panel."""
        # Widget.__del__ calls close(), also on an Explorer whose __init__ raised half-way.
        if "_debounce" in self.__dict__ and "whatif" in self.__dict__:
            self.stop()
            self.wait(timeout=10)
            self.whatif.close()
            for c in self.controls.values():
                c.close()
        if "load" in self.__dict__:
            self.load.close()
        super().close()


# -- HTML helpers -------------------------------------------------------------------------


def _session_prices() -> dict[str, Any] | None:
    from tmlab.client.settings import session

    prices = getattr(session, "prices", None)
    return prices if isinstance(prices, dict) else None

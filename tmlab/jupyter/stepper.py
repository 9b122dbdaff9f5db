"""The Stepper: generate one token at a time and watch every sampler stage act on it.

:class:`Stepper` is an anywidget (a Python class with synced traits plus ``stepper.js``, plain
ESM, no build step). It shows the text so far and the next token's candidates as bars, one
row per stage of the sampler chain (a small multiple): tokens a stage cut are greyed and
labelled with that stage. **Sample** takes the token the server drew with the current
settings and seed; clicking a candidate (or pressing 1–9) takes it; **Back** (Backspace)
undoes; **Play** steps on its own at ``rate`` tokens a second until **Stop**.

Each step is ONE request of one token: the messages, then an assistant message holding the
text so far, sent with ``continue_final_message=True, add_generation_prompt=False`` (on the
embedded server with the exact token ids, ``continue_token_ids``), ``max_tokens=1,
logprobs=True, top_logprobs=20`` and, on the embedded server, ``sampler_trace={"top": 50}``.
Its answer holds the candidates of the *next* position and the token the server drew there;
that token is taken when you press Sample (a request again if the settings changed since).

Moving a temperature, top_k, top_p or min_p slider redraws the stages at once, with no
request: :func:`tmlab.analysis.stages.run_chain` recomputes them from the returned candidates
(the trace's distribution before ``top_k``, or the raw ``top_logprobs``), labelled ``exact``
where the truncation keeps only returned tokens and ``approximate (TV ≤ …)`` otherwise. On the
embedded server a request 400 ms after the last move makes the view exact again (the server's
own trace). On other servers the view is the what-if approximation over ``top_logprobs``
(temperature-first order, as vLLM and transformers sample); processed logprobs cannot be
reshaped (the temperature would apply twice), so there a slider asks the server again; a
server that returns no logprobs is said to.

Requests run on one worker thread, in order; the kernel stays free. "Where does it hesitate?"
lists the positions with the highest entropy (and their top-2 gap); clicking one goes back
there.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import traitlets

from tmlab.analysis.stages import Stage, cut_by, run_chain
from tmlab.errors import BadRequestError, ParameterError, TmlabError

if TYPE_CHECKING:
    from tmlab.client import Client
    from tmlab.result import ChatResult

__all__ = ["SLIDERS", "Stepper", "View"]

SLIDERS = ("temperature", "top_k", "top_p", "min_p")
"""The settings the Stepper's sliders move (the rest of ``**params`` is sent as given)."""

TOP_LOGPROBS = 20
TRACE_TOP = 50
COLUMNS = 16  # candidates drawn as bars
DEBOUNCE_S = 0.4
_PRE = ("eos_ban", "logit_bias", "penalties", "grammar")  # stages before the truncation
_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@dataclass
class View:
    """One position's candidates as a response returned them, and the token drawn there."""

    ids: list[int | None]
    labels: list[str]
    pieces: list[bytes]
    logprobs: np.ndarray  # before truncation (trace: the stage before top_k; else raw)
    other_mass: float | None
    tail_max: float | None
    settings: dict[str, Any]  # the slider values the request was sent with
    kind: str  # "trace" | "raw" | "processed" | "none"
    trace: dict[str, Any] | None = None
    drawn: int | None = None  # index into the candidates of the token the server drew
    drawn_label: str = ""
    ended: bool = False  # the server drew end-of-generation
    bounded: bool = True  # the candidates hold the top of the distribution before top_k
    entropy: float = math.nan  # of the raw distribution (trace: exact; else lower bound)
    gap: float = math.nan  # top-2 gap of the raw distribution
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Step:
    token_id: int | None
    piece: bytes
    label: str
    view: View


def _label(text: str) -> str:
    marks = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
    return "".join(
        marks.get(c, c if c.isprintable() else c.encode("unicode_escape").decode()) for c in text
    ) or "\u2205"


def _piece(token: str, raw_bytes: list[int] | None) -> bytes:
    return bytes(raw_bytes) if raw_bytes is not None else token.encode()


def _entropy_gap(p: np.ndarray) -> tuple[float, float]:
    q = np.sort(p[p > 0])[::-1]
    ent = float(-(q * np.log(q)).sum()) if q.size else math.nan
    gap = float(q[0] - q[1]) if q.size > 1 else math.nan
    return ent, gap


def view_of(res: ChatResult, settings: dict[str, Any], meaning: str | None) -> View:
    """The candidates of ``res``'s single generated position (``meaning``: the logprobs' mode
    when not traced, ``"processed_logprobs"`` or else raw)."""
    choice = res.choices[0] if res.choices else None
    ended = choice is not None and choice.finish_reason == "stop" and not choice.text
    trace = choice.raw.get("sampler_trace") if choice is not None else None
    positions = trace.get("positions") if isinstance(trace, dict) else None
    if positions:
        return _trace_view(trace, positions[0], settings, ended)
    entries = choice.logprobs if choice is not None else None
    if not entries:  # no logprobs: only the text of the token the server drew
        text = choice.text if choice is not None else ""
        return View([], [], [], np.zeros(0), None, None, settings, "none", None, None,
                    _label(text) if text else "", ended or not text,
                    extra={"piece": text.encode()})
    tok = entries[0]
    alts = sorted(tok.top, key=lambda a: -a.logprob)
    ids = [a.token_id for a in alts]
    labels = [_label(a.token) for a in alts]
    pieces = [_piece(a.token, a.bytes) for a in alts]
    lp = np.array([a.logprob for a in alts], dtype=float)
    drawn = next(
        (
            i
            for i, a in enumerate(alts)
            if (a.token_id == tok.token_id if a.token_id is not None else a.token == tok.token)
        ),
        None,
    )
    if drawn is None:  # the drawn token was not among the alternatives: add it, at the end
        ids.append(tok.token_id)
        labels.append(_label(tok.token))
        pieces.append(_piece(tok.token, tok.bytes))
        lp = np.append(lp, tok.logprob)
        drawn = len(ids) - 1
    kind = "processed" if meaning == "processed_logprobs" else "raw"
    p = np.exp(lp)
    covered = float(p[: len(alts)].sum())
    other = max(0.0, 1.0 - covered) if kind == "raw" else None
    ent, gap = _entropy_gap(p)
    tail = float(lp[: len(alts)].min()) if alts else None
    view = View(ids, labels, pieces, lp, other, tail, settings, kind, None, drawn)
    view.drawn_label, view.entropy, view.gap = labels[drawn], ent, gap
    view.ended = ended or tok.token == ""
    return view


def _trace_view(
    trace: dict[str, Any], pos: dict[str, Any], settings: dict[str, Any], ended: bool
) -> View:
    cands = pos["candidates"]
    stages = pos["stages"]
    names = [s["stage"] for s in stages]
    before = stages[max(0, names.index("top_k") - 1)] if "top_k" in names else stages[0]
    p_in = np.asarray(before["p"], dtype=float)
    with np.errstate(divide="ignore"):
        lp = np.log(p_in)
    top = int(trace.get("top") or TRACE_TOP)
    finite = np.sort(p_in[p_in > 0])[::-1]
    tail = math.log(finite[min(top, finite.size) - 1]) if finite.size else None
    ids = [int(c["id"]) for c in cands]
    labels = [_label(c["token"]) for c in cands]
    pieces = [c["token"].encode() for c in cands]
    drawn = ids.index(int(pos["token_id"])) if pos.get("token_id") in ids else None
    raw_p = np.asarray(stages[0]["p"], dtype=float)
    _, gap = _entropy_gap(raw_p)
    pre_active = any(s["active"] and s["stage"] in ("logit_bias", "penalties") for s in stages)
    view = View(
        ids,
        labels,
        pieces,
        lp,
        max(0.0, 1.0 - float(p_in.sum())),
        tail,
        settings,
        "trace",
        pos,
        drawn,
        labels[drawn] if drawn is not None else "",
        ended,
        bounded=not pre_active,  # a bias or penalty may lift an unseen token above the tail
        entropy=float(stages[0]["entropy"]),
        gap=gap,
    )
    return view


# --- the stage rows drawn (all numbers computed here) ----------------------------------


def _fmt_setting(v: Any) -> str:
    if v is None:
        return "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _row(
    name: str, setting: Any, active: bool, p: np.ndarray, cut: list[str | None], cols: list[int],
    removed: float, entropy: float, kept: int, label: str
) -> dict[str, Any]:
    cells = []
    for i in cols:
        val = float(p[i])
        cells.append(
            {"h": round(val, 4), "txt": f"{val:.3f}" if val >= 0.0005 else ("0" if val == 0 else "<.001"),
             "cut": cut[i] or ""}
        )
    return {
        "stage": name,
        "setting": _fmt_setting(setting) if active else "off",
        "active": active,
        "kept": kept,
        "removed": f"{removed:.3f}",
        "entropy": "" if math.isnan(entropy) else f"{entropy:.3f}",
        "label": label,
        "cells": cells,
    }


def stage_rows(view: View, settings: dict[str, Any], order: str) -> tuple[list[dict[str, Any]], list[int], str]:
    """(rows, candidate columns shown, the view's label) under ``settings``, with no request.

    The server's own trace when it was taken with these settings; else the stages recomputed
    by :func:`run_chain` from the candidates, labelled exact or approximate with its bound.
    """
    n = len(view.ids)
    if n == 0:
        return [], [], "no logprobs: this server returns no candidates; Sample still works"
    cols = [int(c) for c in np.argsort(-view.logprobs, kind="stable")[:COLUMNS]]
    if view.kind == "trace" and view.trace is not None and settings == view.settings:
        cut = [c.get("cut_by") for c in view.trace["candidates"]]
        rows = []
        for s in view.trace["stages"]:
            if not s["active"] and s["stage"] in _PRE:
                continue
            rows.append(
                _row(s["stage"], s["setting"], s["active"], np.asarray(s["p"], dtype=float), cut,
                     cols, float(s["removed_mass"]), float(s["entropy"]), int(s["kept"]), "exact")
            )
        return rows, cols, "exact: the server's own trace of this step"
    if view.kind == "processed":
        p = np.exp(view.logprobs)
        row = _row("processed", None, True, p, [None] * n, cols, 0.0, _entropy_gap(p)[0], n,
                   "as returned")
        row["setting"] = "as drawn"
        return [row], cols, (
            "processed logprobs (the distribution the token was drawn from): they cannot be "
            "reshaped locally without applying a temperature twice; a slider asks the server again"
        )
    stages = run_chain(
        view.logprobs,
        **{k: settings[k] for k in SLIDERS},
        order=order,
        other_mass=view.other_mass,
        tail_max=view.tail_max,
    )
    cut = cut_by(stages)
    rows = []
    if view.kind == "trace" and view.trace is not None:
        tcut = [c.get("cut_by") for c in view.trace["candidates"]]
        for s in view.trace["stages"]:
            if s["stage"] == "raw" or (s["active"] and s["stage"] in _PRE):
                rows.append(
                    _row(s["stage"], s["setting"], s["active"], np.asarray(s["p"], dtype=float),
                         [c if c in _PRE else None for c in tcut], cols,
                         float(s["removed_mass"]), float(s["entropy"]), int(s["kept"]), "exact")
                )
        cut = [c if c in _PRE else cut[i] for i, c in enumerate(tcut)]
        stages = stages[1:]
    for st in stages:
        rows.append(_stage_row(st, cut, cols, view.bounded))
    last = stages[-1]
    if not view.bounded:
        label = "approximate (no bound: a bias or penalty may lift a token outside the candidates)"
    elif last.exact:
        label = "exact: recomputed from the returned candidates (no request)"
    else:
        label = last.label + ": recomputed from the returned candidates (no request)"
    if view.kind == "raw":
        label = f"what-if approximation over the returned top_logprobs ({order} order): " + label
    return rows, cols, label


def _stage_row(st: Stage, cut: list[str | None], cols: list[int], bounded: bool) -> dict[str, Any]:
    label = st.label if bounded or not st.active else "approximate (no bound)"
    name = "raw" if st.stage == "input" else st.stage
    return _row(name, st.setting, st.active, st.p, cut, cols, st.removed_mass, st.entropy,
                st.n_kept, label)


# --- the widget ---------------------------------------------------------------------------


class Stepper(anywidget.AnyWidget):
    """Generate one token at a time and watch every sampler stage act on the next one.

    ``Stepper(prompt, **params)``: ``params`` are :meth:`tmlab.Client.chat`'s (``seed``,
    ``repetition_penalty`` …; ``temperature, top_k, top_p, min_p`` start the sliders), plus
    ``client=`` (default: ``tmlab.Client()``), ``system=``, ``model=`` and ``trace=False``
    (work from ``top_logprobs`` even on tmlab's server, as on any other). See the module
    docstring; :meth:`sample`, :meth:`pick`, :meth:`back`, :meth:`jump`, :meth:`play` and
    :meth:`stop` do what the buttons do, :meth:`wait` waits for the requests sent.
    """

    _esm = Path(__file__).with_name("stepper.js")

    prompt = traitlets.Unicode("", help="the user message").tag(sync=True)
    text = traitlets.Unicode("", help="the text generated so far").tag(sync=True)
    tokens = traitlets.List(help="the generated tokens: [{label, position}]").tag(sync=True)
    columns = traitlets.List(help="the candidates drawn: [{label, id, key, drawn}]").tag(sync=True)
    stages = traitlets.List(help="one row per stage: setting, label, cells").tag(sync=True)
    view_label = traitlets.Unicode("", help="exact or approximate, and why").tag(sync=True)
    drawn = traitlets.Unicode("", help="the token the server drew for the next position").tag(
        sync=True
    )
    hesitate = traitlets.List(help="positions of highest entropy: [{position, ...}]").tag(sync=True)
    status = traitlets.Unicode("", help="one line: what happens now").tag(sync=True)
    busy = traitlets.Bool(False, help="a request is on its way").tag(sync=True)
    playing = traitlets.Bool(False, help="Play is on").tag(sync=True)
    rate = traitlets.Float(2.0, help="Play's steps per second").tag(sync=True)
    temperature = traitlets.Float(1.0, help="slider").tag(sync=True)
    top_k = traitlets.Int(0, help="slider (0: off)").tag(sync=True)
    top_p = traitlets.Float(1.0, help="slider (1: off)").tag(sync=True)
    min_p = traitlets.Float(0.0, help="slider (0: off)").tag(sync=True)
    requests = traitlets.Int(0, help="requests this Stepper sent").tag(sync=True)
    redraw_ms = traitlets.Float(0.0, help="the last local redraw, in ms").tag(sync=True)

    def __init__(
        self,
        prompt: str,
        *,
        client: Client | None = None,
        system: str | None = None,
        model: str | None = None,
        trace: bool = True,
        **params: Any,
    ) -> None:
        from tmlab.client import Client
        from tmlab.params import PARAMS

        if not isinstance(prompt, str) or not prompt:
            raise ParameterError("prompt", f"prompt={prompt!r}", "a non-empty string")
        sliders = {k: params.pop(k) for k in SLIDERS if k in params}
        for name in ("max_tokens", "logprobs", "top_logprobs", "stream", "n"):
            if name in params:
                raise ParameterError(name, f"{name} is set by the Stepper", "leave it out")
        super().__init__(prompt=prompt, **{k: v for k, v in sliders.items() if v is not None})
        self.client = client if client is not None else Client()
        self.model = model
        self.messages: list[dict[str, Any]] = (
            [{"role": "system", "content": system}] if system else []
        ) + [{"role": "user", "content": prompt}]
        self.params = params
        self.tmlab_server: bool | None = True if self.client.embedded else None  # asked once
        self.trace_ok = bool(trace) and "sampler_trace" in PARAMS
        self.order = "llama.cpp" if self.tmlab_server else "transformers"
        self.steps: list[_Step] = []
        self.view: View | None = None
        self.error: BaseException | None = None
        self._jobs: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._seq = 0
        self._timer: threading.Timer | None = None
        self._player: threading.Thread | None = None
        self._worker = threading.Thread(target=self._work, name="tmlab-stepper", daemon=True)
        self._worker.start()
        self.on_msg(self._on_message)
        self.observe(self._on_slider, names=list(SLIDERS))
        self.add_class("tmlab-stepper")
        self._put("next")

    # -- what the buttons do ---------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The sliders' values now."""
        return {k: getattr(self, k) for k in SLIDERS}

    def sample(self) -> None:
        """Take the token the server draws with the current settings and seed."""
        self._put("sample")

    def pick(self, token: int | str) -> None:
        """Take a candidate: its column index (int, 0 = the first bar) or its text."""
        self._put("pick", token)

    def back(self) -> None:
        """Undo the last token (no request: its candidates are kept)."""
        self._put("back")

    def jump(self, position: int) -> None:
        """Go back to ``position`` (its candidates are shown again, no request)."""
        self._put("jump", position)

    def play(self, rate: float | None = None) -> None:
        """Sample step after step, ``rate`` steps a second, until :meth:`stop`."""
        if rate is not None:
            if not isinstance(rate, int | float) or not 0 < rate <= 20:
                raise ParameterError("rate", f"rate={rate!r}", "steps per second in (0, 20]")
            self.rate = float(rate)
        if self._player is not None and self._player.is_alive():
            return
        self.playing = True
        self._player = threading.Thread(target=self._play, name="tmlab-stepper-play", daemon=True)
        self._player.start()

    def stop(self) -> None:
        """Stop Play (the step on its way ends first)."""
        self.playing = False

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Wait until every request asked for has come back; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._jobs.unfinished_tasks or (self._timer is not None and self._timer.is_alive()):
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop Play and the worker, and close the widget."""
        timer, jobs = getattr(self, "_timer", None), getattr(self, "_jobs", None)
        if timer is not None:
            timer.cancel()
        if jobs is not None:  # None: the constructor refused its arguments
            self.playing = False
            jobs.put(("quit",))
        super().close()

    # -- events ------------------------------------------------------------------------------

    def _put(self, *job: Any) -> None:
        self._jobs.put(job)

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind in ("sample", "back"):
            self._put(kind)
        elif kind == "pick" and isinstance(content.get("index"), int):
            self._put("pick", content["index"])
        elif kind == "jump" and isinstance(content.get("position"), int):
            self._put("jump", content["position"])
        elif kind == "play":
            self.play()
        elif kind == "stop":
            self.stop()

    def _on_slider(self, _change: Any) -> None:
        self.redraw()
        view = self.view
        if view is None or view.settings == self.settings():
            return
        if view.kind in ("trace", "processed"):  # exact again after a short pause
            if self._timer is not None:
                self._timer.cancel()
            self._seq += 1
            self._timer = threading.Timer(DEBOUNCE_S, self._put, ("refresh", self._seq))
            self._timer.daemon = True
            self._timer.start()

    def redraw(self) -> None:
        """Draw the current position's stages under the sliders' settings (no request)."""
        start = time.perf_counter()
        view = self.view
        if view is None:
            self.stages, self.columns = [], []
            return
        rows, cols, label = stage_rows(view, self.settings(), self.order)
        keys = {c: k for k, c in enumerate(cols)}
        self.columns = [
            {
                "label": view.labels[c],
                "id": view.ids[c],
                "key": keys[c] + 1 if keys[c] < 9 else None,
                "drawn": bool(c == view.drawn and view.settings == self.settings()),
            }
            for c in cols
        ]
        self.stages = rows
        self.view_label = label
        fresh = view.settings == self.settings()
        self.drawn = (
            ("(end of answer)" if view.ended else view.drawn_label) if fresh else ""
        )
        self.redraw_ms = (time.perf_counter() - start) * 1e3

    # -- the worker: every request, in order -------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job[0] == "quit":
                    return
                self._do(job)
            except TmlabError as exc:
                self.error = exc
                self.status = f"error: {exc}"
                self.playing = False
            except Exception as exc:  # a notebook must not lose the worker to one bad step
                self.error = exc
                self.status = f"error: {type(exc).__name__}: {exc}"
                self.playing = False
            finally:
                self.busy = False
                self._jobs.task_done()

    def _do(self, job: tuple[Any, ...]) -> None:
        kind = job[0]
        if kind == "next":
            self._fetch()
        elif kind == "refresh":
            if job[1] == self._seq and self.view is not None and self.view.settings != self.settings():
                self._fetch()
        elif kind == "sample":
            view = self.view
            if view is None or view.settings != self.settings():
                view = self._fetch()
            if view is None or view.ended or (view.drawn is None and view.kind != "none"):
                self.status = "the model ended its answer here: pick a candidate, or go Back"
                self.playing = False
                return
            self._take(view, view.drawn)
        elif kind == "pick":
            view = self.view
            if view is None:
                return
            index = self._index(view, job[1])
            if index is not None:
                self._take(view, index)
        elif kind == "back":
            if self.steps:
                self._rewind(len(self.steps) - 1)
        elif kind == "jump":
            pos = job[1]
            if isinstance(pos, int) and 0 <= pos < len(self.steps):
                self._rewind(pos)

    def _index(self, view: View, token: int | str) -> int | None:
        if isinstance(token, str):
            hits = [i for i, p in enumerate(view.pieces) if p == token.encode()]
            return hits[0] if hits else None
        cols = [c["id"] for c in self.columns]
        if isinstance(token, int) and 0 <= token < len(cols):
            return view.ids.index(cols[token]) if cols[token] in view.ids else None
        return None

    def _take(self, view: View, index: int | None) -> None:
        if index is None:  # a server without logprobs: the text it drew
            step = _Step(None, view.extra.get("piece", b""), view.drawn_label, view)
        else:
            step = _Step(view.ids[index], view.pieces[index], view.labels[index], view)
        self.steps.append(step)
        self._show_text()
        self._fetch()

    def _rewind(self, position: int) -> None:
        view = self.steps[position].view
        del self.steps[position:]
        self.view = view
        self._show_text()
        self.redraw()
        self.status = f"back at position {position}"

    def _show_text(self) -> None:
        self.text = b"".join(s.piece for s in self.steps).decode("utf-8", errors="replace")
        self.tokens = [{"label": s.label, "position": i} for i, s in enumerate(self.steps)]
        scored = [
            (i, s) for i, s in enumerate(self.steps) if not math.isnan(s.view.entropy)
        ]
        scored.sort(key=lambda t: (-t[1].view.entropy, t[1].view.gap))
        self.hesitate = [
            {
                "position": i,
                "token": s.label,
                "entropy": f"{s.view.entropy:.2f}",
                "gap": "" if math.isnan(s.view.gap) else f"{s.view.gap:.3f}",
            }
            for i, s in scored[:6]
        ]

    def _fetch(self) -> View | None:
        """One request for the next position; its candidates become the view."""
        from tmlab.meaning import meaning

        if self.tmlab_server is None:  # tmlab's server says so in /models (owned_by)
            self.tmlab_server = any(m.get("owned_by") == "tmlab" for m in self.client.models())
            self.order = "llama.cpp" if self.tmlab_server else "transformers"
            self.trace_ok = self.trace_ok and self.tmlab_server
        settings = self.settings()
        params: dict[str, Any] = dict(self.params)
        params.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        params["temperature"] = settings["temperature"]
        for name in ("top_k", "top_p", "min_p"):
            if settings[name] != _DEFAULTS[name]:
                params[name] = settings[name]
        if self.trace_ok:
            params["sampler_trace"] = {"top": TRACE_TOP}
        self.busy = True
        self.status = f"asking for position {len(self.steps)} …"
        ids = [s.token_id for s in self.steps]
        try:
            res = self._request(params, ids)
        except BadRequestError as exc:
            if "sampler_trace" not in (str(getattr(exc, "param", "")) + str(exc)):
                raise
            self.trace_ok = False  # an older embedded server: work from top_logprobs
            params.pop("sampler_trace")
            res = self._request(params, ids)
        mode = meaning(res).mode
        view = view_of(res, settings, mode)
        self.view = view
        if view.kind == "none":
            self.status = (
                "this server returns no logprobs: no candidates or stages to show; "
                f"it drew {view.drawn_label!r} (Sample takes it)"
            )
        else:
            self.status = f"position {len(self.steps)}: the server drew {view.drawn_label!r}"
        self.redraw()
        return view

    def _request(self, params: dict[str, Any], ids: list[int | None]) -> ChatResult:
        from tmlab.analysis.branching import continue_final

        self.requests += 1
        if not self.steps:
            return self.client.chat(list(self.messages), model=self.model, **params)
        prefix = self.text
        exact = [int(i) for i in ids if i is not None] if all(i is not None for i in ids) else None
        return continue_final(
            self.client, self.messages, prefix, model=self.model, token_ids=exact, **params
        )

    def _play(self) -> None:
        while self.playing:
            start = time.monotonic()
            self._put("sample")
            while self._jobs.unfinished_tasks and self.playing:
                time.sleep(0.01)
            rest = 1.0 / max(self.rate, 0.05) - (time.monotonic() - start)
            if rest > 0:
                time.sleep(rest)

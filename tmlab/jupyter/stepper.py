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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from tmlab.analysis.stepper_view import SLIDERS, TRACE_TOP, View, stage_rows, view_of
from tmlab.errors import BadRequestError, ParameterError, TmlabError

if TYPE_CHECKING:
    from tmlab.client import Client
    from tmlab.result import ChatResult

__all__ = ["Stepper"]

TOP_LOGPROBS = 20
DEBOUNCE_S = 0.4
_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@dataclass
class _Step:
    token_id: int | None
    piece: bytes
    label: str
    view: View


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
    tokens: traitlets.List[dict[str, Any]] = traitlets.List(
        help="the generated tokens: [{label, position}]"
    ).tag(sync=True)
    columns: traitlets.List[dict[str, Any]] = traitlets.List(
        help="the candidates drawn: [{label, id, key, drawn}]"
    ).tag(sync=True)
    stages: traitlets.List[dict[str, Any]] = traitlets.List(
        help="one row per stage: setting, label, cells"
    ).tag(sync=True)
    view_label = traitlets.Unicode("", help="exact or approximate, and why").tag(sync=True)
    drawn = traitlets.Unicode("", help="the token the server drew for the next position").tag(
        sync=True
    )
    hesitate: traitlets.List[dict[str, Any]] = traitlets.List(
        help="positions of highest entropy: [{position, ...}]"
    ).tag(sync=True)
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
        """The sliders' values now (and ``typical_p``, fixed by ``**params``)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in SLIDERS}
        out["typical_p"] = self.params.get("typical_p", 1.0)
        return out

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
        jobs = self._jobs
        while True:
            if end is not None and time.monotonic() > end:
                return False
            timer = self._timer
            if timer is not None and timer.is_alive():  # a debounced request is due
                timer.join(None if end is None else max(0.0, end - time.monotonic()))
            with jobs.all_tasks_done:
                while jobs.unfinished_tasks:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    jobs.all_tasks_done.wait(left)
            if timer is self._timer and not (timer is not None and timer.is_alive()):
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
        self.drawn = ("(end of answer)" if view.ended else view.drawn_label) if fresh else ""
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
            if (
                job[1] == self._seq
                and self.view is not None
                and self.view.settings != self.settings()
            ):
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
        scored = [(i, s) for i, s in enumerate(self.steps) if not math.isnan(s.view.entropy)]
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

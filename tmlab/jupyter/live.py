"""Streaming an answer into a notebook output, throttled, and the answer's Markdown view.

:class:`Throttle` bounds how often a display is redrawn, whatever the token rate: a server
that sends 500 tiny chunks a second would otherwise flood the browser with 500 redraws (each
one re-renders the whole Markdown). :class:`LiveAnswer` collects the streamed deltas and
redraws one IPython display handle through a throttle; at the end the same handle receives
the final view, so the answer is on screen once and stays there, also when the stream was
interrupted.

The views are Markdown (with the reasoning in a ``<details>`` element, collapsible) plus a
plain-text fallback; the Markdown is built by :func:`answer_markdown`. :class:`Debounce` is
the other timing rule of live widgets: one call after a burst (the Explorer's auto-send).
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from IPython.display import display

if TYPE_CHECKING:
    from IPython.display import DisplayHandle

    from tmlab.client.stream import Delta
    from tmlab.result import ChatResult

__all__ = [
    "Debounce",
    "LiveAnswer",
    "MarkdownView",
    "Throttle",
    "answer_markdown",
    "cost_line",
    "reasoning_html",
    "result_view",
]


class Throttle:
    """Calls ``update()`` at most once per ``interval`` seconds; ``flush()`` sends the last one.

    ``poke()`` says something changed: ``update()`` runs at once if ``interval`` seconds
    have passed since the previous update ended, else the change is marked pending and shown
    by a later ``poke()`` or by ``flush()``. The interval is counted from the end of an
    update, so a slow redraw cannot take all the time. Thread-safe (a widget may poke from
    the thread that streams); ``update()`` never runs twice at once.
    """

    def __init__(
        self,
        update: Callable[[], None],
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._update = update
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._pending = False
        self._lock = threading.RLock()
        self.updates = 0
        """How many times ``update()`` ran."""

    @property
    def pending(self) -> bool:
        """True when a change was poked but not shown yet."""
        return self._pending

    def poke(self) -> None:
        """Something changed: update now if the interval elapsed, else mark it pending."""
        with self._lock:
            if self._last is None or self._clock() - self._last >= self.interval:
                self._run()
            else:
                self._pending = True

    def flush(self) -> None:
        """Update now if anything is pending."""
        with self._lock:
            if self._pending:
                self._run()

    def _run(self) -> None:
        self._pending = False
        self.updates += 1
        try:
            self._update()
        finally:
            self._last = self._clock()


def reasoning_html(reasoning: str, *, open: bool = False) -> str:
    """The reasoning as one collapsible ``<details>`` element, on one line.

    One line, with newlines as ``&#10;`` (kept by ``white-space: pre-wrap``): a blank line
    would end the HTML block inside Markdown and let the reasoning be parsed as Markdown.
    """
    body = html.escape(reasoning).replace("\r\n", "\n").replace("\n", "&#10;")
    attr = " open" if open else ""
    return (
        f'<details{attr} class="tmlab-reasoning"><summary>reasoning ({len(reasoning)} chars)'
        f'</summary><div style="white-space: pre-wrap; opacity: 0.75">{body}</div></details>'
    )


def answer_markdown(
    texts: Mapping[int, str],
    reasoning: Mapping[int, str] | None = None,
    *,
    streaming: bool = False,
    footer: Iterable[str] = (),
) -> str:
    """Markdown of an answer: per choice the reasoning (collapsible), then the answer text.

    With several choices each is labelled ``[i]``. ``streaming`` adds a cursor and keeps the
    reasoning open while no answer text arrived yet. ``footer`` lines (usage, notes) come
    last, in small italics.
    """
    reasoning = reasoning or {}
    indices = sorted(set(texts) | set(reasoning))
    parts: list[str] = []
    for i in indices:
        text = texts.get(i, "")
        thought = reasoning.get(i, "")
        if thought:
            parts.append(reasoning_html(thought, open=streaming and not text))
        label = f"**[{i}]** " if len(indices) > 1 else ""
        if text or label:
            parts.append(label + text)
    if streaming:
        if parts:
            parts[-1] += " ▌"
        else:
            parts.append("*waiting for the model …*")
    parts.extend(f"<small><i>{html.escape(line)}</i></small>" for line in footer if line)
    return "\n\n".join(parts)


class MarkdownView:
    """A Markdown display object with a plain-text fallback (terminals, ``text/plain``)."""

    def __init__(self, markdown: str, plain: str) -> None:
        self.markdown = markdown
        self.plain = plain

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/markdown": self.markdown, "text/plain": self.plain}

    def __repr__(self) -> str:
        return self.plain


class LiveAnswer:
    """Streams the deltas of an answer into one display handle, redrawn through a Throttle.

    ``start()`` shows a placeholder; pass ``on_delta`` to the client; ``finish(view)`` shows
    the final view in the same place (call it also after an interruption, so the partial
    answer stays on screen).
    """

    def __init__(
        self,
        *,
        show_reasoning: bool = True,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.texts: dict[int, str] = {}
        self.reasoning: dict[int, str] = {}
        self.deltas = 0
        self.show_reasoning = show_reasoning
        self.throttle = Throttle(self._redraw, interval, clock)
        self._handle: DisplayHandle | None = None

    @property
    def updates(self) -> int:
        """How many times the display was redrawn while streaming (start and finish excluded)."""
        return self.throttle.updates

    @property
    def text(self) -> str:
        """The answer text of choice 0 received so far."""
        return self.texts.get(0, "")

    def start(self) -> None:
        """Show the placeholder and keep its display handle."""
        self._handle = display(self._view(), display_id=True)

    def on_delta(self, delta: Delta) -> None:
        """Add one streamed piece; redraw if the throttle allows."""
        self.deltas += 1
        if delta.text:
            self.texts[delta.choice] = self.texts.get(delta.choice, "") + delta.text
        if delta.reasoning:
            self.reasoning[delta.choice] = self.reasoning.get(delta.choice, "") + delta.reasoning
        if delta.text or delta.reasoning:
            self.throttle.poke()

    def flush(self) -> None:
        """Show what is pending now."""
        self.throttle.flush()

    def finish(self, view: object) -> None:
        """Replace the live view by ``view`` (the final answer), in the same output."""
        if self._handle is None:
            display(view)
        else:
            self._handle.update(view)

    def _view(self) -> MarkdownView:
        reasoning = self.reasoning if self.show_reasoning else {}
        markdown = answer_markdown(self.texts, reasoning, streaming=True)
        return MarkdownView(markdown, self.text)

    def _redraw(self) -> None:
        if self._handle is not None:
            self._handle.update(self._view())


def cost_line(res: ChatResult, prices: Mapping[str, Any] | None) -> str | None:
    """``cost $X[, saved $Y by N cached tokens] (…)`` from the usage and the prices (USD per
    million tokens), or None."""
    if not prices:
        return None
    from tmlab.frames import usage_frame

    row = usage_frame(res, prices=prices).iloc[0]
    cost, saved = row["cost_usd"], row["saved_usd"]
    if cost is None or cost != cost or str(cost) == "<NA>":
        return None
    line = f"cost ${float(cost):.6f}"
    if res.usage.cached_tokens:
        line += f", saved ${float(saved):.6f} by {res.usage.cached_tokens:,} cached tokens"
    return line + f" (at the given prices per 1M tokens: {_prices(prices, res)})"


def _prices(prices: Mapping[str, Any], res: ChatResult) -> str:
    price = prices if ("input" in prices or "output" in prices) else prices.get(res.model or "")
    if not isinstance(price, Mapping):
        return "?"
    parts = [
        f"input ${float(price.get('input', 0.0)):g}",
        f"output ${float(price.get('output', 0.0)):g}",
    ]
    if price.get("cached_input"):
        parts.append(f"cached input ${float(price['cached_input']):g}")
    return ", ".join(parts)


def result_view(
    res: ChatResult,
    show: Iterable[str] = ("answer", "reasoning", "usage"),
    *,
    prices: Mapping[str, Any] | None = None,
    note: str | None = None,
) -> MarkdownView:
    """The final view of an answer: reasoning (collapsible), answer (Markdown), usage line.

    ``show`` picks the parts: ``answer``, ``reasoning``, ``usage``, ``raw`` (the response
    JSON); the logprobs table is a separate output (:func:`tmlab.display.style_logprobs`).
    ``note`` is added to the footer (e.g. that the answer is partial).
    """
    from tmlab.display import usage_line

    show = set(show)
    texts = {c.index: c.text for c in res.choices} if "answer" in show else {}
    thoughts = (
        {c.index: c.reasoning for c in res.choices if c.reasoning} if "reasoning" in show else {}
    )
    footer: list[str] = []
    if "usage" in show:
        footer.append(usage_line(res))
        footer.append(cost_line(res, prices) or "")
    if note:
        footer.append(note)
    markdown = answer_markdown(texts, thoughts, footer=footer)
    extra: list[str] = []
    if res.tool_calls and "answer" in show:
        functions = [c.get("function") or {} for c in res.tool_calls]
        calls = [f"{f.get('name', '?')}({f.get('arguments', '')})" for f in functions]
        extra.append("tool calls:\n```\n" + "\n".join(calls) + "\n```")
    if "raw" in show:
        extra.append("```json\n" + json.dumps(res.raw, indent=1, ensure_ascii=False) + "\n```")
    if extra:
        markdown = "\n\n".join([markdown, *extra]) if markdown else "\n\n".join(extra)
    plain = "\n".join([res.text if "answer" in show else "", *[f for f in footer if f]]).strip()
    return MarkdownView(markdown, plain)


class Debounce:
    """Calls ``fn`` once, ``delay`` seconds after the last of a burst of ``__call__``."""

    def __init__(self, delay: float, fn: Callable[[], object]) -> None:
        self.delay = delay
        self._fn = fn
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._timers: list[threading.Timer] = []

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            timer = threading.Timer(self.delay, self._fire)
            timer.daemon = True
            self._timer = timer
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():
                return
            self._timer = None
        self._fn()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def join(self, timeout: float | None) -> None:
        with self._lock:
            timers = list(self._timers)
        for t in timers:
            if t is not threading.current_thread():
                t.join(timeout)

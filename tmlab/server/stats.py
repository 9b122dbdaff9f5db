"""What the server is doing, for a teacher watching a room: ``GET /v1/stats`` and the log.

:class:`Stats` counts requests as they finish, measures the rate of generated tokens over
the last :data:`WINDOW_S` seconds, how long the model has been idle (the shared server's
idle exit reads it) and, with ``--parallel N``, the most sequences decoded together in one
step; :func:`request_line` is the one log line per request (time, status, tokens, latency:
never content, never the key), written by :class:`RequestLog`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WINDOW_S", "RequestLog", "Stats", "request_line"]

WINDOW_S = 10.0
"""Tokens per second are measured over this many recent seconds."""


class Stats:
    """Finished requests, and the rate of generated tokens (thread-safe).

    ``generated()`` returns how many tokens the engine has generated so far; the rate is
    measured between samples of it taken when requests finish and when stats are asked for,
    over the last :data:`WINDOW_S` seconds.
    """

    def __init__(self, generated: Callable[[], int]) -> None:
        self._generated = generated
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.requests = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])
        self._active = 0
        self._last_active = self.started
        self.peak_decoded_together: int | None = None
        """The most sequences whose next tokens one step decoded in one llama.cpp call, since
        start (reported by the batch loop through :meth:`decoded_together`; None until then,
        and on a one-slot server, which never decodes two at once)."""

    def entered(self) -> None:
        """A model request began (it counts as activity until it ends)."""
        with self._lock:
            self._active += 1

    def left(self) -> None:
        """A model request ended."""
        with self._lock:
            self._active -= 1
            self._last_active = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last model request ended; 0 while one is under way."""
        with self._lock:
            return 0.0 if self._active else time.monotonic() - self._last_active

    def decoded_together(self, n: int) -> None:
        """A step of the batch loop decoded the next tokens of ``n`` sequences together."""
        with self._lock:
            if self.peak_decoded_together is None or n > self.peak_decoded_together:
                self.peak_decoded_together = n

    def _sample(self) -> tuple[float, int]:
        now, total = time.monotonic(), self._generated()
        self._samples.append((now, total))
        while len(self._samples) > 2 and self._samples[1][0] < now - WINDOW_S:
            self._samples.popleft()
        return now, total

    def finished(self, status: int) -> None:
        """Count a finished request."""
        with self._lock:
            self.requests += 1
            self.by_status[status] += 1
            self._sample()

    def tokens_per_s(self) -> float:
        """Tokens generated per second over about the last :data:`WINDOW_S` seconds."""
        with self._lock:
            now, total = self._sample()
            t0, n0 = self._samples[0]
        return (total - n0) / max(now - t0, 1e-9)

    def snapshot(self) -> dict[str, Any]:
        """Totals since the server started (``peak_decoded_together`` once reported)."""
        with self._lock:
            out: dict[str, Any] = {
                "requests": self.requests,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "tokens": self._generated(),
                "uptime_s": round(time.monotonic() - self.started, 1),
            }
            if self.peak_decoded_together is not None:
                out["peak_decoded_together"] = self.peak_decoded_together
            return out


def request_line(method: str, path: str, status: int, tokens: int, latency_s: float) -> str:
    """``2026-11-29T09:41:02 POST /v1/chat/completions 200 12 tokens 0.41 s``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp} {method} {path} {status} {tokens} tokens {latency_s:.2f} s"


class RequestLog:
    """ASGI middleware: one :func:`request_line` per model request (to ``log``, when given),
    each counted in ``stats``, and the ``headers`` added to its answer.

    The tokens come from the request's ``ServerTiming`` (``request.state.timing``), set by the chat
    route; other routes log 0 tokens.
    """

    PATHS = ("/chat/completions", "/tokenize", "/detokenize")

    def __init__(
        self,
        app: Any,
        stats: Stats,
        log: Callable[[str], None] | None,
        headers: dict[str, str],
    ) -> None:
        self.app = app
        self.stats = stats
        self.log = log
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(self.PATHS):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # if the app fails before it answers
        chat = scope["path"].endswith("/chat/completions")
        self.stats.entered()

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if chat:
                    message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.stats.left()
            timing = scope.get("state", {}).get("timing")
            tokens = int(getattr(timing, "tokens", 0) or 0)
            if chat:
                self.stats.finished(status)
            if self.log is not None:
                latency = time.perf_counter() - t0
                self.log(request_line(scope["method"], scope["path"], status, tokens, latency))

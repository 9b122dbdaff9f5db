"""Reading a streamed answer: SSE bytes in, a timed :class:`~tmlab.ChatResult` out.

:class:`StreamReader` drives a decoder (:mod:`tmlab.client.sse`) and an accumulator
(:mod:`tmlab.client.stream`) over raw bytes; the client's sync and async loops only move bytes into
it. In-band errors, malformed data and a stream that ends too early become
:class:`~tmlab.StreamError` with the partial answer. :func:`make_timing` times an answer,
streamed or not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tmlab.client.sse import DONE, SSEDecodeError, SSEDecoder
from tmlab.client.stream import Delta, StreamAccumulator
from tmlab.errors import StreamError, redact
from tmlab.result import ChatResult, Timing

__all__ = ["StreamReader", "make_timing"]


def make_timing(
    start: float, first: float | None, end: float, completion_tokens: int | None
) -> Timing:
    """Timing of a request sent at ``start`` that ended at ``end`` (perf_counter times).

    ``first`` is the first token's time (streams) or ``None`` (then ttft = latency).
    """
    latency = end - start
    tps = None
    if first is None:  # non-streaming: the whole answer arrives at once
        ttft = latency
        if completion_tokens is not None and latency > 0:
            tps = completion_tokens / latency
    else:
        # After the first token arrived, the other n - 1 were generated in latency - ttft.
        ttft = first - start
        generating = latency - ttft
        if completion_tokens is not None and completion_tokens > 1 and generating > 0:
            tps = (completion_tokens - 1) / generating
    return Timing(latency_s=latency, ttft_s=ttft, tokens_per_s=tps)


_NOT_JSON: Any = object()

# json.loads minus its wrapping: (object, end index) of the JSON value starting at an index.
# (The scanner json.loads itself uses; typeshed does not declare the attribute.)
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class StreamReader:
    """Bytes of a chat-completion SSE stream in, a :class:`ChatResult` out.

    Feed raw chunks with :meth:`feed`; at the end of the body call :meth:`result`, or
    :meth:`broken` when the transport failed. ``received`` says whether any byte arrived
    (after which the request must not be retried); ``done`` that ``[DONE]`` arrived, after
    which the caller stops reading (a server may keep the connection open) and ``end`` is
    the time it arrived, the end of the answer's latency. Raises
    :class:`~tmlab.StreamError` for in-band errors and malformed data, with ``.partial``.
    """

    def __init__(
        self,
        request: dict[str, Any],
        on_delta: Callable[[Delta], Any] | None = None,
        *,
        start: float | None = None,
        secret: str | None = None,
    ) -> None:
        self.request = request
        self.secret = secret
        self.start = time.perf_counter() if start is None else start
        self.decoder = SSEDecoder()
        self.acc = StreamAccumulator(on_delta)
        self.received = False
        self.done = False
        self.end: float | None = None

    def feed(self, chunk: bytes) -> None:
        """Decode one chunk of the body and merge its events."""
        if not chunk:
            return
        self.received = True
        if self.done:
            return  # bytes after [DONE] are drained, not read
        try:
            events = self.decoder.feed(chunk)
        except SSEDecodeError as exc:
            raise self._error(str(exc)) from None
        self._events(events)

    def _events(self, events: list[tuple[str | None, str]]) -> None:
        if self.done:
            return
        scan = _scan_json
        add = self.acc.add
        for name, data in events:
            if data == DONE:
                self.done = True
                self.end = time.perf_counter()
                return
            # The common case: an unnamed event whose data is exactly one JSON object with
            # no "error" key. Calling the C scanner under json.loads directly skips loads'
            # two Python frames and two whitespace regexes per event; anything it does not
            # take whole (whitespace around it, malformed JSON, another type) goes the long
            # way, through json.loads, so the result and the errors stay the same.
            try:
                obj, end = scan(data, 0)
            except (StopIteration, ValueError):
                end = -1
            if end == len(data) and name is None and type(obj) is dict and "error" not in obj:
                add(obj)
            else:
                self._event(name, data)

    def _event(self, name: str | None, data: str) -> None:
        """One event's data, every case: in-band errors, malformed JSON, keep-alives."""
        try:
            obj = json.loads(data)
        except ValueError:
            obj = _NOT_JSON
        if obj is _NOT_JSON:
            if name == "error":  # an error event in the server's own words, not JSON
                self._in_band_error(data)
            if not data.strip():
                return  # whitespace only: a keep-alive
            raise self._error(f"malformed SSE data line: {self._snippet(data)}")
        if name == "error":
            self._in_band_error((obj.get("error") or obj) if isinstance(obj, dict) else obj)
        if not isinstance(obj, dict):
            raise self._error(f"SSE data is not a JSON object: {self._snippet(data)}")
        if "error" in obj and obj["error"] is not None:
            self._in_band_error(obj["error"])
        self.acc.add(obj)

    def _snippet(self, data: str) -> str:
        # Redact before cutting: a cut can leave a prefix of the key that no longer matches.
        data = redact(data, self.secret)
        return repr(data if len(data) <= 200 else data[:197] + "...")

    def _in_band_error(self, err: Any) -> None:
        if isinstance(err, dict):
            message = err.get("message") or json.dumps(err)
            etype, code = err.get("type"), err.get("code")
        else:
            message, etype, code = str(err), None, None
        raise self._error(
            f"the server reported an error mid-stream: {message}",
            type=etype if isinstance(etype, str) else None,
            code=code if isinstance(code, str | int) else None,
        )

    def partial(self) -> ChatResult:
        """What arrived so far, as an incomplete ChatResult."""
        return self._result(complete=False)

    def _result(self, complete: bool) -> ChatResult:
        raw = self.acc.build()
        usage = raw.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        end = time.perf_counter() if self.end is None else self.end
        timing = make_timing(self.start, self.acc.first_token_at, end, tokens)
        return ChatResult(raw, request=self.request, timing=timing, complete=complete)

    def _error(self, message: str, **kw: Any) -> StreamError:
        return StreamError(redact(message, self.secret), partial=self.partial(), **kw)

    def result(self) -> ChatResult:
        """The body ended: the complete result, or StreamError if it ended too early."""
        if not self.done:
            try:
                self._events(self.decoder.flush())
            except SSEDecodeError as exc:
                raise self._error(str(exc)) from None
        self.acc.flush()
        if not self.done and not self.acc.finished:
            raise self._error(
                "the stream ended before [DONE] and before a finish_reason "
                f"({self.acc.chunks} chunks received); .partial holds what arrived"
            )
        return self._result(complete=True)

    def broken(self, exc: BaseException) -> StreamError:
        """The transport failed after data arrived: StreamError with the partial answer."""
        self.acc.flush()
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return self._error(
            f"the stream broke off after {self.acc.chunks} chunks ({detail}); "
            ".partial holds what arrived"
        )

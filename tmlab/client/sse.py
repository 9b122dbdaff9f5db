"""A fast server-sent events (SSE) decoder: bytes or lines in, events out.

Chat-completion streams are ``data: {json}`` lines separated by blank lines and closed by
``data: [DONE]``. The decoder follows the SSE rules that matter for them: ``data:`` lines
(several in one event are joined with ``\\n``), ``event:`` names, ``:`` comments, LF, CRLF and
lone CR line ends (also split across chunks), and a line or event spread over many chunks.
``id:`` and ``retry:`` fields are read and ignored: a chat stream is never resumed. An event
whose data is empty (``data:`` and a blank line, sent as a keep-alive) is not dispatched, as
the spec says.

Speed matters because a long stream is tens of thousands of events: the decoder works on
whole chunks (one ``split`` per chunk, one UTF-8 decode per chunk), never per character, and
emits each event as a plain ``(event_name, data)`` tuple. JSON is parsed by the caller, once
per event (:class:`tmlab.client.reader.StreamReader`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["DONE", "SSEDecodeError", "SSEDecoder", "SSEEvent"]

DONE: Final = "[DONE]"
"""The data of the event that ends an OpenAI-style stream."""

SSEEvent = tuple[str | None, str]
"""One event: ``(event name or None, data)``."""


class SSEDecodeError(ValueError):
    """A stream could not be decoded: it is not valid UTF-8."""


class SSEDecoder:
    """Incremental SSE decoder.

    Feed it raw chunks as they arrive (:meth:`feed`); call :meth:`flush` at the end of the
    stream.
    """

    __slots__ = ("_data", "_event", "_pending")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # bytes of an unfinished line
        self._data: list[str] = []  # data lines of the event being built
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode one chunk of bytes; return the events it completed (often one)."""
        if (
            chunk[-2:] == b"\n\n"
            and chunk[:6] == b"data: "
            and len(chunk) > 8  # not "data: " + blank line: an empty event (not dispatched)
            and not self._pending
            and not self._data
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):
            # Fast path: a live server sends one whole one-line event per chunk.
            event, self._event = self._event, None
            try:
                return [(event, chunk[6:-2].decode("utf-8"))]
            except UnicodeDecodeError as exc:
                raise SSEDecodeError(f"stream is not valid UTF-8: {exc}") from None
        if b"\n" not in chunk and b"\r" not in chunk:
            # No line end: keep the piece; joining once later avoids quadratic copies.
            if chunk:
                self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
        if b"\r" in chunk:
            # A trailing CR may be the first half of a CRLF split across two chunks.
            hold_cr = chunk.endswith(b"\r")
            if hold_cr:
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            end = chunk.rfind(b"\n")
            rest = chunk[end + 1 :] + b"\r" if hold_cr else chunk[end + 1 :]
            if rest:
                self._pending.append(rest)
            if end < 0:
                return []
        else:
            end = chunk.rfind(b"\n")
            if end + 1 < len(chunk):
                self._pending.append(chunk[end + 1 :])
        try:
            text = chunk[:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEDecodeError(f"stream is not valid UTF-8: {exc}") from None
        if text[:6] == "data: " and text[-1:] == "\n" and not self._data and self._event is None:
            # Fast path for many events in one chunk (a fast network): when the text is only
            # "data: X" lines each followed by one blank line, splitting on the separator
            # yields the events in C. Each payload holds no line end exactly when the text
            # has no line ends but the separators' two and the final one.
            payloads = text[6:-1].split("\n\ndata: ")
            if text.count("\n") == 2 * len(payloads) - 1 and "" not in payloads:
                return [(None, data) for data in payloads]
        return self._lines(text.split("\n"))

    def flush(self) -> list[SSEEvent]:
        """End of stream: decode an unterminated last line and dispatch a pending event.

        The SSE spec drops an event that the stream did not close with a blank line; chat
        servers sometimes end with ``data: [DONE]`` and no blank line, so it is kept.
        """
        lines: list[str] = []
        if self._pending:
            tail = b"".join(self._pending).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            self._pending.clear()
            try:
                lines = tail.decode("utf-8").split("\n")
            except UnicodeDecodeError as exc:
                raise SSEDecodeError(f"stream is not valid UTF-8: {exc}") from None
        lines.append("")
        return self._lines(lines)

    def _lines(self, lines: Iterable[str]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:  # blank line: dispatch, unless the data is empty (a keep-alive)
                if data:
                    joined = data[0] if len(data) == 1 else "\n".join(data)
                    if joined:
                        events.append((self._event, joined))
                    data = self._data = []
                self._event = None
            elif line[:6] == "data: ":  # the common case, first
                data.append(line[6:])
            elif line[0] == ":":  # comment (keep-alive)
                continue
            else:
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    data.append(value)
                elif name == "event":
                    self._event = value
                # id, retry and unknown fields are ignored.
        return events

"""What one request may cost the embedded server, and how it is held to that.

A server shared by a room must not let one request (a pasted book, a 60 MB body, ``n=64``)
take the model or the machine from everybody else. The limits, all set on the command line
(``tmlab serve --max-body-bytes … --max-n … --max-request-tokens … --max-queue …``):

* **Body size** (:func:`read_body`): a body longer than ``max_body_bytes`` is a 413, known from
  ``Content-Length`` before a byte of it is read, or counted while it streams in (chunked
  bodies): the server never holds more than the limit.
* **Body time**: a body not received in full within ``body_timeout`` seconds is a 408. A
  client trickling its body a byte at a time would otherwise hold a place in the queue for as
  long as it likes (a deadline for the whole body, not between reads, which a trickle defeats).
* **Prompt length** (:class:`PromptBound`): every token of a prompt covers at least one byte
  of its text and at most the longest token of the vocabulary, so the text's length bounds its
  token count from both sides. A prompt whose lower bound is already past the context is
  refused without being tokenised; only prompts in the undecided band are tokenised in full.
* **Work per request**: ``n`` up to ``max_n``; ``n × max_tokens`` up to ``max_request_tokens``
  (a request that leaves ``max_tokens`` unset gets ``max_request_tokens // n`` per choice, or
  what the context leaves, whichever is less).
* **Queue** (:class:`Admission`): at most ``max_queue`` requests wait (being received, parsed
  or queued for the model) besides the one being generated; beyond that, a 503 with
  ``Retry-After`` and the error envelope, before the body is read.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tmlab.server.protocol import RequestError

if TYPE_CHECKING:
    from starlette.requests import Request

    from tmlab.server.engine import Engine

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_N",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_REQUEST_TOKENS",
    "Admission",
    "Limits",
    "PromptBound",
    "prompt_bound",
    "read_body",
]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""4 MiB: a whole context of text, JSON-escaped, with a full logit_bias, fits many times."""
DEFAULT_MAX_N = 16
DEFAULT_MAX_REQUEST_TOKENS = 16384
"""Two whole contexts of the default size: ``n=1`` may always fill the context."""
DEFAULT_MAX_QUEUE = 64
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds: the default 4 MiB body arrives in time at 140 KB/s."""


@dataclass(frozen=True)
class Limits:
    """The server's per-request limits (see the module docstring)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_n: int = DEFAULT_MAX_N
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS
    max_queue: int = DEFAULT_MAX_QUEUE
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    def __post_init__(self) -> None:
        t = self.body_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < math.inf:
            raise ValueError(f"body_timeout={t!r}: must be a number of seconds > 0")
        for name, least in (
            ("max_body_bytes", 1),
            ("max_n", 1),
            ("max_request_tokens", 1),
            ("max_queue", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r}: must be an integer >= {least}")


def _size(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n:,} bytes"


def body_too_large(limit: int) -> RequestError:
    """The 413 for a body longer than ``limit`` bytes."""
    return RequestError(
        413,
        f"the request body is larger than this server accepts: at most {_size(limit)} "
        f"({limit:,} bytes; tmlab serve --max-body-bytes)",
        code="request_too_large",
    )


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request's body, at most ``limit`` bytes; a longer one is a 413, one not received
    within ``timeout`` seconds a 408.

    A declared ``Content-Length`` above the limit is refused before anything is read; a
    body without one (chunked) is counted as it arrives and refused as soon as it passes the
    limit. Either way no more than ``limit`` bytes are held (the server discards the rest of
    the upload as it comes, without keeping it).
    """
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestError(
            408,
            f"the request body did not arrive within {timeout:g} s (tmlab serve --body-timeout)",
            code="request_timeout",
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if length > limit:
            raise body_too_large(limit)
    data = bytearray()
    async for chunk in request.stream():
        if len(data) + len(chunk) > limit:
            raise body_too_large(limit)
        data += chunk
    return bytes(data)


# --- prompt length -----------------------------------------------------------------------

# Bytes that make up the long tokens (runs of spaces, newlines, dashes, '#', '='): every token
# has few bytes outside this set, which bounds the tokens of ordinary text much more tightly
# than the longest token does.
_RUN_BYTES = bytes(b for b in range(128) if not chr(b).isalnum())


@dataclass(frozen=True)
class PromptBound:
    """Lower bound on a text's token count from its bytes alone, without tokenising it.

    ``longest``: the most bytes any token stands for; ``longest_core``: the most bytes
    outside :data:`_RUN_BYTES` (letters, digits, non-ASCII) any token holds. Tokenising a
    text splits its bytes among tokens, each covering at least one byte, so

        len(bytes) / longest  <=  tokens  <=  len(bytes),
        core bytes / longest_core  <=  tokens.

    The bound holds for vocabularies whose tokens spell out the bytes they cover (byte-level
    BPE, as SmolLM2's); special tokens count as the text that spells them.
    """

    longest: int
    longest_core: int

    def at_least(self, text: str) -> int:
        """The fewest tokens ``text`` can be."""
        raw = text.encode("utf-8", errors="surrogatepass")
        core = len(raw.translate(None, _RUN_BYTES))
        return max(math.ceil(len(raw) / self.longest), math.ceil(core / self.longest_core))


_bounds: weakref.WeakKeyDictionary[Engine, PromptBound] = weakref.WeakKeyDictionary()
_bounds_lock = threading.Lock()


def prompt_bound(engine: Engine) -> PromptBound:
    """The :class:`PromptBound` of ``engine``'s vocabulary (computed once, ~0.1 s).

    Reads the vocabulary only, like tokenising: safe beside a generation.
    """
    with _bounds_lock:
        bound = _bounds.get(engine)
        if bound is None:
            longest = core = 1
            for token in range(engine.n_vocab):
                piece = engine.token_bytes(token)
                longest = max(longest, len(piece))
                core = max(core, len(piece.translate(None, _RUN_BYTES)))
            bound = _bounds[engine] = PromptBound(longest, core)
        return bound


# --- the queue ---------------------------------------------------------------------------


class Admission:
    """Counts requests in the server and refuses those beyond ``max_queue`` waiting ones.

    A request is in from :meth:`enter` until its job on the model's worker is done (or
    skipped): ``receiving`` counts those still being read, parsed or planned on the event
    loop's side, the worker counts its jobs. The ones being generated (one per slot) do not
    wait.
    """

    def __init__(self, max_queue: int, pending: Callable[[], int], slots: int = 1) -> None:
        self.max_queue = max_queue
        self._pending = pending
        self.slots = slots  # requests generated at once (--parallel)
        self.receiving = 0

    def waiting(self) -> int:
        """Requests in the server besides the ones being generated."""
        return max(0, self.receiving + self._pending() - self.slots)

    @contextmanager
    def enter(self, retry_after: float) -> Iterator[None]:
        """Admit a request for the block (its job, once submitted, counts by itself).

        Raises the 503 when ``max_queue`` requests already wait; ``retry_after`` is the
        estimated seconds until there is room.
        """
        if self.receiving + self._pending() > self.max_queue + self.slots - 1:
            seconds = max(1, min(60, math.ceil(retry_after)))
            raise RequestError(
                503,
                f"the server is busy: {self.waiting()} requests are waiting for the model "
                f"(at most {self.max_queue}, tmlab serve --max-queue); retry in "
                f"{seconds} s",
                type="server_error",
                code="server_overloaded",
                headers={"Retry-After": str(seconds)},
            )
        self.receiving += 1
        try:
            yield
        finally:
            self.receiving -= 1

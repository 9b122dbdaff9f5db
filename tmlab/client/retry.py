"""Retry policy as pure functions: which answers to retry, and how long to wait.

Retried: 408 (request timeout), 409 (conflict, e.g. a lock), 429 (rate limited) and every
5xx. Never retried: any other 4xx (the request itself is wrong, sending it again cannot
help) and a stream that broke off after data arrived (the client raises ``StreamError``).
The wait is what the server asked for (``retry-after-ms``, ``Retry-After`` in seconds or as
an HTTP date), capped, or else exponential backoff with jitter.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_S", "backoff_delay", "is_retryable_status", "parse_retry_after"]

MAX_RETRY_AFTER_S = 60.0
"""Longest wait honoured from a Retry-After header; longer requests are cut to this."""

_RETRYABLE = frozenset({408, 409, 429})


def is_retryable_status(code: int) -> bool:
    """True for 408, 409, 429 and 5xx: answers that may succeed when sent again."""
    return code in _RETRYABLE or 500 <= code <= 599


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # plain dicts are case-sensitive
        for key, val in headers.items():
            if key.lower() == name:
                return str(val)
    return value


def _seconds(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def parse_retry_after(
    headers: Mapping[str, str],
    now: float | None = None,
    *,
    cap: float = MAX_RETRY_AFTER_S,
) -> float | None:
    """Seconds to wait before retrying, as the server asked; ``None`` if it did not say.

    Reads ``retry-after-ms`` (milliseconds, OpenAI's) first, then ``Retry-After`` as seconds
    (``"2"``, ``"1.5"``) or as an HTTP date (``now`` is the current Unix time, for tests).
    A negative, non-finite or unparseable value gives ``None``; a date in the past gives
    ``0.0``; anything above ``cap`` is cut to ``cap``.
    """
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        ms = _seconds(raw_ms)
        if ms is not None:
            return min(ms / 1000.0, cap)
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    seconds = _seconds(raw)
    if seconds is None:
        try:
            when = parsedate_to_datetime(raw.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT anyway
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    return min(seconds, cap)


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 8.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (0 = first retry).

    The ceiling doubles each attempt from ``base`` up to ``cap``; the delay is drawn in
    [75 %, 100 %] of it, so clients that failed together do not retry in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt))
    return ceiling * (1.0 - 0.25 * rng())

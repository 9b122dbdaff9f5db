"""One clear line per error: what went wrong, the server's words, and the fix when known.

Used by the ``%%tmchat`` magic and the Explorer widget instead of a traceback::

    AuthenticationError 401: Missing or incorrect API key … — the API key was refused: set
    TENSORMESH_INFERENCE_API_KEY or run %tmconfig key=env:VAR

No IPython here. The line never contains the API key: tmlab's messages are redacted where
they are made, and this module redacts the configured key once more, for anything else.
"""

from __future__ import annotations

import os

import tmlab.client.settings as _settings
from tmlab.client.settings import ENV_API_KEY
from tmlab.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    LocalServerError,
    NotFoundError,
    ParameterError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamError,
    redact,
)

__all__ = ["error_line", "fix_for"]

_MAX = 400  # characters of the server's message kept; the rest is cut with "…"

# The fix for each status class; the first matching class wins (subclasses first).
_STATUS_FIXES: tuple[tuple[type[APIStatusError], str], ...] = (
    (
        AuthenticationError,
        f"the API key was refused: set {ENV_API_KEY} or run %tmconfig key=env:VAR",
    ),
    (
        PermissionDeniedError,
        "this key may not use this model or endpoint: check the model (%tmmodels) or the key",
    ),
    (
        NotFoundError,
        "unknown model or URL: list the served models with %tmmodels, check base_url "
        "with %tmconfig",
    ),
    (
        RateLimitError,
        "rate limited (already retried, honouring Retry-After): wait a little, or send fewer "
        "requests at once",
    ),
    (ServerError, "the server failed (already retried): try again later"),
)


def _one_line(text: str) -> str:
    """Collapse a message onto one line and cut it to a readable length."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX else flat[: _MAX - 1] + "…"


def _secrets() -> list[str]:
    keys = [os.environ.get(ENV_API_KEY)]
    # the session's key variable, when %tmconfig named one
    var = getattr(getattr(_settings, "session", None), "key_env", None)
    if isinstance(var, str) and var:
        keys.append(os.environ.get(var))
    return [k for k in keys if k]


def fix_for(exc: BaseException) -> str | None:
    """The fix for an error, when one is known; ``None`` otherwise."""
    if isinstance(exc, APIStatusError):
        for cls, fix in _STATUS_FIXES:
            if isinstance(exc, cls):
                return fix
        if isinstance(exc, BadRequestError):
            where = f" {exc.param!r}" if exc.param else ""
            return f"the server rejected the request: check the parameter{where} (%%tmchat? lists)"
        return None
    if isinstance(exc, APITimeoutError):
        return "the server took too long: lower max_tokens, or raise tmlab.Client(timeout=...)"
    if isinstance(exc, APIConnectionError):
        return "is the server running? check base_url with %tmconfig"
    if isinstance(exc, StreamError):
        return "the partial answer is kept (complete=False); send the request again"
    if isinstance(exc, LocalServerError):
        return "the embedded server could not start; use --debug for its output"
    if isinstance(exc, KeyboardInterrupt):
        return "the request was stopped; the partial answer is kept (complete=False)"
    return None


def error_line(exc: BaseException) -> str:
    """One line: the error class, the status, the server's message and the fix when known."""
    name = type(exc).__name__
    if isinstance(exc, APIStatusError):
        head = f"{name} {exc.status_code}: {_one_line(exc.message)}"
        extra = [f"{k}={v!r}" for k, v in (("param", exc.param), ("code", exc.code)) if v]
        if exc.request_id:
            extra.append(f"request_id={exc.request_id!r}")
        if extra:
            head += f" ({', '.join(extra)})"
    elif isinstance(exc, ParameterError):
        head = f"{name}: {_one_line(str(exc))}"
    elif isinstance(exc, LocalServerError):
        first = str(exc).strip().splitlines()[:1]
        head = f"{name}: {_one_line(first[0]) if first else 'the local server failed'}"
    elif isinstance(exc, KeyboardInterrupt):
        head = "Interrupted"
    else:
        message = _one_line(str(exc))
        head = f"{name}: {message}" if message else name
    fix = fix_for(exc)
    line = f"{head} — {fix}" if fix else head
    for secret in _secrets():
        line = redact(line, secret)
    return line

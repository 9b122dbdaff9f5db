"""The one error tree of tmlab.

::

    TmlabError
    ├── ParameterError (also ValueError)  bad input, raised before anything is sent
    ├── APIError                          something went wrong talking to the server
    │   ├── APIStatusError                the server answered with an error status
    │   │   ├── BadRequestError           400, 422
    │   │   ├── AuthenticationError       401
    │   │   ├── PermissionDeniedError     403
    │   │   ├── NotFoundError             404
    │   │   ├── RateLimitError            429
    │   │   └── ServerError               5xx
    │   ├── APIConnectionError            no answer (refused, reset, DNS …)
    │   │   └── APITimeoutError
    │   └── StreamError                   a stream broke off, malformed or in-band error;
    │                                     ``.partial`` holds the ChatResult so far
    ├── ContinuationError                 the server does not continue a final assistant
    │                                     message, so it cannot branch
    ├── ScoreError                        the server can neither echo prompt logprobs nor
    │                                     continue, so it cannot score a given text
    └── LocalServerError                  the embedded server could not start

No message or repr ever contains the API key: messages come from the server's body or from
tmlab itself, and :func:`redact` scrubs a known key out of anything quoted back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from tmlab.result import ChatResult

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ContinuationError",
    "LocalServerError",
    "NotFoundError",
    "ParameterError",
    "PermissionDeniedError",
    "RateLimitError",
    "ScoreError",
    "ServerError",
    "StreamError",
    "TmlabError",
    "redact",
    "redact_json",
    "status_error_from_response",
]


def redact(text: str, secret: str | None) -> str:
    """Return ``text`` with every occurrence of ``secret`` replaced by ``***``.

    Also the forms a key takes when quoted back escaped (``repr`` or JSON of it). Redact
    before truncating: a cut can leave a prefix of the key that no longer matches.
    """
    if not secret or len(secret) < 4:
        return text
    if secret in text:
        text = text.replace(secret, "***")
    for form in (repr(secret)[1:-1], json.dumps(secret)[1:-1]):
        if form != secret and form in text:
            text = text.replace(form, "***")
    return text


def redact_json(value: Any, secret: str | None) -> Any:
    """``value`` (parsed JSON) with ``secret`` redacted from every string, keys included."""
    if not secret:
        return value
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, dict):
        return {redact_json(k, secret): redact_json(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v, secret) for v in value]
    return value


class TmlabError(Exception):
    """Base class of every error tmlab raises."""


class ParameterError(TmlabError, ValueError):
    """A request parameter is wrong; raised before anything is sent.

    ``.param`` names the parameter, ``.allowed`` says what would be accepted.
    """

    def __init__(self, param: str, message: str, allowed: str | None = None) -> None:
        self.param = param
        self.allowed = allowed
        text = message if allowed is None else f"{message} (allowed: {allowed})"
        super().__init__(text)


class LocalServerError(TmlabError):
    """The embedded local server could not be started or did not become healthy."""


class ContinuationError(TmlabError):
    """The server does not continue a final assistant message, so it cannot branch."""


class ScoreError(TmlabError):
    """The server cannot score a given text: it offers neither prompt logprobs nor continuation."""


class APIError(TmlabError):
    """Something went wrong talking to the server."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        self.message = message
        self.request = request
        super().__init__(message)


class APIStatusError(APIError):
    """The server answered with a 4xx/5xx status.

    ``.body`` is the parsed error body (or its text), ``.response`` the httpx response. When
    the client knows the API key, both are scrubbed of it: if the server quoted the key back,
    ``.response`` is a copy whose body has it replaced by ``***``. ``.request`` is the raw
    httpx request: its ``Authorization`` header holds the key (httpx hides it in reprs).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        param: str | None = None,
        code: str | int | None = None,
        request_id: str | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.request_id = request_id
        self.body = body
        self.response = response
        super().__init__(message, request=request)

    def __str__(self) -> str:
        parts = [f"{self.status_code}: {self.message}"]
        extra = [
            f"{k}={v!r}"
            for k, v in (("type", self.type), ("param", self.param), ("code", self.code))
            if v is not None
        ]
        if self.request_id:
            extra.append(f"request_id={self.request_id!r}")
        if extra:
            parts.append("(" + ", ".join(extra) + ")")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class BadRequestError(APIStatusError):
    """400 or 422: the server rejected the request body."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model or endpoint."""


class NotFoundError(APIStatusError):
    """404: unknown model or path."""


class RateLimitError(APIStatusError):
    """429: rate limited; retried automatically, honouring Retry-After."""


class ServerError(APIStatusError):
    """5xx: the server failed; retried automatically."""


class APIConnectionError(APIError):
    """No answer from the server: connection refused, reset, DNS failure …"""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class StreamError(APIError):
    """A stream broke off, carried an in-band error or a malformed line.

    ``.partial`` is the :class:`~tmlab.ChatResult` assembled from what arrived before.
    """

    def __init__(
        self,
        message: str,
        *,
        partial: ChatResult | None = None,
        request: httpx.Request | None = None,
        type: str | None = None,
        code: str | int | None = None,
    ) -> None:
        self.partial = partial
        self.type = type
        self.code = code
        super().__init__(message, request=request)


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}

_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "cf-ray")


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None, str | int | None]:
    """(message, type, param, code) from any of the error-body shapes servers use."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            return (
                msg if isinstance(msg, str) else (json.dumps(msg) if msg is not None else None),
                err.get("type") if isinstance(err.get("type"), str) else None,
                err.get("param") if isinstance(err.get("param"), str) else None,
                err.get("code") if isinstance(err.get("code"), str | int) else None,
            )
        if isinstance(err, str):
            return err, body.get("type"), body.get("param"), body.get("code")
        if "detail" in body:  # FastAPI
            detail = body["detail"]
            if isinstance(detail, str):
                return detail, None, None, None
            if isinstance(detail, list):  # pydantic validation errors
                msgs = []
                param = None
                for item in detail:
                    if isinstance(item, dict):
                        loc = [str(p) for p in item.get("loc", []) if p != "body"]
                        if loc and param is None:
                            param = ".".join(loc)
                        msgs.append(
                            f"{'.'.join(loc)}: {item.get('msg', item)}"
                            if loc
                            else str(item.get("msg", item))
                        )
                    else:
                        msgs.append(str(item))
                return "; ".join(msgs), None, param, None
            return json.dumps(detail), None, None, None
        if isinstance(body.get("message"), str):
            code = body.get("code")
            return (
                body["message"],
                body.get("type"),
                body.get("param"),
                code if isinstance(code, str | int) else None,
            )
    return None, None, None, None


def _redacted_copy(response: httpx.Response, secret: str) -> httpx.Response:
    """``response`` with ``secret`` scrubbed from its (already read, decoded) body."""
    import httpx

    content = redact(response.text, secret).encode(response.encoding or "utf-8", "replace")
    # The body is stored decoded: drop the headers that described the bytes on the wire.
    drop = {"content-encoding", "content-length", "transfer-encoding"}
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in drop]
    try:
        request: httpx.Request | None = response.request
    except RuntimeError:
        request = None
    copy = httpx.Response(
        response.status_code,
        headers=headers,
        content=content,
        request=request,
        extensions=response.extensions,
    )
    copy.read()
    return copy


def status_error_from_response(
    response: httpx.Response, *, secret: str | None = None
) -> APIStatusError:
    """Build the right :class:`APIStatusError` subclass from an error response.

    Reads ``{"error": {...}}``, FastAPI's ``{"detail": ...}``, a flat ``{"message": ...}``
    and non-JSON bodies. ``secret`` (the API key) is scrubbed from the message, the body and
    the response kept on the error.
    """
    status = response.status_code
    try:
        text = response.text
    except Exception:  # body not read (stream) or undecodable
        text = ""
    if secret and text and redact(text, secret) != text:
        # The server quoted the key back: keep it out of every attribute of the error.
        response = _redacted_copy(response, secret)
        text = response.text
    body: Any
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    body = redact_json(body, secret)
    message, etype, param, code = _error_fields(body)
    if message is None:
        snippet = text.strip()[:500]
        message = snippet or (response.reason_phrase or "error")
    message = redact(message, secret)
    request_id = None
    for name in _REQUEST_ID_HEADERS:
        if name in response.headers:
            request_id = response.headers[name]
            break
    cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIStatusError)
    try:
        request = response.request
    except RuntimeError:
        request = None
    return cls(
        message,
        status_code=status,
        type=etype,
        param=param,
        code=code,
        request_id=request_id,
        body=body if body is not None else (text or None),
        response=response,
        request=request,
    )

"""What :class:`~tmlab.Client` and :class:`~tmlab.AsyncClient` share: everything but the I/O.

:class:`BaseClient` holds the settings and does the rest that needs no network: building and
validating the request body (before anything is sent), the headers, the retry decisions
(which answers and failures to send again, and after how long), mapping failures and error
answers to tmlab's exceptions, and turning a non-streaming answer into a
:class:`~tmlab.ChatResult`. The clients in :mod:`tmlab.client` move the bytes and ask it what
to do next.

The per-request path is kept lean (one ``json.dumps``, one ``json.loads``, headers set once on
the httpx client, URLs parsed once) because a notebook sweep sends thousands of requests.
Every message built here is redacted (:func:`~tmlab.errors.redact`): the API key lives only in
the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import httpx

from tmlab import meta
from tmlab.client import local
from tmlab.client.child import started_here
from tmlab.client.history import record as _record_row
from tmlab.client.history import remember
from tmlab.client.reader import make_timing
from tmlab.client.retry import backoff_delay, is_retryable_status, parse_retry_after
from tmlab.client.settings import resolve_settings, session
from tmlab.client.stream import Delta
from tmlab.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    NotFoundError,
    ParameterError,
    TmlabError,
    redact,
    status_error_from_response,
)
from tmlab.params import validate_params
from tmlab.result import ChatResult

__all__ = ["BaseClient", "Messages", "OnDelta"]

Messages = str | Sequence[Mapping[str, Any]]
OnDelta = Callable[[Delta], Any]

# Failures where the request most likely never reached the model, so sending it again is
# safe. A ReadTimeout is not among them: the server may still be generating, and retrying
# would multiply the wait.
_RETRY_EXCEPTIONS: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def as_messages(prompt: Messages, system: str | None) -> list[Any]:
    if isinstance(prompt, str):
        messages: list[Any] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes | bytearray):
        messages = list(prompt)
        if not messages:
            raise ParameterError("messages", "messages is empty", "at least one message")
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping) or "role" not in msg:
                raise ParameterError(
                    "messages",
                    f"messages[{i}]={msg!r} is not a message",
                    "{'role': 'user' | 'system' | 'assistant' | 'tool', 'content': ...}",
                )
    else:
        raise ParameterError(
            "messages",
            f"expected a prompt string or a list of messages, got {type(prompt).__name__}",
            "a str, or a list of {'role': ..., 'content': ...} dicts",
        )
    if system is not None:
        if not isinstance(system, str):
            raise ParameterError("system", f"system={system!r} is not a string", "a string")
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _is_async_callable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with ``async def __call__``
    )


def _describe(exc: BaseException) -> str:
    """``"ReadError: connection reset"``: the kind of failure and its message (unredacted)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _names_the_model(error: APIError, request: httpx.Request) -> bool:
    """Whether a 404 is about the model (the server does not serve it), not about the path.

    Servers say so with ``code="model_not_found"`` (OpenAI, the embedded server), with
    ``param="model"``, or only in the message, which quotes the model's name (vLLM's "The
    model `x` does not exist.").
    """
    code, param = getattr(error, "code", None), getattr(error, "param", None)
    if code == "model_not_found" or param == "model":
        return True
    try:
        model = json.loads(request.content).get("model")
    except (ValueError, AttributeError, httpx.RequestNotRead):
        return False
    if not isinstance(model, str) or not model:
        return False
    # the name as a word of its own: model "m" is not named by "no route matched"
    return re.search(rf"(?<![\w.-]){re.escape(model)}(?![\w.-])", error.message) is not None


class BaseClient:
    """Settings, request building, retry decisions and error mapping: no I/O."""

    _awaits_on_delta = False  # AsyncClient awaits an on_delta that returns an awaitable

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 2,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ParameterError("max_retries", f"max_retries={max_retries!r}", "an int ≥ 0")
        self._settings = resolve_settings(base_url, api_key, model)
        self._key = self._settings.api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self._ready = False  # base URL resolved (the local server started) and URLs parsed
        self._moved_from: str | None = None  # the URL of an embedded server that died
        self._chat_url = httpx.URL()
        self._models_url = httpx.URL()
        self._base_url = self._settings.base_url
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"tmlab/{meta.version()}",
        }
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._headers = headers
        # Sent with each request only when the httpx client was injected (ours has them).
        self._request_headers: dict[str, str] | None = None
        # A server on this machine without a configured model: ask it once which it serves.
        s = self._settings
        self._lookup_model = not s.model and not s.local and s.loopback
        self._discovered: str | None = None
        self._served: list[str] | None = None

    def _copy_settings(self, other: BaseClient) -> None:
        """Take ``other``'s resolved settings (key, URL, model, what it learnt of the server)."""
        self._settings = other._settings
        self._key = other._key
        self._base_url = other._base_url
        self._headers = dict(other._headers)
        self._lookup_model = other._lookup_model
        self._discovered = other._discovered
        self._served = other._served

    # -- public, read-only --------------------------------------------------------------

    @property
    def base_url(self) -> str | None:
        """The server's base URL; ``None`` until the embedded local server has started."""
        return self._base_url

    @property
    def model(self) -> str | None:
        """The default model of this client (``None`` when none is configured)."""
        settings = self._settings
        if settings.model or settings.local or self._discovered:
            return settings.require_model(discovered=self._discovered)
        return None

    @property
    def embedded(self) -> bool:
        """True when this client talks to the embedded local server that tmlab starts itself
        (no API key and no base URL configured, or ``%tmconfig local``), or names its URL, or
        the URL of one this process started (``tmlab.local.start()``, not ``minimal``).

        Some facts hold only there: the same seeded request gives the same answer, logprobs are
        the model's raw distribution, every request is computed alone. Notebooks check them
        only when this is True; branching sends it token ids without asking first.
        """
        if self._settings.local:
            return True
        url = self._base_url
        if url is None:
            return False
        # the shared server of this user's kernels, or one this process started (local.start)
        return url.rstrip("/") == local.shared_url() or started_here(url)

    def __repr__(self) -> str:
        url = repr(self._base_url) if self._base_url else "<embedded local server>"
        key = "'***'" if self._key else None
        return f"{type(self).__name__}(base_url={url}, model={self.model!r}, api_key={key})"

    # -- building the request -----------------------------------------------------------

    def _build(
        self,
        prompt: Messages,
        model: str | None,
        system: str | None,
        stream: bool,
        on_delta: OnDelta | None,
        extra_body: Mapping[str, Any] | None,
        params: dict[str, Any],
    ) -> tuple[dict[str, Any], bytes, bool]:
        """Validate and build ``(body, payload, stream)``; raises before anything is sent."""
        sent = validate_params(params) if params else {}
        if on_delta is not None and not stream:
            raise ParameterError(
                "on_delta",
                "on_delta is only called when streaming",
                "stream=True with on_delta=...",
            )
        if on_delta is not None and not self._awaits_on_delta and _is_async_callable(on_delta):
            raise ParameterError(
                "on_delta",
                "on_delta is an async function, which the sync Client cannot await",
                "a plain function, or tmlab.AsyncClient, which awaits it",
            )
        if not stream and sent.get("stream_options") is not None:
            raise ParameterError(
                "stream_options", "stream_options is only valid when streaming", "stream=True"
            )
        body: dict[str, Any] = {
            "model": self._settings.require_model(
                model, discovered=self._discovered, served=self._served
            ),
            "messages": as_messages(prompt, system),
        }
        body.update(sent)
        if stream:
            body["stream"] = True
            if "stream_options" not in sent:
                body["stream_options"] = {"include_usage": True}
        if extra_body:
            if not isinstance(extra_body, Mapping):
                raise ParameterError(
                    "extra_body",
                    f"extra_body={extra_body!r} is not a dict",
                    "a dict of extra JSON fields",
                )
            body.update(extra_body)
        try:
            payload = _dumps(body).encode()
        except (TypeError, ValueError) as exc:
            raise ParameterError(
                "messages",
                f"the request is not valid JSON: {exc}",
                "strings, numbers, bools, None, lists and dicts",
            ) from None
        return body, payload, body.get("stream") is True

    def _learn_models(self, models: list[dict[str, Any]]) -> None:
        """Remember the models a loopback server serves; one model becomes the default."""
        self._lookup_model = False
        self._served = [str(m.get("id")) for m in models if isinstance(m, dict)]
        if len(self._served) == 1:
            self._discovered = self._served[0]

    def _resolve(self, *, recheck: bool = False) -> None:
        # this user's shared local server, found or started (it prints its one-line notice)
        base = self._base_url or local.ensure_server(
            session.local_parallel(), recheck=recheck
        ).base_url.rstrip("/")
        self._base_url = base
        self._chat_url = httpx.URL(base + "/chat/completions")
        self._models_url = httpx.URL(base + "/models")

    def _relocate(self, exc: Exception) -> bool:
        """After ``exc`` (no answer yet): True if the embedded server had died and a new one
        now serves at a new URL, so the request can go there at once (:meth:`_moved`).

        Only for the embedded local server, which this client does not own: it may have been
        killed (or crashed) since the last request; the next request then starts a new one
        instead of failing until the kernel restarts.
        """
        if not self._settings.local or not isinstance(exc, _RETRY_EXCEPTIONS):
            return False
        old = self._base_url
        self._base_url = None
        try:
            self._resolve(recheck=True)  # the shared server, restarted if it does not answer
        except BaseException:
            self._base_url = old
            raise
        if self._base_url == old or old is None:
            return False
        self._moved_from = old
        return True

    def _moved(self, url: httpx.URL) -> httpx.URL:
        """``url`` on the server that replaced a dead one (after :meth:`_relocate`)."""
        old, new = self._moved_from, self._base_url
        text = str(url)
        if old and new and text.startswith(old):
            return httpx.URL(new + text[len(old) :])
        return url

    # -- retry decisions and errors -----------------------------------------------------

    def _status_delay(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying this error answer, or None: do not retry."""
        if attempt >= self.max_retries or not is_retryable_status(response.status_code):
            return None
        asked = parse_retry_after(response.headers)
        return backoff_delay(attempt) if asked is None else asked

    def _exception_delay(self, attempt: int, exc: Exception) -> float | None:
        """Seconds to wait before retrying after a transport failure, or None."""
        if attempt >= self.max_retries or not isinstance(exc, _RETRY_EXCEPTIONS):
            return None
        return backoff_delay(attempt)

    def _transport_error(self, exc: httpx.RequestError) -> APIConnectionError:
        """The error for a failure before the answer's headers arrived; raise it from None."""
        try:
            request: httpx.Request | None = exc.request
        except RuntimeError:
            request = None
        where = self._base_url or "the server"
        if isinstance(exc, httpx.TimeoutException):
            message = f"request to {where} timed out ({type(exc).__name__}, timeout={self.timeout})"
            return APITimeoutError(redact(message, self._key), request=request)
        message = f"could not talk to {where}: {_describe(exc)}"
        return APIConnectionError(redact(message, self._key), request=request)

    def _broken_body(self, exc: httpx.RequestError, response: httpx.Response) -> APIError:
        """The error for an answer whose body broke off; never retried. Raise it from None."""
        where = self._base_url or "the server"
        got = response.num_bytes_downloaded
        if isinstance(exc, httpx.TimeoutException):
            message = (
                f"request to {where} timed out after the answer started ({got} bytes received; "
                f"{type(exc).__name__}, timeout={self.timeout}); not sent again"
            )
            return APITimeoutError(redact(message, self._key), request=response.request)
        message = (
            f"the answer from {where} (status {response.status_code}) broke off after {got} "
            f"bytes ({_describe(exc)}); not sent again, as the server may have done the work"
        )
        return APIConnectionError(redact(message, self._key), request=response.request)

    def _status_error(self, response: httpx.Response) -> APIError:
        error = status_error_from_response(response, secret=self._key)
        if (
            isinstance(error, NotFoundError)
            and response.request.url == self._chat_url
            and not _names_the_model(error, response.request)
        ):
            # A 404 that does not name the model: most often a base URL without its /v1 (or
            # with a path too many). Say what was tried, and how to fix it. A 404 that names
            # the model is the server saying it does not serve that model: the URL is right.
            error.message += (
                f" — tried POST {self._chat_url}; check the base URL (it usually ends in /v1:"
                " Client(base_url=...), %tmconfig base_url=... or TENSORMESH_SERVERLESS_BASE_URL)"
                " and the model name"
            )
            error.args = (error.message,)
        return error

    # -- history ------------------------------------------------------------------------

    def _record(
        self,
        body: dict[str, Any],
        result: ChatResult | None = None,
        exc: BaseException | None = None,
        start: float | None = None,
    ) -> int | None:
        """Log one sent request in the history; the id goes on the result or the error."""
        if exc is not None and result is None:
            partial = getattr(exc, "partial", None)
            result = partial if isinstance(partial, ChatResult) else None
        error = None
        if exc is not None:
            if isinstance(exc, TmlabError):
                error = f"{type(exc).__name__}: {exc}"
            elif isinstance(exc, KeyboardInterrupt | asyncio.CancelledError) or getattr(
                exc, "stops_request", False
            ):
                # Ctrl-C, the kernel's stop button, the Explorer's Stop, a stopped sweep
                error = "interrupted"
            else:
                error = f"cancelled ({type(exc).__name__})"
        latency = None if start is None else time.perf_counter() - start
        row_id = _record_row(
            body,
            base_url=self._base_url,
            result=result,
            error=error,
            latency_s=latency,
            secret=self._key,
        )
        if result is not None:
            result.base_url = self._base_url
            result.history_id = row_id
            remember(result)  # so that `%%tmchat --branch ID:POS` finds this session's results
        if exc is not None:
            with contextlib.suppress(AttributeError):  # a few builtins refuse attributes
                exc.history_id = row_id  # type: ignore[attr-defined]
        return row_id

    def _chat_result(
        self, response: httpx.Response, body: dict[str, Any], start: float
    ) -> ChatResult:
        end = time.perf_counter()
        data = self._json(response)
        if not isinstance(data, dict) or ("choices" not in data and "error" in data):
            err = data.get("error") if isinstance(data, dict) else None
            msg = err.get("message") if isinstance(err, dict) else err
            text = msg if isinstance(msg, str) else redact(json.dumps(data), self._key)[:300]
            raise APIError(redact(f"the server answered without choices: {text}", self._key))
        usage = data.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return ChatResult(data, request=body, timing=make_timing(start, None, end, tokens))

    def _json(self, response: httpx.Response) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            # Redact before cutting: a cut can leave a prefix of the key that no longer matches.
            snippet = redact(response.content.decode("utf-8", "replace"), self._key)[:300]
            raise APIError(
                redact(
                    f"the server answered {response.status_code} with a body that is not "
                    f"JSON: {snippet!r}",
                    self._key,
                ),
                request=response.request,
            ) from None

    def _models(self, response: httpx.Response) -> list[dict[str, Any]]:
        data = self._json(response)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return list(data["data"])
        if isinstance(data, list):
            return data
        text = redact(json.dumps(data), self._key)[:300]
        raise APIError(f"unexpected /models answer: {text}", request=response.request)

"""The HTTP clients: :class:`Client` (sync) and :class:`AsyncClient`, on one base.

::

    with tmlab.Client() as client:              # settings: arguments, then environment
        res = client.chat("Hello", temperature=0.7, logprobs=True, top_logprobs=5)
        res = client.chat("Hello", stream=True, on_delta=lambda d: print(d.text, end=""))

:class:`_BaseClient` does everything that is not I/O: settings, building and validating the
request body (before anything is sent), headers, the retry decisions and error mapping. The
two clients only move bytes with httpx. A request is retried (up to ``max_retries`` times)
on 408/409/429/5xx and on connection failures before the answer's headers arrived, honouring
Retry-After, else with exponential backoff and jitter. Once the answer started, a failure is
never retried (the server may have done the work, and billed it): a non-streaming answer
that broke off raises :class:`~tmlab.APIConnectionError`, a stream
:class:`~tmlab.StreamError` with the partial answer. A stream's answer is complete and timed
at ``[DONE]``; the rest of the body is then read so that the connection can be reused.

The per-request path is kept lean (one ``json.dumps``, one ``json.loads``, headers set once on
the httpx client, URLs parsed once) because a notebook sweep sends thousands of requests.
The API key lives only in the Authorization header: it is in no repr, no error message
(:func:`~tmlab.errors.redact`), no log record and not in ``res.request``. Errors are raised
``from None``: an httpx exception that quotes the key is not chained into the traceback (its
type and redacted message are in tmlab's message instead).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Final, cast

import anyio
import httpx

from tmlab._retry import backoff_delay, is_retryable_status, parse_retry_after
from tmlab._settings import local_base_url, resolve_settings
from tmlab._stream import Delta, StreamReader, make_timing
from tmlab.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ParameterError,
    StreamError,
    redact,
    status_error_from_response,
)
from tmlab.params import validate_params
from tmlab.result import ChatResult

__all__ = ["AsyncClient", "Client"]

_VERSION: Final = "0.1.0"

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


def _messages(prompt: Messages, system: str | None) -> list[Any]:
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


# After [DONE] the answer is complete, and its time was taken then. Reading the rest of the
# body (normally just the end of the chunked encoding, already received) lets httpx put the
# connection back in its pool, so the next request skips a TCP/TLS handshake, as the openai
# SDK does too. A failure while doing so changes nothing in the answer; the connection is
# then simply not reused. (A server that holds the body open after [DONE] costs the read
# timeout here, not a wrong result.)
def _drain(chunks: Iterator[bytes]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        for _ in chunks:
            pass


async def _adrain(chunks: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        async for _ in chunks:
            pass


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/json")


class _BaseClient:
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
        self._chat_url = httpx.URL()
        self._models_url = httpx.URL()
        self._base_url = self._settings.base_url
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"tmlab/{_VERSION}",
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
            "messages": _messages(prompt, system),
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

    def _resolve(self) -> None:
        base = self._base_url or local_base_url()
        self._base_url = base
        self._chat_url = httpx.URL(base + "/chat/completions")
        self._models_url = httpx.URL(base + "/models")

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
        return status_error_from_response(response, secret=self._key)

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


class Client(_BaseClient):
    """Synchronous client for an OpenAI-compatible chat-completions server.

    With no API key and no base URL (arguments or environment) it uses the embedded local
    server, started at the first request. Against a server on this machine that serves one
    model, ``model`` may be left out (it is asked for once); a remote server needs one.
    Pass ``http_client`` to use your own ``httpx.Client`` (then you close it), or
    ``transport`` (e.g. ``httpx.MockTransport``).
    """

    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, model, timeout, max_retries)
        self._http = http_client
        self._owns_http = http_client is None
        self._transport = transport
        self._lock = threading.Lock()
        if http_client is not None:
            self._request_headers = self._headers

    def _setup(self) -> httpx.Client:
        with self._lock:  # a sweep may share one client across threads
            if not self._ready:
                self._resolve()
                if self._http is None:
                    self._http = httpx.Client(
                        timeout=self.timeout, transport=self._transport, headers=self._headers
                    )
                self._ready = True
        assert self._http is not None
        return self._http

    def chat(
        self,
        prompt_or_messages: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        stream: bool = False,
        on_delta: OnDelta | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatResult:
        """Send one chat completion and return its :class:`~tmlab.ChatResult`.

        A string is one user message; ``system`` prepends a system message. ``params`` are
        checked against :data:`tmlab.PARAMS` before anything is sent; ``extra_body`` is
        merged into the JSON body unchecked. With ``stream=True`` the answer is streamed,
        ``on_delta`` gets each :class:`Delta`, and the result is the reassembled response.
        """
        if self._lookup_model and not model:
            validate_params(params)  # bad parameters are reported before any request
            self._learn_models(self.models())
        body, payload, streaming = self._build(
            prompt_or_messages, model, system, stream, on_delta, extra_body, params
        )
        http = self._http if self._ready else self._setup()
        if streaming:
            return self._stream(http, body, payload, on_delta)  # type: ignore[arg-type]
        response, start = self._send(http, self._chat_url, payload)  # type: ignore[arg-type]
        return self._chat_result(response, body, start)

    def models(self) -> list[dict[str, Any]]:
        """The models the server serves (``GET /models``), as a list of dicts with ``id``."""
        http = self._http if self._ready else self._setup()
        response, _ = self._send(http, self._models_url, None)  # type: ignore[arg-type]
        return self._models(response)

    def _send(
        self, http: httpx.Client, url: httpx.URL, payload: bytes | None
    ) -> tuple[httpx.Response, float]:
        # What http.post does, in two steps, to tell a failure before the answer's headers
        # (safe to send again) from one while reading its body (the server did the work).
        method = "GET" if payload is None else "POST"
        headers = self._request_headers
        attempt = 0
        while True:
            start = time.perf_counter()
            request = http.build_request(method, url, content=payload, headers=headers)
            try:
                response = http.send(request, stream=True)
            except httpx.RequestError as exc:
                delay = self._exception_delay(attempt, exc)
                if delay is None:
                    raise self._transport_error(exc) from None
            else:
                try:
                    response.read()
                except httpx.RequestError as exc:
                    response.close()
                    delay = self._exception_delay(attempt, exc) if payload is None else None
                    if delay is None:
                        raise self._broken_body(exc, response) from None
                else:
                    if response.is_success:
                        return response, start
                    delay = self._status_delay(attempt, response)
                    if delay is None:
                        raise self._status_error(response)
            self._sleep(delay)
            attempt += 1

    def _stream(
        self, http: httpx.Client, body: dict[str, Any], payload: bytes, on_delta: OnDelta | None
    ) -> ChatResult:
        attempt = 0
        while True:
            start = time.perf_counter()
            reader = StreamReader(body, on_delta, start=start, secret=self._key)
            try:
                with http.stream(
                    "POST", self._chat_url, content=payload, headers=self._request_headers
                ) as response:
                    if response.is_success:
                        if _is_json(response):  # the server ignored stream=true
                            response.read()
                            return self._chat_result(response, body, start)
                        chunks = response.iter_bytes()
                        for chunk in chunks:
                            reader.feed(chunk)
                            if reader.done:
                                break
                        result = reader.result()
                        if reader.done:
                            _drain(chunks)
                        return result
                    response.read()
                    delay = self._status_delay(attempt, response)
                    if delay is None:
                        raise self._status_error(response)
            except httpx.RequestError as exc:
                if reader.received:
                    raise reader.broken(exc) from None
                delay = self._exception_delay(attempt, exc)
                if delay is None:
                    raise self._transport_error(exc) from None
            self._sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Close the connection pool (not an ``http_client`` you passed in)."""
        if self._owns_http and self._http is not None:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """Asynchronous twin of :class:`Client`: ``res = await client.chat(...)``.

    ``on_delta`` may be a plain or an ``async`` function: what it returns is awaited if it is
    awaitable.
    """

    _awaits_on_delta = True

    _sleep: Callable[[float], Awaitable[None]] = staticmethod(anyio.sleep)

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, model, timeout, max_retries)
        self._http = http_client
        self._owns_http = http_client is None
        self._transport = transport
        if http_client is not None:
            self._request_headers = self._headers

    async def _setup(self) -> httpx.AsyncClient:
        if not self._ready:
            if self._base_url is None:
                # Starting the local server blocks (it loads a model): keep the loop free.
                await anyio.to_thread.run_sync(self._resolve)
            else:
                self._resolve()
            # No await between this check and the assignment: safe against other tasks.
            if self._http is None:
                self._http = httpx.AsyncClient(
                    timeout=self.timeout, transport=self._transport, headers=self._headers
                )
            self._ready = True
        assert self._http is not None
        return self._http

    async def chat(
        self,
        prompt_or_messages: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        stream: bool = False,
        on_delta: OnDelta | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatResult:
        """Send one chat completion; see :meth:`Client.chat`."""
        if self._lookup_model and not model:
            validate_params(params)  # bad parameters are reported before any request
            self._learn_models(await self.models())
        body, payload, streaming = self._build(
            prompt_or_messages, model, system, stream, on_delta, extra_body, params
        )
        http = self._http if self._ready else await self._setup()
        if streaming:
            return await self._stream(http, body, payload, on_delta)  # type: ignore[arg-type]
        response, start = await self._send(http, self._chat_url, payload)  # type: ignore[arg-type]
        return self._chat_result(response, body, start)

    async def models(self) -> list[dict[str, Any]]:
        """The models the server serves (``GET /models``)."""
        http = self._http if self._ready else await self._setup()
        response, _ = await self._send(http, self._models_url, None)  # type: ignore[arg-type]
        return self._models(response)

    async def _send(
        self, http: httpx.AsyncClient, url: httpx.URL, payload: bytes | None
    ) -> tuple[httpx.Response, float]:
        method = "GET" if payload is None else "POST"
        headers = self._request_headers
        attempt = 0
        while True:
            start = time.perf_counter()
            request = http.build_request(method, url, content=payload, headers=headers)
            try:
                response = await http.send(request, stream=True)
            except httpx.RequestError as exc:
                delay = self._exception_delay(attempt, exc)
                if delay is None:
                    raise self._transport_error(exc) from None
            else:
                try:
                    await response.aread()
                except httpx.RequestError as exc:
                    await response.aclose()
                    delay = self._exception_delay(attempt, exc) if payload is None else None
                    if delay is None:
                        raise self._broken_body(exc, response) from None
                else:
                    if response.is_success:
                        return response, start
                    delay = self._status_delay(attempt, response)
                    if delay is None:
                        raise self._status_error(response)
            await self._sleep(delay)
            attempt += 1

    async def _stream(
        self,
        http: httpx.AsyncClient,
        body: dict[str, Any],
        payload: bytes,
        on_delta: OnDelta | None,
    ) -> ChatResult:
        # The reader calls back synchronously: deltas are collected, then handed to on_delta
        # here, where what it returns can be awaited.
        pending: list[Delta] = []
        collect = pending.append if on_delta is not None else None
        attempt = 0
        while True:
            start = time.perf_counter()
            reader = StreamReader(body, collect, start=start, secret=self._key)
            try:
                async with http.stream(
                    "POST", self._chat_url, content=payload, headers=self._request_headers
                ) as response:
                    if response.is_success:
                        if _is_json(response):
                            await response.aread()
                            return self._chat_result(response, body, start)
                        return await self._read_stream(response, reader, pending, on_delta)
                    await response.aread()
                    delay = self._status_delay(attempt, response)
                    if delay is None:
                        raise self._status_error(response)
            except httpx.RequestError as exc:
                if reader.received:
                    raise reader.broken(exc) from None
                delay = self._exception_delay(attempt, exc)
                if delay is None:
                    raise self._transport_error(exc) from None
            await self._sleep(delay)
            attempt += 1

    @staticmethod
    async def _read_stream(
        response: httpx.Response,
        reader: StreamReader,
        pending: list[Delta],
        on_delta: OnDelta | None,
    ) -> ChatResult:
        async def deliver() -> None:
            assert on_delta is not None
            for delta in pending:
                result = on_delta(delta)
                if inspect.isawaitable(result):
                    await result
            pending.clear()

        chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        try:
            async for chunk in chunks:
                reader.feed(chunk)
                if pending:
                    await deliver()
                if reader.done:
                    break
            result = reader.result()
            if reader.done:
                await _adrain(chunks)
        except StreamError:
            if pending:  # what arrived before the error, as the sync client hands it out
                await deliver()
            raise
        finally:
            await chunks.aclose()
        if pending:
            await deliver()
        return result

    async def close(self) -> None:
        """Close the connection pool (not an ``http_client`` you passed in)."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

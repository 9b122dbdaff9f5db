"""The HTTP clients: :class:`Client` (sync) and :class:`AsyncClient`, on one base.

::

    with tmlab.Client() as client:              # settings: arguments, then environment
        res = client.chat("Hello", temperature=0.7, logprobs=True, top_logprobs=5)
        res = client.chat("Hello", stream=True, on_delta=lambda d: print(d.text, end=""))

Everything that is not I/O (settings, building and validating the request body before
anything is sent, headers, the retry decisions and error mapping) is in
:class:`tmlab.client.base._BaseClient`; the two clients here only move bytes with httpx. A request
is retried (up to ``max_retries`` times) on 408/409/429/5xx and on connection failures before
the answer's headers arrived, honouring Retry-After, else with exponential backoff and jitter.
Once the answer started, a failure is never retried (the server may have done the work, and
billed it): a non-streaming answer that broke off raises :class:`~tmlab.APIConnectionError`, a
stream :class:`~tmlab.StreamError` with the partial answer. A stream's answer is complete and
timed at ``[DONE]``; the rest of the body is then read so that the connection can be reused.

The API key lives only in the Authorization header: it is in no repr, no error message
(:func:`~tmlab.errors.redact`), no log record and not in ``res.request``. Errors are raised
``from None``: an httpx exception that quotes the key is not chained into the traceback (its
type and redacted message are in tmlab's message instead).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
)
from typing import Any, cast

import anyio
import httpx

from tmlab.client.base import BaseClient, Messages, OnDelta
from tmlab.client.reader import StreamReader
from tmlab.client.stream import Delta
from tmlab.errors import NotFoundError, ParameterError, StreamError, TmlabError
from tmlab.params import validate_params
from tmlab.result import ChatResult

__all__ = ["AsyncClient", "Client"]


# After [DONE] the answer is complete, and its time was taken then. Reading the rest of the
# body (normally just the end of the chunked encoding, already received) lets httpx put the
# connection back in its pool, so the next request skips a TCP/TLS handshake, as the openai
# SDK does too. A failure while doing so changes nothing in the answer; the connection is
# then simply not reused. A proxy may hold the body open after [DONE]: the drain gives up
# after _DRAIN_S (not the read timeout, a minute by default) and that connection is closed.
_DRAIN_S = 0.5


def _drain(chunks: Iterator[bytes], response: httpx.Response) -> None:
    deadline = time.monotonic() + _DRAIN_S
    if response.extensions.get("http_version", b"HTTP/1.1") != b"HTTP/1.1":
        return  # HTTP/2: closing the response resets only its stream; nothing to drain
    # httpcore reads with the request's read timeout, fixed when the body started; bound
    # each read of this one connection by the deadline instead, for the drain only.
    stream = response.extensions.get("network_stream")
    read = getattr(stream, "read", None)
    patched = False
    if read is not None:

        def bounded(max_bytes: int, timeout: float | None = None) -> bytes:
            left = max(deadline - time.monotonic(), 0.001)
            return read(max_bytes, left if timeout is None else min(timeout, left))

        with contextlib.suppress(AttributeError):
            stream.read = bounded  # type: ignore[union-attr]
            patched = True
    try:
        with contextlib.suppress(httpx.HTTPError):
            for _ in chunks:
                if time.monotonic() > deadline:  # bytes keep trickling in: stop anyway
                    break
    finally:
        if patched:
            del stream.read  # type: ignore[union-attr]


async def _adrain(chunks: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(httpx.HTTPError), anyio.move_on_after(_DRAIN_S):
        async for _ in chunks:
            pass


def _keep_partial(exc: BaseException, reader: StreamReader) -> None:
    """Put what arrived on ``exc.partial`` when a stream is interrupted (Ctrl-C, a callback
    that raised, a cancelled task). Leaving the ``with`` block closes the connection, which
    tells the server to stop generating."""
    if (
        reader.received
        and not isinstance(exc, TmlabError)
        and getattr(exc, "partial", None) is None
    ):
        with contextlib.suppress(Exception):
            exc.partial = reader.partial()  # type: ignore[attr-defined]


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/json")


class Client(BaseClient):
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
        start = time.perf_counter()
        try:
            if streaming:
                result = self._stream(http, body, payload, on_delta)  # type: ignore[arg-type]
            else:
                response, sent = self._send(http, self._chat_url, payload)  # type: ignore[arg-type]
                result = self._chat_result(response, body, sent)
        except BaseException as exc:  # every request sent is logged, with its partial answer
            if not isinstance(exc, ParameterError):
                self._record(body, exc=exc, start=start)
            raise
        self._record(body, result)
        return result

    def models(self) -> list[dict[str, Any]]:
        """The models the server serves (``GET /models``), as a list of dicts with ``id``."""
        http = self._http if self._ready else self._setup()
        response, _ = self._send(http, self._models_url, None)  # type: ignore[arg-type]
        return self._models(response)

    def server_stats(self) -> dict[str, Any] | None:
        """What the server is doing (``GET /stats`` of the embedded server: requests queued and
        running, tokens/s, each slot's state), or None for a server that does not say."""
        http = self._setup()
        try:
            response, _ = self._send(http, httpx.URL(str(self._base_url) + "/stats"), None)
        except NotFoundError:
            return None
        data = self._json(response)
        return data if isinstance(data, dict) else None

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
                if self._relocate(exc):
                    url = self._moved(url)
                    continue
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
                except BaseException:  # Ctrl-C while reading: drop the connection
                    response.close()
                    raise
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
                            _drain(chunks, response)
                        return result
                    response.read()
                    delay = self._status_delay(attempt, response)
                    if delay is None:
                        raise self._status_error(response)
            except httpx.RequestError as exc:
                if reader.received:
                    raise reader.broken(exc) from None
                if self._relocate(exc):
                    continue
                delay = self._exception_delay(attempt, exc)
                if delay is None:
                    raise self._transport_error(exc) from None
            except BaseException as exc:
                _keep_partial(exc, reader)
                raise
            self._sleep(delay)
            attempt += 1

    def _async_twin(self) -> AsyncClient | None:
        """An :class:`AsyncClient` with this client's settings, for a request that must stop
        the moment it is told to (a task is cancelled wherever it waits; a blocking socket
        read in a thread cannot be interrupted from outside). None when the httpx client was
        injected: its settings cannot be carried over.
        """
        if not self._owns_http:
            return None
        transport = self._transport
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            return None
        twin = AsyncClient(timeout=self.timeout, max_retries=self.max_retries, transport=transport)
        twin._copy_settings(self)
        return twin

    def close(self) -> None:
        """Close the connection pool (not an ``http_client`` you passed in)."""
        if self._owns_http and self._http is not None:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(BaseClient):
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
        start = time.perf_counter()
        try:
            if streaming:
                result = await self._stream(http, body, payload, on_delta)  # type: ignore[arg-type]
            else:
                response, sent = await self._send(http, self._chat_url, payload)  # type: ignore[arg-type]
                result = self._chat_result(response, body, sent)
        except BaseException as exc:  # every request sent is logged, with its partial answer
            if not isinstance(exc, ParameterError):
                self._record(body, exc=exc, start=start)
            raise
        self._record(body, result)
        return result

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
                if await anyio.to_thread.run_sync(self._relocate, exc):
                    url = self._moved(url)
                    continue
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
                except BaseException:  # cancelled while reading: drop the connection
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                    raise
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
                if await anyio.to_thread.run_sync(self._relocate, exc):
                    continue
                delay = self._exception_delay(attempt, exc)
                if delay is None:
                    raise self._transport_error(exc) from None
            except BaseException as exc:
                _keep_partial(exc, reader)
                raise
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

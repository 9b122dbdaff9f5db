"""Shared helpers for the client tests: chunk builders, a scripted mock transport, a live
loopback server (uvicorn in a thread) for faults that need a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import uvicorn

KEY = "sk-test-SECRET-0123456789"
BASE = "http://tm.test/v1"


def chunk(
    content: str | None = None,
    *,
    index: int = 0,
    finish: str | None = None,
    role: str | None = None,
    usage: dict[str, Any] | None = None,
    choices: list[dict[str, Any]] | None = None,
    **choice_extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``choice_extra`` goes into the choice (logprobs …)."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    for key in ("reasoning", "reasoning_content", "tool_calls"):
        if key in choice_extra:
            delta[key] = choice_extra.pop(key)
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "test-model",
    }
    if choices is None:
        choices = [{"index": index, "delta": delta, "finish_reason": finish, **choice_extra}]
    out["choices"] = choices
    if usage is not None:
        out["usage"] = usage
    return out


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def sse(*chunks: dict[str, Any] | str, done: bool = True) -> bytes:
    """Encode chunks (dicts, or raw data strings) as an SSE body."""
    out = []
    for c in chunks:
        data = c if isinstance(c, str) else json.dumps(c)
        out.append(f"data: {data}\n\n".encode())
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def simple_stream(text_pieces: Iterable[str], *, usage: dict[str, Any] | None = USAGE) -> bytes:
    """A well-formed stream of content pieces, finish chunk, usage chunk and [DONE]."""
    pieces = list(text_pieces)
    chunks = [chunk(pieces[0], role="assistant")] + [chunk(p) for p in pieces[1:]]
    chunks.append(chunk(finish="stop"))
    if usage is not None:
        chunks.append(chunk(choices=[], usage=usage))
    return sse(*chunks)


def completion(text: str = "Hello!", **extra: Any) -> dict[str, Any]:
    """A non-streaming chat completion body."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": dict(USAGE),
        **extra,
    }


class Pieces(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body sent in pieces, optionally failing with ``error`` afterwards."""

    def __init__(self, pieces: Iterable[bytes], error: Exception | None = None) -> None:
        self.pieces = list(pieces)
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.error is not None:
            raise self.error


def sse_response(body: bytes | Iterable[bytes], error: Exception | None = None) -> httpx.Response:
    """A 200 ``text/event-stream`` response, in one piece or several."""
    pieces = [body] if isinstance(body, bytes) else list(body)
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Pieces(pieces, error)
    )


Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A mock server that answers requests with a script of replies, recording requests.

    Each reply is a response, an exception to raise (a transport failure) or a function of
    the request. The last reply repeats when the script runs out.
    """

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        i = min(len(self.requests), len(self.replies)) - 1
        reply = self.replies[i]
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return reply(request)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests received."""
        return [json.loads(r.content) for r in self.requests if r.content]

    def transport(self) -> httpx.MockTransport:
        """A transport usable by both ``httpx.Client`` and ``httpx.AsyncClient``."""
        return httpx.MockTransport(self)


# -- a live loopback server ----------------------------------------------------------------

App = Callable[..., Any]


class LiveServer:
    """Run an ASGI app with uvicorn on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app: App) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """The server's ``/v1`` URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


async def _read_body(receive: Callable[[], Any]) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def scripted_app(
    handler: Callable[[str, bytes], tuple[int, dict[str, str], list[bytes | float], bool]],
) -> App:
    """An ASGI app: ``handler(path, body) -> (status, headers, parts, cut)``.

    ``parts`` are body pieces, or floats meaning "sleep this long"; with ``cut`` the
    response is abandoned after the parts (the connection drops mid-body).
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await _read_body(receive)
        status, headers, parts, cut = handler(scope["path"], body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        for part in parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
            else:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        if cut:
            raise ConnectionAbortedError("test server cuts the stream")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app

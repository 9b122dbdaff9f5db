"""A loopback OpenAI-style server for the benchmarks, run in a child process.

It answers every ``POST`` with a fixed completion after ``delay`` seconds, or, for
``"stream": true``, with a stream: by default :data:`STREAM` (20,000 chunks sent as fast as
the socket takes them, in 64 KiB writes), or, when the request's model is ``"paced"``,
``max_tokens`` one-token chunks at ``rate`` chunks per second (a model generating live).
A child process, so that serving does not share the GIL with the clients being measured.

    python bench/_loopback.py PORT [DELAY]
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The sky is blue because of "
                    "Rayleigh scattering of sunlight by the molecules of the air.",
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 18, "total_tokens": 30},
    }
).encode()


def chunk_event(i: int, content: str | None = None, finish: str | None = None) -> bytes:
    """One realistic ``chat.completion.chunk`` as an SSE event."""
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "delta": {}
                if finish
                else {"content": f" token{i}" if content is None else content},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def sse_events(n: int) -> list[bytes]:
    """``n`` realistic chat-completion chunks as SSE events, then ``[DONE]``."""
    return [chunk_event(i) for i in range(n)] + [b"data: [DONE]\n\n"]


STREAM_CHUNKS = 20_000
STREAM = b"".join(sse_events(STREAM_CHUNKS))


def make_app(delay: float, rate: float = 1000.0) -> Any:
    """The ASGI app; ``delay`` seconds before each non-streaming answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more, body = True, b""
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = json.loads(body) if body else {}
        if request.get("stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            if request.get("model") == "paced":
                await paced(send, int(request.get("max_tokens") or 1000), rate)
            else:
                for i in range(0, len(STREAM), 65536):
                    await send(
                        {
                            "type": "http.response.body",
                            "body": STREAM[i : i + 65536],
                            "more_body": True,
                        }
                    )
            await send({"type": "http.response.body", "body": b""})
            return
        if delay:
            await asyncio.sleep(delay)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(COMPLETION)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": COMPLETION})

    return app


async def paced(send: Any, n: int, rate: float) -> None:
    """``n`` one-token chunks on a fixed schedule of ``rate`` per second, then the end."""
    t0 = time.monotonic()
    for i in range(n):
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await send({"type": "http.response.body", "body": chunk_event(i, "x"), "more_body": True})
    end = chunk_event(n, finish="stop") + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": end, "more_body": True})


def serve(port: int, delay: float) -> None:
    """Run the app with uvicorn until killed."""
    import uvicorn

    uvicorn.run(
        make_app(delay),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        lifespan="off",
    )


@contextmanager
def server(delay: float = 0.0) -> Iterator[str]:
    """Start the server in a child process; yield its base URL (``…/v1``); stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, str(port), str(delay)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the benchmark server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)

"""Shared pieces of the end-to-end tests against the local server."""

from __future__ import annotations

import json
import socket
from typing import Any

MODEL = "SmolLM2-135M-Instruct"
STORY = [{"role": "user", "content": "Tell me a short story about a dragon."}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def dead_url() -> str:
    """The URL of a loopback port where nothing listens (connection refused at once; the port
    was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def post_raw(url: str, body: dict[str, Any]) -> socket.socket:
    """POST ``body`` to ``/v1/chat/completions`` on a bare socket (the caller closes it).

    A bare socket lets a test walk away mid-answer, as an interrupted notebook does.
    """
    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 120.0) -> bytes:
    """What ``sock`` receives until ``marker`` arrives (or the peer closes; ``timeout`` per
    read)."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        got = sock.recv(65536)
        if not got:
            break
        data += got
    return data

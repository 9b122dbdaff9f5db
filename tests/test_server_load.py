"""Load: 32 concurrent clients against one model are all answered, in turn, none refused,
even with an oversized body and a pasted book thrown in (issue 16: those are refused alone);
with one slot and with four decoded together (``--parallel 4``, issue 15)."""

from __future__ import annotations

import asyncio
import json

import pytest
from _e2e import MODEL

from tmlab.local import LocalServer

pytestmark = pytest.mark.slow


@pytest.fixture(params=[1, 4], ids=["parallel1", "parallel4"])
def server(request: pytest.FixtureRequest) -> LocalServer:
    """The session's one-slot server, or its four-slot peer."""
    name = "local_server" if request.param == 1 else "parallel_server"
    srv: LocalServer = request.getfixturevalue(name)
    assert srv.parallel == request.param
    return srv


def test_32_concurrent_clients_are_all_answered(server: LocalServer) -> None:
    import httpx

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
        body = {
            "model": MODEL,
            "max_tokens": 4,
            "temperature": 0,
            "stream": i % 2 == 1,
            "messages": [{"role": "user", "content": f"Say the number {i}."}],
        }
        r = await client.post("/v1/chat/completions", json=body)
        return r.status_code, r.text

    async def oversized(client: httpx.AsyncClient, content: bytes) -> int:
        r = await client.post("/v1/chat/completions", content=content)
        return r.status_code

    def body(text: str) -> bytes:
        return json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        ).encode()

    async def main() -> tuple[list[tuple[int, str]], list[int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=180.0, limits=limits) as client:
            answers = asyncio.gather(*(one(client, i) for i in range(32)))
            refused = asyncio.gather(
                oversized(client, body("word " * 4_000_000)),  # 20 MB
                oversized(client, body("word " * 200_000)),  # a 1 MB prompt
            )
            return await answers, await refused

    results, refused = asyncio.run(main())
    assert refused == [413, 400]
    assert [status for status, _ in results] == [200] * 32
    for i, (_, text) in enumerate(results):
        assert ("data: [DONE]" in text) if i % 2 else ('"chat.completion"' in text)

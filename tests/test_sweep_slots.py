"""A sweep's default concurrency is the number of requests the server says it decodes at once
(``parallel`` in ``/models``, as the embedded server advertises it), else 8."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from _fake_server import completion

import tmlab


class Counting:
    """An async mock server that advertises ``slots`` and records the peak of requests in
    flight at once."""

    def __init__(self, slots: int | None) -> None:
        self.slots = slots
        self.now = 0
        self.peak = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            model: dict[str, Any] = {"id": "m"}
            if self.slots is not None:
                model["parallel"] = self.slots
            return httpx.Response(200, json={"data": [model]})
        json.loads(request.content)
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.05)
        self.now -= 1
        return httpx.Response(200, json=completion("ok"))


@pytest.mark.parametrize(("slots", "expected"), [(3, 3), (1, 1), (None, 8)])
def test_default_concurrency_follows_the_advertised_slots(
    slots: int | None, expected: int, history_db: str
) -> None:
    server = Counting(slots)
    client = tmlab.AsyncClient(
        base_url="http://tm.test/v1", model="m", transport=httpx.MockTransport(server)
    )
    df = tmlab.sweep(
        "hi", grid={"temperature": [0.5, 1.0]}, repeats=6, client=client, progress=False
    )
    assert len(df) == 12 and df["error"].isna().all()
    assert server.peak == expected


def test_an_explicit_concurrency_wins(history_db: str) -> None:
    server = Counting(2)
    client = tmlab.AsyncClient(
        base_url="http://tm.test/v1", model="m", transport=httpx.MockTransport(server)
    )
    tmlab.sweep(
        "hi", grid={"temperature": [0.5]}, repeats=6, client=client, concurrency=5, progress=False
    )
    assert server.peak == 5

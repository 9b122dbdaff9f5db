"""A class on one machine (issue 15): 32 students send a few short requests each, at random
moments, to one server decoding up to 8 of them together (``--parallel 8``, loopback only).

Every request must be answered, none lost and none mixed up: each asks for JSON under a
schema that admits only its own id (``{"id": {"const": "s07-q2"}}``), so an answer delivered
to another request cannot pass, whatever the two asked.
A pasted book (a 1 MB prompt) and a body over the size limit are thrown in meanwhile; they
are refused, alone. The latencies (p50, p95) are printed.

Sized for 2 shared cores: about 100 requests of ~20 tokens each, spread over a few seconds;
well under a minute on a quiet machine.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from _e2e import MODEL

import tmlab.local
from tmlab.local import LocalServer

pytestmark = pytest.mark.slow

STUDENTS = 32
REQUESTS_EACH = 3
PAUSE_S = (0.0, 1.5)  # a student waits this long (uniformly at random) before each request
PARALLEL = 8


@pytest.fixture(scope="module")
def classroom() -> Iterator[LocalServer]:
    srv = tmlab.local.start(quiet=True, parallel=PARALLEL, n_ctx=1024)
    try:
        yield srv
    finally:
        srv.stop()


def schema(rid: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"id": {"const": rid}, "note": {"type": "string", "maxLength": 8}},
        "required": ["id", "note"],
        "additionalProperties": False,
    }


def body(rid: str, k: int, stream: bool) -> dict[str, Any]:
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema(rid)}}
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Student {k} asks: what is {k} + {k}?"}],
        "response_format": rf,
        "temperature": 0.7,
        "seed": k,
        "max_tokens": 40,
        "stream": stream,
    }


async def ask(client: httpx.AsyncClient, rid: str, k: int, stream: bool) -> tuple[str, float]:
    """One request; its answer's text (content) and latency (until the last byte)."""
    t0 = time.perf_counter()
    if not stream:
        r = await client.post("/v1/chat/completions", json=body(rid, k, stream))
        assert r.status_code == 200, (rid, r.text)
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "stop", (rid, choice)
        return choice["message"]["content"], time.perf_counter() - t0
    parts: list[str] = []
    done = False
    async with client.stream("POST", "/v1/chat/completions", json=body(rid, k, stream)) as r:
        assert r.status_code == 200, (rid, await r.aread())
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert "error" not in event, (rid, event)
                parts.extend(c["delta"].get("content") or "" for c in event["choices"])
    assert done, rid
    return "".join(parts), time.perf_counter() - t0


async def student(url: str, k: int) -> list[tuple[str, str, float]]:
    rnd = random.Random(k)
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=300.0) as client:
        for q in range(REQUESTS_EACH):
            await asyncio.sleep(rnd.uniform(*PAUSE_S))
            rid = f"s{k:02d}-q{q}"
            text, latency = await ask(client, rid, k, stream=(k + q) % 2 == 1)
            out.append((rid, text, latency))
    return out


async def intruders(url: str, max_body: int) -> tuple[httpx.Response, httpx.Response]:
    """A pasted book (a prompt of 1 MB) and a body over the limit, while the class works."""
    book = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 200_000}]}
    over = json.dumps({**book, "pad": "x" * (max_body + 1)}).encode()
    async with httpx.AsyncClient(base_url=url, timeout=300.0) as client:
        await asyncio.sleep(1.0)
        return await asyncio.gather(
            client.post("/v1/chat/completions", json=book),
            client.post("/v1/chat/completions", content=over),
        )


def test_a_class_of_32_students_is_served(classroom: LocalServer) -> None:
    with httpx.Client(base_url=classroom.url, timeout=60.0) as c:
        max_body = c.get("/version").json()["limits"]["max_body_bytes"]
        before = c.get("/v1/stats").json()

    async def main() -> tuple[list[list[tuple[str, str, float]]], Any]:
        return await asyncio.gather(
            asyncio.gather(*(student(classroom.url, k) for k in range(STUDENTS))),
            intruders(classroom.url, max_body),
        )

    t0 = time.perf_counter()
    answers, (book, over) = asyncio.run(main())
    wall = time.perf_counter() - t0

    assert book.status_code == 400 and book.json()["error"]["code"] == "context_length_exceeded"
    assert over.status_code == 413, over.text
    latencies = []
    for k, mine in enumerate(answers):
        assert [rid for rid, _, _ in mine] == [f"s{k:02d}-q{q}" for q in range(REQUESTS_EACH)]
        for rid, text, latency in mine:
            jsonschema.validate(json.loads(text), schema(rid))  # its own answer, whole
            latencies.append(latency)
    n = STUDENTS * REQUESTS_EACH
    assert len(latencies) == n
    with httpx.Client(base_url=classroom.url, timeout=60.0) as c:
        after = c.get("/v1/stats").json()
    assert after["requests"] - before["requests"] == n + 2
    assert after["running"] == 0 and after["queued"] == 0
    assert {s["state"] for s in after["slots"]} == {"idle"}
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(
        f"\nclass load: {STUDENTS} students x {REQUESTS_EACH} requests on --parallel "
        f"{PARALLEL}: all {n} answered, each its own, in {wall:.1f} s; latency p50 {p50:.2f} s, "
        f"p95 {p95:.2f} s, max {max(latencies):.2f} s; 1 MB prompt: 400, body over "
        f"{max_body} bytes: 413"
    )

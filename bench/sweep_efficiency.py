"""Sweep efficiency: how close ``tmlab.sweep`` comes to bare httpx + asyncio on the same work.

64 requests (4 temperatures × 16 repeats) at concurrency 16 against a loopback server that
answers each request after a fixed 200 ms (``bench/_loopback.py``, a child process). With
perfect overlap they take ceil(64 / 16) × 0.2 s = 0.8 s; efficiency = that ideal ÷ the
measured wall time (median of several runs). On a 2-core machine that also runs the server
neither side reaches 1.0, so the target is the ratio to the peer measured beside it: the same
64 requests sent with a bare ``httpx.AsyncClient`` and ``asyncio.gather`` under a semaphore.
The ratio (peer wall ÷ sweep wall, ≥ 0.95) is what the sweep's own work costs: its thread
and event loop, validation, one ChatResult and one row per answer, the progress bookkeeping
and the DataFrame at the end.

Run alone: ``python bench/run.py --only sweep``.
"""

from __future__ import annotations

import asyncio
import math

from _common import Row, fmt_time, interleaved

REQUESTS = 64
CONCURRENCY = 16
DELAY = 0.2
TEMPERATURES = [0.0, 0.5, 1.0, 1.5]


def _raw_gather(base_url: str) -> None:
    """The same 64 requests with bare httpx.AsyncClient + asyncio, bounded by a semaphore."""
    import httpx

    async def main() -> None:
        limit = asyncio.Semaphore(CONCURRENCY)
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "Hi"}]}
        async with httpx.AsyncClient(headers={"Authorization": "Bearer bench-key"}) as client:

            async def one() -> None:
                async with limit:
                    r = await client.post(base_url + "/chat/completions", json=body)
                    r.raise_for_status()
                    r.json()

            await asyncio.gather(*(one() for _ in range(REQUESTS)))

    asyncio.run(main())


def run(base_url: str, rounds: int = 7) -> list[Row]:
    """Median wall times of the sweep and of bare httpx, interleaved; their ratio."""
    import tmlab
    from tmlab.sweeps import sweep

    repeats = REQUESTS // len(TEMPERATURES)
    client = tmlab.AsyncClient(base_url=base_url, api_key="bench-key", model="bench-model")

    def once() -> None:
        df = sweep(
            "Why is the sky blue?",
            grid={"temperature": TEMPERATURES},
            repeats=repeats,
            concurrency=CONCURRENCY,
            client=client,
            progress=False,
            max_tokens=32,
        )
        assert len(df) == REQUESTS, len(df)
        assert df["error"].isna().all(), df["error"].dropna().tolist()[:3]

    contenders = {"sweep": once, "httpx": lambda: _raw_gather(base_url)}
    for fn in contenders.values():  # warm up: imports, connections
        fn()
    wall = interleaved(contenders, rounds, budget=30)
    ideal = math.ceil(REQUESTS / CONCURRENCY) * DELAY
    each = f"median of {wall.rounds} runs"
    return [
        Row(
            "sweep vs bare httpx.AsyncClient + asyncio.gather (64 requests, concurrency 16, "
            "200 ms server)",
            wall["httpx"] / wall["sweep"],
            ">=",
            0.95,
            f"bare wall {fmt_time(wall['httpx'])} / tmlab.sweep wall "
            f"{fmt_time(wall['sweep'])}, {each}",
        ),
        Row(
            "sweep efficiency (ideal ÷ wall)",
            ideal / wall["sweep"],
            "",
            None,
            f"ideal {fmt_time(ideal)} / tmlab.sweep wall {fmt_time(wall['sweep'])}",
        ),
        Row(
            "bare httpx.AsyncClient + asyncio.gather efficiency (ideal ÷ wall)",
            ideal / wall["httpx"],
            "",
            None,
            f"ideal {fmt_time(ideal)} / wall {fmt_time(wall['httpx'])}: what this machine allows",
        ),
    ]

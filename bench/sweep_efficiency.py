"""Sweep efficiency: how close ``tmlab.sweep`` comes to perfect concurrency.

64 requests (4 temperatures × 16 repeats) at concurrency 16 against a loopback server that
answers each request after a fixed 200 ms (``bench/_loopback.py``, a child process). With
perfect overlap the sweep takes ceil(64 / 16) × 0.2 s = 0.8 s; efficiency = that ideal ÷ the
measured wall time (median of several sweeps), so 1.0 is perfect and the client's own work,
the progress bookkeeping and the history show up as a shortfall.

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


def run(base_url: str, rounds: int = 5) -> list[Row]:
    """Median wall time of a 64-request sweep; ideal ÷ wall. Bare httpx alongside."""
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
            "sweep efficiency (64 requests, concurrency 16, 200 ms server)",
            ideal / wall["sweep"],
            ">=",
            0.9,
            f"ideal {fmt_time(ideal)} / tmlab.sweep wall {fmt_time(wall['sweep'])}, {each}",
        ),
        Row(
            "same 64 requests, bare httpx.AsyncClient + asyncio.gather",
            ideal / wall["httpx"],
            "",
            None,
            f"ideal {fmt_time(ideal)} / wall {fmt_time(wall['httpx'])}, {each}: "
            "what this machine allows",
        ),
    ]

"""Continuous batching (issue 15): the embedded server with ``--parallel 8`` vs ``--parallel 1``.

Two real servers (same model, threads and context), measured in turn, round by round:

* aggregate tokens/s of C concurrent requests (C = 1, 2, 4, 8; greedy, 64 tokens each, no
  stop at end-of-generation, distinct prompts): completion tokens of all C ÷ the wall time
  until the last one is answered. C = 1 is the lone user (target ≥ 0.95: batching must not
  slow them down), C = 8 the full batch (target ≥ 1.7; llama.cpp's own ceiling here is ~1.8);
* a 64-request ``tmlab.sweep`` (64 seeds at temperature 1, max_tokens 32, concurrency 8):
  wall time with one slot ÷ wall time with eight. The answers are the same on both servers
  (each slot's numbers are its own), so both do the same work;
* a class: 32 simulated students, 3 short requests each at random moments, against
  ``--parallel 8``: latency p50 / p95 (for information);
* the numbers: max |Δ logprob| between the same greedy requests decoded 8 at once and one at
  a time, on the server (one KV stream per slot) and, in-process, with a KV cache shared by
  the slots (``BatchEngine(unified=True)``), which is what makes answers depend on the batch.

Run alone: ``python bench/run.py --only parallel``.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from _common import Row, fmt_time, interleaved, interleaved_values, say

import tmlab.local
from tmlab.meta import MODEL_NAME

N_CTX = 2048
TOKENS = 64
CONCURRENCY = (1, 2, 4, 8)
TOPICS = ["dragons", "the sea", "a city", "winter", "robots", "a forest", "music", "the moon"]


def _body(i: int, tokens: int = TOKENS) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": f"Tell me a long story about {TOPICS[i % 8]}."}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


def aggregate_rate(url: str, c: int) -> float:
    """Completion tokens per second of ``c`` requests sent at once (wall time of all)."""

    def one(i: int) -> int:
        with httpx.Client(base_url=url, timeout=600) as client:
            r = client.post("/v1/chat/completions", json=_body(i))
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        tokens = sum(pool.map(one, range(c)))
    return tokens / (time.perf_counter() - t0)


def sweep_once(url: str) -> None:
    """A 64-request sweep at concurrency 8."""
    import tmlab
    from tmlab.sweeps import sweep

    df = sweep(
        "Invent a short poem about the sea.",
        grid={"seed": list(range(64))},
        concurrency=8,
        client=tmlab.AsyncClient(base_url=url + "/v1", timeout=600),
        progress=False,
        temperature=1.0,
        max_tokens=32,
    )
    assert len(df) == 64 and df["error"].isna().all(), df["error"].dropna().tolist()[:3]


def class_latencies(url: str, students: int = 32, each: int = 3) -> list[float]:
    """Latency of every request of a class (short requests at random moments)."""

    async def student(k: int) -> list[float]:
        rnd = random.Random(k)
        out = []
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            for q in range(each):
                await asyncio.sleep(rnd.uniform(0.0, 1.5))
                body = {**_body(k, 16), "temperature": 0.7, "seed": k * 10 + q}
                body.pop("ignore_eos")
                t0 = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                out.append(time.perf_counter() - t0)
        return out

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(student(k) for k in range(students)))

    return [x for xs in asyncio.run(main()) for x in xs]


def _greedy(url: str, i: int) -> list[tuple[str, float]]:
    body = {**_body(i, 32), "logprobs": True}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return [(e["token"], e["logprob"]) for e in r.json()["choices"][0]["logprobs"]["content"]]


def _max_delta(a: list[list[tuple[Any, float]]], b: list[list[tuple[Any, float]]]) -> str:
    """max |Δ logprob| over the shared greedy prefixes, and how long those are."""
    deltas, shared = [0.0], []
    for x, y in zip(a, b, strict=True):
        k = 0
        while k < min(len(x), len(y)) and x[k][0] == y[k][0]:
            deltas.append(abs(x[k][1] - y[k][1]))
            k += 1
        shared.append(k)
    return f"{max(deltas):.3g}|{sum(shared)} of {sum(len(x) for x in a)}"


def unified_delta(n: int = 8) -> str:
    """The same measurement in-process, with one KV cache shared by the slots."""
    from tmlab.server.batch import BatchEngine
    from tmlab.server.engine import Engine
    from tmlab.server.sampler import Sampling

    engine = Engine(n_ctx=N_CTX)
    try:
        prompts = [engine.tokenize(engine.render(_body(i)["messages"])) for i in range(n)]

        def run(p: list[int]) -> list[tuple[int, float]]:
            steps = engine.generate(
                p, Sampling(temperature=0), max_tokens=32, top_logprobs=0, ignore_eos=True
            )
            return [(s.token_id, float(s.logprob or 0.0)) for s in steps]

        serial = [run(p) for p in prompts]
        engine.batch = BatchEngine(engine, n, unified=True)
        with ThreadPoolExecutor(n) as pool:
            batched = list(pool.map(run, prompts))
        return _max_delta(serial, batched)
    finally:
        engine.close()


def run(rounds: int = 3) -> list[Row]:
    """All the rows (two servers; a few minutes on 2 cores)."""
    threads = max(1, min(8, os.cpu_count() or 1))
    rows: list[Row] = []
    with (
        tmlab.local.start(quiet=True, n_ctx=N_CTX) as one,
        tmlab.local.start(quiet=True, n_ctx=N_CTX, parallel=8) as eight,
    ):
        setup = f"{MODEL_NAME}, {threads} threads, greedy, {TOKENS} tokens each"
        for url in (one.url, eight.url):  # warm up
            aggregate_rate(url, 2)
        for c in CONCURRENCY:
            say(f"  {c} concurrent …")
            med = interleaved_values(
                {
                    "p1": lambda c=c: aggregate_rate(one.url, c),
                    "p8": lambda c=c: aggregate_rate(eight.url, c),
                },
                rounds,
                budget=90,
            )
            op, target = {1: (">=", 0.95), 8: (">=", 1.7)}.get(c, ("", None))
            label = (
                "single-request tokens/s, --parallel 8 alone vs --parallel 1"
                if c == 1
                else f"aggregate tokens/s at {c} concurrent, --parallel 8 vs --parallel 1"
            )
            rows.append(
                Row(
                    label,
                    med["p8"] / med["p1"],
                    op,
                    target,
                    f"{med['p8']:.0f} / {med['p1']:.0f} tok/s; {setup}, median of {med.rounds}",
                )
            )
        say("  64-request sweep …")
        wall = interleaved(
            {"p1": lambda: sweep_once(one.url), "p8": lambda: sweep_once(eight.url)},
            2,
            budget=120,
        )
        rows.append(
            Row(
                "64-request sweep wall time, --parallel 1 / --parallel 8",
                wall["p1"] / wall["p8"],
                "",
                None,
                f"{fmt_time(wall['p1'])} / {fmt_time(wall['p8'])}; tmlab.sweep, 64 seeds, "
                f"T=1, max_tokens 32, concurrency 8, median of {wall.rounds}",
            )
        )
        say("  a class of 32 …")
        lat = class_latencies(eight.url)
        p95 = statistics.quantiles(lat, n=20)[-1]
        detail = "32 students x 3 requests (max_tokens 16) at random moments, --parallel 8"
        rows.append(Row("class latency p50", statistics.median(lat), "", None, detail, " s"))
        rows.append(Row("class latency p95", p95, "", None, detail, " s"))
        say("  numbers …")
        serial = [_greedy(one.url, i) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            batched = list(pool.map(lambda i: _greedy(eight.url, i), range(8)))
        rows.append(_delta_row("server, one KV stream per slot", _max_delta(serial, batched)))
    rows.append(_delta_row("in-process, KV cache shared by the slots", unified_delta()))
    return rows


def _delta_row(what: str, measured: str) -> Row:
    value, shared = measured.split("|")
    return Row(
        f"max |Δ logprob| 8 batched vs serial, {what}",
        float(value),
        "",
        None,
        f"nats, over the shared greedy prefixes ({shared} tokens); 8 prompts x 32 tokens",
    )

"""The prompt cache (issue 24): time to first token of a ~1,500-token prompt whose prefix the
embedded server has cached vs the same prompt evaluated from position 0.

One server with ``--prompt-cache``. "Not cached": each request carries a fresh
``prompt_cache_isolation_key``, which nothing cached shares, so its whole prompt is evaluated.
"Cached": a fixed key, the same long system prompt and a user question that changes every
round, so all but the question's tokens come from the cache; each is sent right after a
request with its key (one slot holds one prompt, and a "not cached" request replaces it). TTFT
as the client sees it on a streamed request (the first content chunk), one token, greedy;
medians, interleaved. The server's own ``perf_metrics.time_to_first_token`` is in the detail.

Run alone: ``python bench/run.py --only prompt_cache``.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from typing import Any

import httpx
from _common import Row, fmt_time, interleaved_values, say

import tmlab.local
from tmlab.meta import MODEL_NAME

SYSTEM = " ".join(
    f"Rule {i}: when a student asks about the number {i * 7}, answer kindly, briefly and in "
    "plain words."
    for i in range(57)
)

_round = itertools.count()


def _body(key: str) -> dict[str, Any]:
    question = f"Question {next(_round)}: what is rule {secrets.randbelow(60)} about?"
    return {
        "model": MODEL_NAME,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
        "max_tokens": 1,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "perf_metrics_in_response": True,
        "prompt_cache_isolation_key": key,
    }


def ttft(client: httpx.Client, key: str, seen: list[dict[str, Any]]) -> float:
    """Seconds to the first content chunk of one streamed request (its usage into ``seen``)."""
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=_body(key)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and '"content"' in line and '"content": ""' not in line:
                first = time.perf_counter() - t0
            if line.startswith("data: {") and '"usage"' in line:
                seen.append(json.loads(line[6:]))
    return first if first is not None else time.perf_counter() - t0


def run(rounds: int = 5) -> list[Row]:
    """The row (one server, about a minute on 2 free cores)."""
    with (
        tmlab.local.start(quiet=True, n_ctx=4096, prompt_cache=True, timeout=900) as server,
        httpx.Client(base_url=server.url, timeout=600) as client,
    ):
        fixed = "bench-" + secrets.token_hex(4)
        cached: list[dict[str, Any]] = []
        fresh: list[dict[str, Any]] = []
        ttft(client, fixed, [])  # warm up

        def warm() -> float:
            # one slot holds one prompt, and the cold requests replace it: cache it again
            ttft(client, fixed, [])
            return ttft(client, fixed, cached)

        say("  cached vs not cached …")
        med = interleaved_values(
            {"cold": lambda: ttft(client, secrets.token_hex(8), fresh), "warm": warm},
            rounds,
            budget=300,
        )
        prompt = cached[-1]["usage"]["prompt_tokens"]
        hits = [c["usage"]["prompt_tokens_details"]["cached_tokens"] for c in cached]
        misses = [c["usage"]["prompt_tokens_details"]["cached_tokens"] for c in fresh]
        server_warm = min(c["perf_metrics"]["time_to_first_token"] for c in cached)
        server_cold = min(c["perf_metrics"]["time_to_first_token"] for c in fresh)
        exact = client.get("/v1/models").json()["data"][0]["prompt_cache"]["exact"]
    ratio = med["cold"] / med["warm"]
    say(f"  TTFT not cached ÷ cached: {ratio:.1f}×")
    return [
        Row(
            "TTFT of a ~1,500-token prompt, not cached ÷ prefix cached (--prompt-cache)",
            ratio,
            ">=",
            5.0,
            f"{fmt_time(med['cold'])} / {fmt_time(med['warm'])} (client, median of {med.rounds}; "
            f"server min {fmt_time(server_cold)} / {fmt_time(server_warm)}); {prompt} prompt "
            f"tokens, cached {min(hits)}–{max(hits)} vs {max(misses)}; reuse exact: {exact}",
        )
    ]

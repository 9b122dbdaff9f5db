"""The embedded server against llama.cpp's own C++ server (issue 19): tokens/s, same requests.

Both servers run at once, each in its own process, on the same GGUF file with 8 slots, the
same context per slot, the same threads and ``n_batch``, flash attention off and no prompt
reuse (:mod:`_llamacpp` configures llama.cpp's server as tmlab's is); only one of them works
at a time. Each request: a short distinct prompt, 96 tokens, ``ignore_eos``, temperature
0.8 over the full distribution (``top_k=0, top_p=1, min_p=0``: llama.cpp's server would
otherwise truncate with its own defaults, tmlab's would not), a seed, no logprobs, not
streamed. Rates are completion tokens per second of wall time seen by the client, prompt
evaluation included, measured round by round, alternating the servers (who goes first
rotates) and reported as medians:

* one stream: one request at a time (target ≥ 0.95);
* 8 concurrent: 8 requests sent at once, their completion tokens ÷ the wall time until the
  last one is answered (target ≥ 1.0);
* for information: the one stream through tmlab's default one-slot server, and streamed (SSE)
  on both.

Ratios are tmlab ÷ llama.cpp. A ratio drawn from a single sample says so.

Run alone: ``python bench/run.py --only llamacpp``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from _common import Row, interleaved_values, say
from _llamacpp import default_threads, llamacpp_server

import tmlab.local
from tmlab.meta import MODEL_NAME

N_CTX = 2048
TOKENS = 96
PARALLEL = 8
TOPICS = ["dragons", "the sea", "a city", "winter", "robots", "a forest", "music", "the moon"]


def body(i: int, *, stream: bool = False) -> dict[str, Any]:
    """Request ``i``: distinct prompts, the same sampling on both servers."""
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": f"Tell me a long story about {TOPICS[i % 8]}."}],
        "max_tokens": TOKENS,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "seed": i,
        "ignore_eos": True,
        "stream": stream,
    }


def _one(client: httpx.Client, i: int) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of request ``i``, not streamed."""
    r = client.post("/v1/chat/completions", json=body(i))
    r.raise_for_status()
    use = r.json()["usage"]
    return int(use["prompt_tokens"]), int(use["completion_tokens"])


def _streamed(client: httpx.Client, i: int) -> int:
    """Completion tokens of request ``i`` streamed: its content chunks, counted."""
    n = 0
    with client.stream("POST", "/v1/chat/completions", json=body(i, stream=True)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    n += 1
    return n


class Contender:
    """One server seen by the client: its rates, and the prompt lengths it reported."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=600)
        self.prompts: dict[int, int] = {}  # request index -> prompt tokens reported
        self._next = 0

    def one_stream(self) -> float:
        """Tokens/s of one request alone."""
        self._next += 1
        t0 = time.perf_counter()
        prompt, completion = _one(self.client, self._next)
        self.prompts[self._next] = prompt
        return completion / (time.perf_counter() - t0)

    def one_streamed(self) -> float:
        """Tokens/s of one streamed request alone (content chunks ÷ wall time)."""
        self._next += 1
        t0 = time.perf_counter()
        n = _streamed(self.client, self._next)
        return n / (time.perf_counter() - t0)

    def concurrent(self, c: int = PARALLEL) -> float:
        """Aggregate tokens/s of ``c`` requests sent at once."""

        def one(i: int) -> int:
            with httpx.Client(base_url=self.url, timeout=600) as client:
                prompt, completion = _one(client, i)
            self.prompts[i] = prompt
            return completion

        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            tokens = sum(pool.map(one, range(c)))
        return tokens / (time.perf_counter() - t0)

    def close(self) -> None:
        """Close the client."""
        self.client.close()


def run(rounds: int = 5) -> list[Row]:
    """The llama.cpp-server rows (three servers; a few minutes on 2 cores)."""
    threads = default_threads()
    rows: list[Row] = []
    setup = (
        f"{MODEL_NAME}, {threads} threads, {PARALLEL} slots, {N_CTX}-token context per slot, "
        f"{TOKENS} tokens, T 0.8, ignore_eos"
    )
    with (
        llamacpp_server(parallel=PARALLEL, n_ctx=N_CTX, threads=threads) as llama_url,
        tmlab.local.start(quiet=True, n_ctx=N_CTX, parallel=PARALLEL) as eight,
        tmlab.local.start(quiet=True, n_ctx=N_CTX) as one,
    ):
        llama, tm8, tm1 = Contender(llama_url), Contender(eight.url), Contender(one.url)
        try:
            for c in (llama, tm8, tm1):  # warm up (first requests page the model in)
                c.one_stream()
            llama.concurrent()
            tm8.concurrent()

            say("  one stream …")
            med = interleaved_values(
                {
                    "llama": llama.one_stream,
                    "tm8": tm8.one_stream,
                    "tm1": tm1.one_stream,
                    "llama_sse": llama.one_streamed,
                    "tm8_sse": tm8.one_streamed,
                },
                rounds,
                budget=120,
            )
            prompts = sorted({*llama.prompts.values(), *tm8.prompts.values()})
            # the same request index is the same request on every server
            same = all(
                c.prompts[i] == llama.prompts[i]
                for c in (tm8, tm1)
                for i in c.prompts.keys() & llama.prompts.keys()
            )
            alike = "the same" if same else "DIFFERENT"
            note = f"; {setup}; prompts {prompts[0]}–{prompts[-1]} tokens ({alike} on both)"
            rows.append(
                Row(
                    "one stream tokens/s, tmlab --parallel 8 vs llama.cpp server",
                    med["tm8"] / med["llama"],
                    ">=",
                    0.95,
                    f"tmlab {med['tm8']:.1f} / llama.cpp {med['llama']:.1f} tok/s, "
                    f"not streamed, {med.samples}{note}",
                )
            )
            say("  8 concurrent …")
            agg = interleaved_values(
                {"llama": llama.concurrent, "tm8": tm8.concurrent}, rounds, budget=180
            )
            rows.append(
                Row(
                    "8 concurrent aggregate tokens/s, tmlab --parallel 8 vs llama.cpp server",
                    agg["tm8"] / agg["llama"],
                    ">=",
                    1.0,
                    f"tmlab {agg['tm8']:.1f} / llama.cpp {agg['llama']:.1f} tok/s, 8 requests "
                    f"at once, not streamed, {agg.samples}; {setup}",
                )
            )
            rows.append(
                Row(
                    "one stream tokens/s, tmlab --parallel 1 vs llama.cpp server (8 slots)",
                    med["tm1"] / med["llama"],
                    "",
                    None,
                    f"tmlab one-slot server {med['tm1']:.1f} / llama.cpp {med['llama']:.1f} "
                    f"tok/s, not streamed, {med.samples}",
                )
            )
            rows.append(
                Row(
                    "one stream tokens/s streamed (SSE), tmlab --parallel 8 vs llama.cpp server",
                    med["tm8_sse"] / med["llama_sse"],
                    "",
                    None,
                    f"tmlab {med['tm8_sse']:.1f} / llama.cpp {med['llama_sse']:.1f} content "
                    f"chunks/s, {med.samples}",
                )
            )
        finally:
            for c in (llama, tm8, tm1):
                c.close()
    return rows


if __name__ == "__main__":
    from _common import table

    print(table(run()))

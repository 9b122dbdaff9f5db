"""Scoring and processed logprobs on the embedded server, against peers measured beside them.

* ``tmlab.score()`` of a long text (one echo request once the server's template is learned)
  vs llama-cpp-python evaluating the same prompt tokens in-process with ``logits_all=True``
  and computing what score returns: every token's log-probability (log-softmax of the
  previous position's logits) and its 20 most likely alternatives. Rate: prompt tokens scored
  per second of wall time, both sides. Target ≥ 0.9.
* The cost of ``logprobs_mode="processed_logprobs"`` over the default raw logprobs: the same
  sampled request (temperature 0.8, top_k 40, top_p 0.95, seed, 48 tokens, top 5) both ways,
  the time of the processed one over the raw one. Target ≤ 1.1.

Run alone: ``python bench/run.py --only scoring``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import numpy as np
from _common import Row, interleaved_values

import tmlab
import tmlab.local
from tmlab.meta import MODEL_NAME
from tmlab.server.engine import default_model_path

CONTEXT = "Tell me about the sea."
TEXT = (
    "The sea covers most of our planet. It moves with the tides, which the moon pulls twice a "
    "day, and with the winds, which raise waves that can cross whole oceans. Under the surface "
    "it is cold and dark, yet full of life: fish, whales, corals and countless tiny plankton "
    "that make much of the oxygen we breathe. People have sailed it for thousands of years, "
    "to fish, to trade and to explore, and it still holds places no one has ever seen. "
) * 2


def direct_rate(llm: Any, prompt: list[int]) -> float:
    """Prompt tokens per second: evaluate with all logits, then each token's logprob and top 20."""
    t0 = time.perf_counter()
    llm.reset()
    llm.eval(prompt)
    rows = np.asarray(llm.scores[: len(prompt) - 1], dtype=np.float32)
    top = rows.max(axis=1, keepdims=True)
    lse = top[:, 0].astype(np.float64) + np.log(np.exp(rows - top).sum(axis=1, dtype=np.float64))
    nxt = np.asarray(prompt[1:])
    logprobs = rows[np.arange(len(nxt)), nxt].astype(np.float64) - lse
    best = np.argpartition(-rows, 19, axis=1)[:, :20]
    alts = np.take_along_axis(rows, best, axis=1).astype(np.float64) - lse[:, None]
    order = np.argsort(-alts, axis=1, kind="stable")
    np.take_along_axis(best, order, axis=1)
    assert np.isfinite(logprobs).all()
    return len(prompt) / (time.perf_counter() - t0)


def score_rate(client: tmlab.Client, n_prompt: int) -> float:
    """Prompt tokens per second of ``tmlab.score`` (one request: the template is learned)."""
    t0 = time.perf_counter()
    s = tmlab.score(TEXT, context=CONTEXT, client=client)
    elapsed = time.perf_counter() - t0
    assert s.requests == 1 and s.n_tokens > 100
    return n_prompt / elapsed


def sampled_seconds(http: httpx.Client, mode: str) -> float:
    """Wall time of one sampled request with top-5 logprobs in ``mode``."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Tell me a story about a dragon."}],
        "max_tokens": 48,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "seed": 3,
        "logprobs": True,
        "top_logprobs": 5,
        "logprobs_mode": mode,
    }
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    assert r.json()["logprobs_mode"] == mode
    return elapsed


def run(repeats: int = 5) -> list[Row]:
    """Both rows."""
    from llama_cpp import Llama

    threads = max(1, min(8, os.cpu_count() or 1))
    rows = []
    with (
        tmlab.local.start(quiet=True) as server,
        httpx.Client(base_url=server.url, timeout=300) as http,
        tmlab.Client(base_url=server.base_url, timeout=300) as client,
    ):
        messages = [
            {"role": "user", "content": CONTEXT},
            {"role": "assistant", "content": TEXT},
        ]
        prompt = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
        llm = Llama(
            model_path=str(default_model_path()),
            n_ctx=2048,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )
        direct_rate(llm, prompt)  # warm up both sides; score learns the template here
        tmlab.score(TEXT, context=CONTEXT, client=client)
        med = interleaved_values(
            {
                "direct": lambda: direct_rate(llm, prompt),
                "score": lambda: score_rate(client, len(prompt)),
            },
            repeats,
            budget=60,
        )
        llm.close()
        rows.append(
            Row(
                "score() tokens/s vs llama.cpp logits_all in-process (same tokens, top 20)",
                med["score"] / med["direct"],
                ">=",
                0.9,
                f"score {med['score']:.0f} / direct {med['direct']:.0f} prompt tok/s; "
                f"{len(prompt)}-token prompt, {threads} threads, median of {med.rounds}",
            )
        )
        sampled_seconds(http, "raw_logprobs")
        sampled_seconds(http, "processed_logprobs")
        med = interleaved_values(
            {
                "raw": lambda: sampled_seconds(http, "raw_logprobs"),
                "processed": lambda: sampled_seconds(http, "processed_logprobs"),
            },
            repeats,
            budget=60,
        )
        rows.append(
            Row(
                "processed vs raw logprobs, time of the same sampled request",
                med["processed"] / med["raw"],
                "<=",
                1.1,
                f"processed {med['processed'] * 1e3:.0f} ms / raw {med['raw'] * 1e3:.0f} ms; "
                f"48 tokens, top 5, median of {med.rounds}",
            )
        )
    return rows

"""Overhead of the local server: tokens/s through HTTP ÷ the same llama.cpp model in-process.

Same GGUF file, thread count, prompt, greedy settings and token budget on both sides, and the
same work. Two cases, both peers on one model loaded with ``logits_all=False``: without
logprobs (peer: ``Llama.create_completion``) and with ``logprobs`` + ``top_logprobs=5`` (peer:
``Llama.generate`` token by token, and for each token what the server computes too — the
log-softmax of the last logits in float64 with numpy, the top 5 and their text; not
llama-cpp-python's own ``logprobs=``, which needs ``logits_all=True`` and Python-side work the
server does not do). A third line compares the server with logprobs to its own generation loop
(:class:`~tmlab.server.engine.Engine`) called in-process: the cost of HTTP, JSON and building
the logprobs entries alone. One ratio per case, for information: the
headline server rows are against llama.cpp's own server (:mod:`llamacpp_server`).

Both sides do the same work: the server evaluates every prompt in full (it never reuses its
KV cache, so that the same request always gives the same numbers), so the direct peer is
reset before each call (``llm.reset()``), which makes it evaluate the full prompt too instead
of reusing the prefix cached by its previous call. Rates are completion tokens per second of
wall time, prompt evaluation included.

Run alone: ``python bench/run.py --only server``.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Any

import httpx
from _common import Row, interleaved_values

import tmlab.local
from tmlab.meta import MODEL_NAME
from tmlab.server.engine import Engine, default_model_path
from tmlab.server.sampler import Sampling

PROMPT = "Tell me a long story about a dragon who learns to paint."


def direct_rate(llm: Any, prompt: list[int], tokens: int, logprobs: int | None) -> float:
    """Completion tokens per second of ``llm.create_completion``, the prompt evaluated in full."""
    llm.reset()  # as the server does: no prefix reused from the previous call
    t0 = time.perf_counter()
    out = llm.create_completion(
        prompt,
        max_tokens=tokens,
        temperature=0.0,
        logprobs=logprobs,
    )
    return out["usage"]["completion_tokens"] / (time.perf_counter() - t0)


def direct_logprobs_rate(llm: Any, prompt: list[int], tokens: int, top: int) -> float:
    """Completion tokens per second of greedy generation with the top ``top`` logprobs per
    token computed as the server does (log-softmax of the last logits, float64, numpy)."""
    import llama_cpp
    import numpy as np

    n_vocab = llm.n_vocab()
    eos = llm.token_eos()
    llm.reset()
    t0 = time.perf_counter()
    generated: list[int] = []
    entries = []
    for token in llm.generate(prompt, temp=0.0):
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        x = row.astype(np.float64)
        m = x.max()
        lp = x - (m + np.log(np.exp(x - m).sum()))
        idx = np.argpartition(-lp, top - 1)[:top]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        alternatives = [(llm.detokenize([int(i)]), float(lp[i])) for i in idx]
        entries.append((token, float(lp[token]), alternatives))
        generated.append(token)
        if token == eos or len(generated) >= tokens:
            break
    llm.detokenize(generated)
    return len(generated) / (time.perf_counter() - t0)


def engine_rate(engine: Engine, prompt: list[int], tokens: int) -> float:
    """Tokens per second of the server's generation loop called in-process, top 5 logprobs."""
    t0 = time.perf_counter()
    n = sum(
        1
        for _ in engine.generate(
            prompt, Sampling(temperature=0.0), max_tokens=tokens, top_logprobs=5
        )
    )
    return n / (time.perf_counter() - t0)


def http_rate(client: httpx.Client, tokens: int, logprobs: bool) -> float:
    """Completion tokens per second of one non-streaming request, seen by the client."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    if logprobs:
        body |= {"logprobs": True, "top_logprobs": 5}
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"] / elapsed


def run(tokens: int = 32, repeats: int = 5) -> list[Row]:
    """Both cases and the server's own loop, as table rows (target ≥ 0.9 each)."""
    from llama_cpp import Llama

    threads = max(1, min(8, os.cpu_count() or 1))
    path = str(default_model_path())
    rows = []
    with (
        tmlab.local.start(quiet=True) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        prompt = client.post(
            "/tokenize", json={"messages": [{"role": "user", "content": PROMPT}]}
        ).json()["tokens"]
        setup = f"{MODEL_NAME}, {threads} threads, {len(prompt)}-token prompt, {tokens} tokens"
        llm = Llama(
            model_path=path,
            n_ctx=8192,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        peers = {
            "without logprobs": (partial(direct_rate, llm, prompt, tokens, None), False),
            "with logprobs (top 5)": (partial(direct_logprobs_rate, llm, prompt, tokens, 5), True),
        }
        for label, (peer, logprobs) in peers.items():
            peer()  # warm up both sides
            http_rate(client, 8, logprobs)
            med = interleaved_values(
                {"direct": peer, "http": partial(http_rate, client, tokens, logprobs)},
                repeats,
                budget=30,
            )
            what = "generate + numpy top-5 log-softmax" if logprobs else "create_completion"
            rows.append(
                Row(
                    f"embedded server tokens/s vs direct llama.cpp, {label}",
                    med["http"] / med["direct"],
                    "",
                    None,
                    f"server over HTTP {med['http']:.0f} / llama-cpp-python {what} in-process "
                    f"{med['direct']:.0f} tok/s; {setup}, median of {med.rounds}",
                )
            )
        llm.close()
        # The server's own generation loop in-process, with logprobs: what HTTP, JSON and
        # the response building cost on top of the same computation.
        engine = Engine(path, n_threads=threads)
        engine_rate(engine, prompt, 8)
        http_rate(client, 8, True)
        med = interleaved_values(
            {
                "engine": lambda: engine_rate(engine, prompt, tokens),
                "http": lambda: http_rate(client, tokens, True),
            },
            repeats,
            budget=30,
        )
        engine.close()
        rows.append(
            Row(
                "embedded server tokens/s vs its own loop in-process, with logprobs",
                med["http"] / med["engine"],
                "",
                None,
                f"server over HTTP {med['http']:.0f} / Engine.generate in-process "
                f"{med['engine']:.0f} tok/s; {setup}, median of {med.rounds}",
            )
        )
    return rows

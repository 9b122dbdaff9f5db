"""Client overhead and SSE parsing speed, against peers measured in the same run.

1. :func:`requests`: per-request time of a non-streaming ``tmlab.Client.chat`` ÷ a raw
   ``httpx.Client.post`` of the same JSON body, and ÷ the ``openai`` SDK's
   ``chat.completions.create``, all against one loopback server (``bench/_loopback.py``, a
   child process so that it does not share the GIL with the clients).
2. :func:`streaming`: a whole streamed request of 20,000 chunks over the same server, text
   reassembled: ``tmlab.Client.chat(stream=True)`` against raw httpx ``iter_lines`` +
   ``json.loads`` and the openai SDK's stream iterator.
3. :func:`sse`: SSE decoding of a 20,000-chunk stream: tmlab's decoder against the openai
   SDK's ``SSEDecoder``, both fed the same bytes in memory (the network is not measured),
   each event's data parsed with ``json.loads`` (as both libraries do), in two chunkings: one
   event per chunk (as a live server sends) and 64 KiB chunks (as a fast network delivers).

A ratio below 1 means tmlab is faster. Run alone: ``python bench/run.py --only client``.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import partial
from typing import Any

from _common import Row, fmt_time, interleaved
from _loopback import STREAM_CHUNKS, sse_events

BODY: dict[str, Any] = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 64,
}


def requests(base_url: str, rounds: int = 60, batch: int = 20) -> list[Row]:
    """Non-streaming chat over loopback, median per request."""
    import httpx
    import openai

    import tmlab

    headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
    url = base_url + "/chat/completions"
    raw = httpx.Client(headers=headers)
    tm = tmlab.Client(base_url=base_url, api_key="bench-key", model="bench-model")
    oa = openai.OpenAI(base_url=base_url, api_key="bench-key", max_retries=0)
    params = {k: v for k, v in BODY.items() if k not in ("model", "messages")}
    prompt = BODY["messages"][0]["content"]

    def tm_chat() -> Any:
        return tm.chat(prompt, **params)

    def raw_post() -> Any:
        return raw.post(url, json=BODY)

    def oa_create() -> Any:
        return oa.chat.completions.create(model="bench-model", messages=BODY["messages"], **params)

    contenders = {"tmlab": tm_chat, "httpx": raw_post, "openai": oa_create}
    assert tm_chat().text.startswith("The sky")
    for fn in contenders.values():  # warm up connections and caches
        for _ in range(batch):
            fn()
    med = interleaved(contenders, rounds, batch, budget=30)

    # What recording every request in the history costs on top (a temporary SQLite file).
    history_rows: list[Row] = []
    if os.environ.get("TMLAB_HISTORY") == "off":
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["TMLAB_HISTORY"] = os.path.join(tmp, "history.db")
            try:
                logged = tmlab.Client(base_url=base_url, api_key="bench-key", model="bench-model")
                for _ in range(batch):
                    logged.chat(prompt, **params)
                with_history = interleaved(
                    {"logged": lambda: logged.chat(prompt, **params), "httpx": raw_post},
                    max(5, rounds // 3),
                    batch,
                    budget=15,
                )
                logged.close()
            finally:
                os.environ["TMLAB_HISTORY"] = "off"
        history_rows.append(
            Row(
                "client overhead vs raw httpx, history recorded",
                with_history["logged"] / with_history["httpx"],
                "",
                None,
                f"tmlab {fmt_time(with_history['logged'])} / httpx "
                f"{fmt_time(with_history['httpx'])} per request, SQLite history in a temp file",
            )
        )
    tm.close()
    raw.close()
    oa.close()
    each = f"per request, median of {med.rounds}×{batch}, history off"
    return [
        Row(
            "client overhead vs raw httpx (non-streaming)",
            med["tmlab"] / med["httpx"],
            "<=",
            1.05,
            f"tmlab {fmt_time(med['tmlab'])} / httpx.Client.post {fmt_time(med['httpx'])} {each}",
        ),
        Row(
            "client overhead vs openai SDK (non-streaming)",
            med["tmlab"] / med["openai"],
            "<=",
            0.8,
            f"tmlab {fmt_time(med['tmlab'])} / openai {fmt_time(med['openai'])} {each}",
        ),
        *history_rows,
    ]


def streaming(base_url: str, rounds: int = 10) -> list[Row]:
    """Whole streamed requests over loopback: what a user of each client waits for."""
    import httpx
    import openai

    import tmlab

    url = base_url + "/chat/completions"
    raw = httpx.Client(headers={"Authorization": "Bearer bench-key"})
    tm = tmlab.Client(base_url=base_url, api_key="bench-key", model="bench-model")
    oa = openai.OpenAI(base_url=base_url, api_key="bench-key", max_retries=0)
    body = {**BODY, "stream": True}
    prompt = BODY["messages"][0]["content"]

    def tm_stream() -> int:
        return len(tm.chat(prompt, stream=True).text)

    def raw_stream() -> int:
        parts = []
        with raw.stream("POST", url, json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    parts.append(delta.get("content") or "")
        return len("".join(parts))

    def oa_stream() -> int:
        parts = []
        for chunk in oa.chat.completions.create(
            model="bench-model", messages=BODY["messages"], stream=True
        ):
            parts.append(chunk.choices[0].delta.content or "")
        return len("".join(parts))

    assert tm_stream() == raw_stream() == oa_stream() > 0
    med = interleaved(
        {"tmlab": tm_stream, "httpx": raw_stream, "openai": oa_stream}, rounds, budget=45
    )
    tm.close()
    raw.close()
    oa.close()
    each = f"{STREAM_CHUNKS:,} chunks, median of {med.rounds}"
    return [
        Row(
            "streamed request vs raw httpx line parsing",
            med["tmlab"] / med["httpx"],
            "<=",
            1.2,
            f"tmlab {fmt_time(med['tmlab'])} / httpx iter_lines + json.loads "
            f"{fmt_time(med['httpx'])}, {each}",
        ),
        Row(
            "streamed request vs openai SDK",
            med["tmlab"] / med["openai"],
            "",
            None,
            f"tmlab {fmt_time(med['tmlab'])} / openai {fmt_time(med['openai'])}, {each}",
        ),
    ]


def sse(rounds: int = 10, n: int = STREAM_CHUNKS) -> list[Row]:
    """SSE decode + ``json.loads``, same bytes in memory: the openai SDK's time ÷ tmlab's."""
    from openai._streaming import SSEDecoder as OpenAIDecoder

    from tmlab.client.sse import DONE, SSEDecoder

    events = sse_events(n)
    whole = b"".join(events)
    chunkings = {
        "one event per chunk": events,
        "64 KiB chunks": [whole[i : i + 65536] for i in range(0, len(whole), 65536)],
    }

    def tmlab_parse(chunks: list[bytes]) -> int:
        decoder, loads, count = SSEDecoder(), json.loads, 0
        for chunk in chunks:
            for _event, data in decoder.feed(chunk):
                if data == DONE:
                    return count
                loads(data)
                count += 1
        return count

    def openai_parse(chunks: list[bytes]) -> int:
        count = 0
        for event in OpenAIDecoder().iter_bytes(iter(chunks)):
            if event.data.startswith("[DONE]"):
                return count
            event.json()
            count += 1
        return count

    rows = []
    for label, chunks in chunkings.items():
        assert tmlab_parse(chunks) == openai_parse(chunks) == n
        med = interleaved(
            {"tmlab": partial(tmlab_parse, chunks), "openai": partial(openai_parse, chunks)},
            rounds,
            budget=15,
        )
        rows.append(
            Row(
                f"SSE parse speed-up over openai SDK, {label}",
                med["openai"] / med["tmlab"],
                ">=",
                1.5,
                f"openai SSEDecoder {fmt_time(med['openai'])} / tmlab {fmt_time(med['tmlab'])}, "
                f"{n:,} events ({len(whole) / 1e6:.1f} MB) in memory, median of {med.rounds}",
                "×",
            )
        )
    return rows

"""Client overhead and SSE parsing speed, against peers measured in the same run.

    python bench/client_overhead.py [--rounds 30] [--batch 20]

1. Per-request time of a non-streaming ``tmlab.Client.chat`` ÷ a raw ``httpx.Client.post`` of
   the same JSON body, and ÷ the ``openai`` SDK's ``chat.completions.create``, all against one
   loopback uvicorn server (a tiny ASGI app answering a fixed completion), started by this
   script in a child process so that it does not share the GIL with the clients.
2. A whole streamed request of 20,000 chunks over the same server, text reassembled:
   ``tmlab.Client.chat(stream=True)`` against the openai SDK's stream iterator and raw httpx
   ``iter_lines`` + ``json.loads``.
3. SSE decoding of a 20,000-chunk stream: tmlab's decoder ÷ the openai SDK's ``SSEDecoder``,
   both fed the same bytes in memory (so the network is not measured), each event's data
   parsed with ``json.loads`` (as both libraries do), in two chunkings: one event per chunk
   (as a live server sends) and 64 KiB chunks (as a fast network delivers).

Runs are interleaved (A, B, C, A, B, C …) and medians taken to fight noise on shared cores.
A ratio below 1 means tmlab is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The sky is blue because of "
                    "Rayleigh scattering of sunlight by the molecules of the air.",
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 18, "total_tokens": 30},
    }
).encode()

BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 64,
}


def sse_events(n: int) -> list[bytes]:
    """``n`` realistic chat-completion chunks as SSE events, then ``[DONE]``."""
    out = []
    for i in range(n):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f" token{i}"},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


STREAM_CHUNKS = 20_000
STREAM = b"".join(sse_events(STREAM_CHUNKS))


# -- the server (child process) ----------------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny ASGI app: every POST gets the fixed completion, GET /health gets ok."""
    if scope["type"] != "http":
        return
    more, body = True, b""
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if body and json.loads(body).get("stream"):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(0, len(STREAM), 65536):
            await send(
                {"type": "http.response.body", "body": STREAM[i : i + 65536], "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(COMPLETION)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": COMPLETION})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="off"
    )


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the benchmark server did not start")


# -- measuring ---------------------------------------------------------------------------


def interleaved(
    contenders: dict[str, Callable[[], Any]], rounds: int, batch: int
) -> dict[str, float]:
    """Median seconds per call of each contender, batches interleaved round by round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            fn = contenders[name]
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[name].append((time.perf_counter() - t0) / batch)
    return {name: statistics.median(s) for name, s in samples.items()}


def bench_requests(base_url: str, rounds: int, batch: int) -> None:
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

    def raw_post_json() -> Any:
        return raw.post(url, json=BODY).json()

    def oa_create() -> Any:
        return oa.chat.completions.create(model="bench-model", messages=BODY["messages"], **params)

    assert tm_chat().text.startswith("The sky")
    contenders = {
        "tmlab.Client.chat": tm_chat,
        "httpx.Client.post": raw_post,
        "httpx post + .json()": raw_post_json,
        "openai create": oa_create,
    }
    for fn in contenders.values():  # warm up connections and caches
        for _ in range(batch):
            fn()
    med = interleaved(contenders, rounds, batch)
    print(f"non-streaming chat over loopback, median per request ({rounds} rounds x {batch}):")
    for name, value in med.items():
        print(f"  {name:<24} {value * 1e6:9.1f} us")
    tmv = med["tmlab.Client.chat"]
    print(
        f"  ratio tmlab / httpx.Client.post          = {tmv / med['httpx.Client.post']:.3f}"
        "   (target <= 1.05)"
    )
    print(f"  ratio tmlab / httpx post + .json()       = {tmv / med['httpx post + .json()']:.3f}")
    print(f"  ratio tmlab / openai chat.completions    = {tmv / med['openai create']:.3f}")
    tm.close()
    raw.close()
    oa.close()


def bench_streaming(base_url: str, rounds: int) -> None:
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
    med = interleaved({"tmlab": tm_stream, "httpx": raw_stream, "openai": oa_stream}, rounds, 1)
    print(
        f"streamed chat of {STREAM_CHUNKS} chunks over loopback, text reassembled, "
        f"median of {rounds}:"
    )
    print(
        f"  tmlab.Client.chat(stream=True) {med['tmlab'] * 1e3:7.1f} ms   "
        f"httpx iter_lines + json.loads {med['httpx'] * 1e3:7.1f} ms   "
        f"openai SDK stream {med['openai'] * 1e3:7.1f} ms"
    )
    print(
        f"  speed-up openai/tmlab = {med['openai'] / med['tmlab']:.2f}x   "
        f"ratio tmlab / raw httpx = {med['tmlab'] / med['httpx']:.2f}"
    )
    tm.close()
    raw.close()
    oa.close()


def bench_sse(rounds: int, n: int = 20_000) -> None:
    from openai._streaming import SSEDecoder as OpenAIDecoder

    from tmlab._sse import DONE, SSEDecoder

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
        for sse in OpenAIDecoder().iter_bytes(iter(chunks)):
            if sse.data.startswith("[DONE]"):
                return count
            sse.json()
            count += 1
        return count

    print(
        f"SSE decode + json.loads of a {n}-chunk stream ({len(whole) / 1e6:.1f} MB), "
        f"same bytes in memory, median of {rounds}:"
    )
    for label, chunks in chunkings.items():
        assert tmlab_parse(chunks) == openai_parse(chunks) == n
        med = interleaved(
            {"tmlab": lambda c=chunks: tmlab_parse(c), "openai": lambda c=chunks: openai_parse(c)},
            rounds,
            1,
        )
        print(
            f"  {label:<20} tmlab {med['tmlab'] * 1e3:7.1f} ms   openai SSEDecoder "
            f"{med['openai'] * 1e3:7.1f} ms   speed-up openai/tmlab = "
            f"{med['openai'] / med['tmlab']:.2f}x   (target >= 1.5x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    os.environ.pop("TENSORMESH_INFERENCE_API_KEY", None)
    proc, base_url = start_server()
    try:
        bench_requests(base_url, args.rounds, args.batch)
        bench_streaming(base_url, max(5, args.rounds // 3))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bench_sse(max(5, args.rounds // 3))


if __name__ == "__main__":
    main()

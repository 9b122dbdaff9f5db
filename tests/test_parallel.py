"""End to end: ``--parallel N`` decodes concurrent requests together, each still its own.

A real server with 4 slots (``tmlab.local.start(parallel=4)``) over a real socket. Requests with
different features run at the same time, and each answer must be its request's: every JSON
answer is held by a schema that admits only its own id (``{"id": {"const": "req-7"}}``), so an
answer delivered to the wrong request, or a grammar applied to the wrong sequence, cannot pass.

Each slot has its own KV stream, and on these CPU kernels a sequence's numbers do not depend
on its neighbours in the batch: a request decoded beside others gives the same tokens and
logprobs, bit for bit, as on the one-slot server. The tests hold the server to that (and print
the measured difference): it is also what makes a corrupted, lost or foreign KV cache
detectable at once when a client leaves mid-batch.

A server with 8 slots (the README's class set-up) takes 8 requests arriving at random moments,
checked against the one-slot server and watched running together; the memory it costs is
measured (``VmRSS``), not computed. Separate requests with the same prompt share its evaluation.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest
from _e2e import MODEL, WEATHER, post_raw, read_until

import tmlab.local
from tmlab.local import LocalServer

pytestmark = pytest.mark.slow

PARALLEL = 4
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(parallel_server: LocalServer) -> LocalServer:
    """The real local server with 4 slots, 2048 tokens of context each (``conftest.py``)."""
    assert parallel_server.parallel == PARALLEL
    return parallel_server


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300.0) as c:
        yield c


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def id_schema(rid: str) -> dict[str, Any]:
    """A JSON schema that admits only objects carrying ``rid`` (plus a short free text)."""
    return {
        "type": "object",
        "properties": {
            "id": {"const": rid},
            "note": {"type": "string", "maxLength": 16},
        },
        "required": ["id", "note"],
        "additionalProperties": False,
    }


def id_format(rid: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": id_schema(rid)}}


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    """One request on its own connection (as a separate student would send it)."""
    with httpx.Client(base_url=url, timeout=300.0) as c:
        return c.post(CHAT, json={"model": MODEL, **body})


def stream_events(url: str, body: dict[str, Any]) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    with (
        httpx.Client(base_url=url, timeout=300.0) as c,
        c.stream("POST", CHAT, json={"model": MODEL, **body, "stream": True}) as r,
    ):
        assert r.status_code == 200, r.read()
        events: list[dict[str, Any]] = []
        done = False
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
        assert done, "the stream did not end with [DONE]"
        return r.headers, events


def tokens_and_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]]:
    return [(e["token"], e["logprob"]) for e in choice["logprobs"]["content"]]


def shared_prefix(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> list[float]:
    """|Δ logprob| at each position of the longest common prefix of two greedy answers."""
    out = []
    for (ta, la), (tb, lb) in zip(a, b, strict=False):
        if ta != tb:
            break
        out.append(abs(la - lb))
    return out


# -- what the server says about itself ---------------------------------------------------------


def test_models_headers_and_stats_say_how_answers_are_decoded(
    client: httpx.Client, server: LocalServer
) -> None:
    # a KV stream per slot on a CPU build: each answer's numbers are those it gets alone
    # (test_batched_vs_serial_numbers holds the server to that claim)
    (model,) = client.get("/v1/models").json()["data"]
    assert model["parallel"] == PARALLEL and model["batch_invariant"] is True
    assert "its own KV cache" in model["notice"] and str(PARALLEL) in model["notice"]
    r = client.post(CHAT, json={"model": MODEL, "messages": ask("Hi"), "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.headers["X-Tmlab-Parallel"] == str(PARALLEL)
    assert r.headers["X-Tmlab-Batch-Invariant"] == "true"
    headers, _ = stream_events(server.url, {"messages": ask("Hi"), "max_tokens": 2})
    assert headers["X-Tmlab-Parallel"] == str(PARALLEL)
    assert headers["X-Tmlab-Batch-Invariant"] == "true"
    assert "X-Tmlab-Parallel" not in client.get("/health").headers  # chat answers only
    stats = client.get("/v1/stats").json()
    assert stats["parallel"] == PARALLEL and stats["batch_invariant"] is True
    assert stats["queued"] == 0 and stats["running"] == 0
    assert [s["slot"] for s in stats["slots"]] == list(range(PARALLEL))
    assert {s["state"] for s in stats["slots"]} == {"idle"}
    assert stats["requests"] >= 2 and stats["by_status"]["200"] >= 2
    assert stats["tokens"] >= 4 and stats["tokens_per_s"] >= 0


def test_one_slot_says_it_is_batch_invariant(local_server: LocalServer) -> None:
    with httpx.Client(base_url=local_server.url, timeout=120.0) as c:
        (model,) = c.get("/v1/models").json()["data"]
        assert model["parallel"] == 1 and model["batch_invariant"] is True
        assert "notice" not in model
        r = c.post(CHAT, json={"model": MODEL, "messages": ask("Hi"), "max_tokens": 1})
        assert r.headers["X-Tmlab-Parallel"] == "1"
        assert r.headers["X-Tmlab-Batch-Invariant"] == "true"
        stats = c.get("/v1/stats").json()
        assert stats["parallel"] == 1 and stats["batch_invariant"] is True
        assert len(stats["slots"]) == 1


def test_stats_show_the_slots_at_work(client: httpx.Client, server: LocalServer) -> None:
    seen: list[dict[str, Any]] = []
    body = {"messages": ask("Tell me a story."), "max_tokens": 24, "ignore_eos": True}
    with ThreadPoolExecutor(PARALLEL + 2) as pool:
        futures = [pool.submit(post, server.url, body) for _ in range(PARALLEL + 2)]
        while not all(f.done() for f in futures):
            seen.append(client.get("/v1/stats").json())
            time.sleep(0.05)
        assert [f.result().status_code for f in futures] == [200] * (PARALLEL + 2)
    assert max(s["running"] for s in seen) == PARALLEL
    assert max(s["queued"] for s in seen) >= 1  # two more requests than slots
    busy = max(sum(x["state"] != "idle" for x in s["slots"]) for s in seen)
    assert busy == PARALLEL
    generating = [x for s in seen for x in s["slots"] if x["state"] == "generating"]
    assert generating and all(0 <= x["generated"] <= 24 for x in generating)
    assert all(x["prompt_tokens"] > 0 for x in generating)
    assert client.get("/v1/stats").json()["tokens_per_s"] > 0


# -- concurrent requests, each with its own features -------------------------------------------


def _check_schema(rid: str) -> Callable[[httpx.Response], None]:
    def check(r: httpx.Response) -> None:
        assert r.status_code == 200, r.text
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), id_schema(rid))

    return check


def _check_tool(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    params = WEATHER["function"]["parameters"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), params)


def _check_stop(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] in (",", "\n"), choice
    assert "," not in choice["message"]["content"] and "\n" not in choice["message"]["content"]
    assert choice["message"]["content"].strip()


def _check_logprobs(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    entries = choice["logprobs"]["content"]
    assert len(entries) == r.json()["usage"]["completion_tokens"] == 12
    for e in entries:
        tops = e["top_logprobs"]
        assert len(tops) == 5
        # top_k=5: the sampled token is one of the 5 most likely raw tokens
        assert e["token"] in [t["token"] for t in tops], e
        assert e["logprob"] == next(t["logprob"] for t in tops if t["token"] == e["token"])
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert all(t["logprob"] <= 0 for t in tops)


def _check_n2(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for c in choices:
        assert c["finish_reason"] == "stop", c
        jsonschema.validate(json.loads(c["message"]["content"]), id_schema("req-n2"))


def _stream_check(url: str) -> None:
    rid = "req-stream"
    body = {
        "messages": ask("Describe the sea."),
        "response_format": id_format(rid),
        "logprobs": True,
        "max_tokens": 48,
        "stream_options": {"include_usage": True},
    }
    _, events = stream_events(url, body)
    text = "".join(
        c["delta"].get("content") or "" for e in events for c in e["choices"] if c["index"] == 0
    )
    jsonschema.validate(json.loads(text), id_schema(rid))
    lps = [c["logprobs"] for e in events for c in e["choices"] if c.get("logprobs")]
    entries = [x for lp in lps for x in lp["content"]]
    assert events[-1]["usage"]["completion_tokens"] == len(entries)
    # the chunks' tokens spell the content (the last one is <|im_end|>, which has no text)
    assert bytes(b for x in entries[:-1] for b in x["bytes"]).decode() == text
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finish == ["stop"]


def test_concurrent_requests_each_get_their_own_answer(server: LocalServer) -> None:
    url = server.url
    jobs: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = []
    for i in range(6):
        rid = f"req-{i}"
        body = {
            "messages": ask(f"Write a note number {i}."),
            "response_format": id_format(rid),
            "max_tokens": 48,
            "temperature": 0.7,
            "seed": i,
        }
        jobs.append((rid, lambda b=body: post(url, b), _check_schema(rid)))
    tool = {
        "messages": ask("What is the weather in Paris?"),
        "tools": [WEATHER],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 60,
    }
    jobs.append(("tool", lambda: post(url, tool), _check_tool))
    stop = {
        "messages": ask("List five fruits, separated by commas."),
        "stop": [",", "\n"],
        "temperature": 0,
        "max_tokens": 40,
    }
    jobs.append(("stop", lambda: post(url, stop), _check_stop))
    logprobs = {
        "messages": ask("Tell me about cats."),
        "logprobs": True,
        "top_logprobs": 5,
        "top_k": 5,
        "seed": 3,
        "max_tokens": 12,
        "ignore_eos": True,
    }
    jobs.append(("logprobs", lambda: post(url, logprobs), _check_logprobs))
    n2 = {
        "messages": ask("Two notes, please."),
        "response_format": id_format("req-n2"),
        "n": 2,
        "temperature": 0.8,
        "seed": 5,
        "max_tokens": 48,
    }
    jobs.append(("n=2", lambda: post(url, n2), _check_n2))
    jobs.append(("stream", lambda: _stream_check(url), lambda _: None))
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [(name, pool.submit(send), check) for name, send, check in jobs]
        for name, fut, check in futures:
            try:
                check(fut.result())
            except AssertionError as exc:
                raise AssertionError(f"request {name}: {exc}") from exc


def test_a_seeded_request_repeated_alone_gives_the_same_answer(client: httpx.Client) -> None:
    # Alone, the batch has the same composition each time, so the numbers are the same.
    body = {
        "model": MODEL,
        "messages": ask("Invent a name for a cat."),
        "temperature": 1.0,
        "seed": 42,
        "max_tokens": 16,
        "logprobs": True,
        "top_logprobs": 2,
    }
    first, second = (client.post(CHAT, json=body).json() for _ in range(2))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["choices"][0]["logprobs"] == second["choices"][0]["logprobs"]
    other = client.post(CHAT, json={**body, "seed": 43}).json()  # the seed is used at all
    assert other["choices"][0]["logprobs"] != first["choices"][0]["logprobs"]


# -- numbers: batched vs serial ----------------------------------------------------------------

_PROMPTS = [
    "Tell me about the number 7.",
    "Why is the sky blue?",
    "Describe a forest in autumn.",
    "What do cats eat?",
]


def _greedy(url: str, text: str, max_tokens: int = 32) -> list[tuple[str, float]]:
    body = {
        "messages": ask(text),
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "logprobs": True,
    }
    r = post(url, body)
    assert r.status_code == 200, r.text
    return tokens_and_logprobs(r.json()["choices"][0])


def test_batched_vs_serial_numbers(server: LocalServer, local_server: LocalServer) -> None:
    """Batched, alone, and on the one-slot server: the same tokens and logprobs, bit for bit
    (each slot has its own KV stream: ``tmlab/server/batch.py``); the difference is printed
    for the notes on batch invariance."""
    exact = [_greedy(local_server.url, p) for p in _PROMPTS]
    alone = [_greedy(server.url, p) for p in _PROMPTS]
    with ThreadPoolExecutor(len(_PROMPTS)) as pool:
        batched = list(pool.map(lambda p: _greedy(server.url, p), _PROMPTS))
    deltas = [shared_prefix(a, b) for a, b in zip(exact, batched, strict=True)]
    flat = [d for ds in deltas for d in ds]
    print(
        f"\nbatched ({len(_PROMPTS)} at once, --parallel {PARALLEL}) vs serial (--parallel 1): "
        f"max |Δ logprob| {max(flat):.3g} nats over the shared prefixes "
        f"({[len(ds) for ds in deltas]} of {[len(a) for a in exact]} greedy tokens)"
    )
    assert alone == exact, "one request alone on --parallel 4 differs from --parallel 1"
    assert batched == exact, "requests decoded together differ from one at a time"


def test_json_answers_sampled_together_keep_their_numbers(
    server: LocalServer, local_server: LocalServer
) -> None:
    """Grammars are sampled on two threads when several sequences follow one: seeded JSON
    answers, 4 at once, equal those of the one-slot server, tokens and logprobs."""

    def ask_json(url: str, k: int) -> tuple[str, list[tuple[str, float]]]:
        body = {
            "messages": ask(f"Student {k} asks: what is {k} + {k}?"),
            "response_format": id_format(f"req-{k}"),
            "temperature": 0.8,
            "seed": k,
            "max_tokens": 40,
            "logprobs": True,
        }
        r = post(url, body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        jsonschema.validate(json.loads(choice["message"]["content"]), id_schema(f"req-{k}"))
        return choice["message"]["content"], tokens_and_logprobs(choice)

    serial = [ask_json(local_server.url, k) for k in range(PARALLEL)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        batched = list(pool.map(lambda k: ask_json(server.url, k), range(PARALLEL)))
    assert batched == serial


def test_a_kv_cache_shared_by_the_slots_is_not_batch_invariant() -> None:
    """What the server avoids (README, notebook 05): with one KV cache for all slots, the same
    greedy requests decoded together differ from one at a time, and the engine says so."""
    from tmlab.server.batch import BatchEngine
    from tmlab.server.engine import Engine
    from tmlab.server.sampler import Sampling

    engine = Engine(n_ctx=512)
    try:
        prompts = [engine.tokenize(engine.render(ask(p))) for p in _PROMPTS * 2]

        def run(prompt: list[int]) -> list[tuple[int, float]]:
            steps = engine.generate(
                prompt, Sampling(temperature=0), max_tokens=24, top_logprobs=0, ignore_eos=True
            )
            return [(s.token_id, float(s.logprob or 0.0)) for s in steps]

        serial = [run(p) for p in prompts]
        engine.batch = BatchEngine(engine, len(prompts), unified=True)
        assert engine.batch.batch_invariant is False
        with ThreadPoolExecutor(len(prompts)) as pool:
            shared = list(pool.map(run, prompts))
    finally:
        engine.close()
    assert shared != serial
    print(
        f"\nshared KV cache: {sum(a != b for a, b in zip(shared, serial, strict=True))} "
        f"of {len(prompts)} greedy answers differ from one at a time"
    )


# -- n choices: decoded together, their prompt evaluated once --------------------------------

_LONG_PROMPT = "Here are my notes from class. " + " ".join(
    f"Point {i}: the temperature divides the logits before the softmax." for i in range(40)
)


def _choices(res: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]], list[int]]]:
    return [
        (c["message"]["content"], tokens_and_logprobs(c), c["token_ids"])
        for c in sorted(res["choices"], key=lambda c: c["index"])
    ]


def _assemble(events: list[dict[str, Any]], n: int) -> list[tuple[str, list[int]]]:
    text = [""] * n
    ids: list[list[int]] = [[] for _ in range(n)]
    for ev in events:
        for c in ev["choices"]:
            text[c["index"]] += c["delta"].get("content") or ""
            ids[c["index"]] += c.get("token_ids") or []
    return list(zip(text, ids, strict=True))


def test_n_choices_share_one_prompt_evaluation_and_keep_their_numbers(
    client: httpx.Client, server: LocalServer, local_server: LocalServer
) -> None:
    n = PARALLEL
    body = {
        "messages": ask(_LONG_PROMPT + " Summarise them."),
        "n": n,
        "temperature": 1.0,
        "seed": 11,
        "max_tokens": 12,
        "logprobs": True,
        "top_logprobs": 2,
        "return_token_ids": True,
    }
    prompt_len = client.post("/tokenize", json={"messages": body["messages"]}).json()["count"]
    assert prompt_len > 400  # long enough that the choices arrive while it is evaluated
    before = client.get("/v1/stats").json()["prompt_tokens_shared"]
    r = post(server.url, body)
    assert r.status_code == 200, r.text
    shared = client.get("/v1/stats").json()["prompt_tokens_shared"] - before
    # the first choice evaluated the prompt; the other n - 1 copied its KV cache
    assert shared == (n - 1) * prompt_len, (shared, prompt_len)
    batched = _choices(r.json())
    assert len({text for text, _, _ in batched}) > 1  # four seeds, four different answers
    # and each choice's numbers are those of the one-slot server, which evaluates the prompt
    # again for every choice, one choice after the other
    serial = post(local_server.url, body)
    assert serial.status_code == 200, serial.text
    assert batched == _choices(serial.json())
    # streamed: the choices' chunks interleave, each with its index, and assemble to the same
    _, events = stream_events(server.url, body)
    assert _assemble(events, n) == [(text, ids) for text, _, ids in batched]
    # it starts as with one slot: each choice's role chunk, index 0 first with the extras
    starts = [ev["choices"][0] for ev in events[:n]]
    assert [c["index"] for c in starts] == list(range(n))
    assert all(c["delta"].get("role") == "assistant" for c in starts)
    assert events[0]["prompt_token_ids"] and events[0]["logprobs_mode"] == "raw_logprobs"


# -- a client that leaves mid-batch ------------------------------------------------------------

_SURVIVORS = [
    "Count from 1 to 40, separated by commas.",
    "Count from 100 to 140, separated by commas.",
    "Repeat after me: one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty.",
]
_LEAVER = ask("Tell me a very long story about a dragon who learns to paint in the mountains.")
_SURVIVOR_TOKENS = 48


def _slots(client: httpx.Client) -> list[dict[str, Any]]:
    return list(client.get("/v1/stats").json()["slots"])


def _run_with_leaver(
    server: LocalServer, client: httpx.Client, leave: bool
) -> tuple[list[list[tuple[str, float]]], float | None]:
    """The survivors' greedy answers, run beside a long stream whose client leaves (or not)
    once they are generating; and how long its slot stayed taken after it left."""
    leaver_len = client.post("/tokenize", json={"messages": _LEAVER}).json()["count"]
    body = {"model": MODEL, "messages": _LEAVER, "stream": True, "max_tokens": 1500}
    sock = post_raw(server.url, {**body, "ignore_eos": True})
    freed_after: float | None = None
    try:
        assert b"data: " in read_until(sock, b"data: ")  # it is generating
        with ThreadPoolExecutor(len(_SURVIVORS)) as pool:
            futures = [pool.submit(_greedy, server.url, p, _SURVIVOR_TOKENS) for p in _SURVIVORS]
            # wait until every survivor is generating beside it
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                gen = [s for s in _slots(client) if s["state"] == "generating"]
                if len(gen) == PARALLEL and all(s["generated"] >= 2 for s in gen):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError(f"the survivors never all generated: {_slots(client)}")
            if leave:
                sock.close()
                left = time.monotonic()
                while time.monotonic() - left < 30:
                    slots = _slots(client)
                    if not any(s["prompt_tokens"] == leaver_len for s in slots):
                        freed_after = time.monotonic() - left
                        break
                    time.sleep(0.01)
                # freed while the others still generate: at once, not when the batch ends
                others = [s for s in slots if s["state"] == "generating"]
                assert others, f"the survivors ended before the slot was freed: {slots}"
                assert all(s["generated"] < _SURVIVOR_TOKENS for s in others)
            answers = [f.result() for f in futures]
    finally:
        sock.close()
    deadline = time.monotonic() + 30
    while any(s["state"] != "idle" for s in _slots(client)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(s["state"] == "idle" for s in _slots(client))
    return answers, freed_after


def test_a_client_that_leaves_mid_batch_never_disturbs_the_others(
    server: LocalServer, client: httpx.Client
) -> None:
    reference, _ = _run_with_leaver(server, client, leave=False)
    survivors, freed_after = _run_with_leaver(server, client, leave=True)
    assert freed_after is not None, "the slot of the client that left was never freed"
    # the server looks for a gone client at every token it streams: well under a second
    # on a quiet machine; bounded generously for a loaded one
    assert freed_after < 10.0
    deltas = [shared_prefix(a, b) for a, b in zip(reference, survivors, strict=True)]
    print(
        f"\nslot freed {freed_after:.2f} s after its client left; survivors vs a run where "
        f"nobody left: shared greedy prefixes {[len(ds) for ds in deltas]} of "
        f"{_SURVIVOR_TOKENS} tokens, max |Δ logprob| {max(d for ds in deltas for d in ds):.3g}"
    )
    # each slot's numbers are its own (see test_batched_vs_serial_numbers): a lost, foreign
    # or shifted KV cache would change them
    assert survivors == reference


# -- separate requests with the same prompt: evaluated once ------------------------------------

# Two pieces of 512 tokens on the one-slot path: requests sent at once reach the server while
# the first is still evaluating it. A prompt of one piece is evaluated in one step, and a
# request that arrives after that step began evaluates it again (see the README).
_PRESET = "Read these notes from class, then answer. " + " ".join(
    f"Note {i}: sampling at temperature T divides each logit by T before the softmax."
    for i in range(40)
)


def _streamed(url: str, body: dict[str, Any]) -> tuple[float, list[Any], str]:
    """A streamed request: seconds to its first token, its logprobs entries, its text."""
    t0 = time.monotonic()
    first: float | None = None
    entries: list[Any] = []
    text = ""
    with (
        httpx.Client(base_url=url, timeout=300.0) as c,
        c.stream("POST", CHAT, json={"model": MODEL, **body, "stream": True}) as r,
    ):
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                content = (choice.get("logprobs") or {}).get("content") or []
                if content and first is None:
                    first = time.monotonic() - t0
                entries += content
                text += choice["delta"].get("content") or ""
    assert first is not None, "no token arrived"
    return first, entries, text


def test_separate_requests_with_the_same_prompt_evaluate_it_once(
    client: httpx.Client, server: LocalServer, local_server: LocalServer
) -> None:
    """README, "Teaching a class": separate requests with the same prompt that reach the
    server while the first is still evaluating it share that evaluation, and keep their
    numbers. Four requests (their own connections, their own seeds) sent at once: the server
    copies the first one's KV cache to the other three (``prompt_tokens_shared``) and each
    answer equals the one-slot server's. Printed, not held (the machine's load moves them):
    the first tokens' times beside one evaluation alone, and what a short prompt, evaluated in
    one step, shares (only the requests or choices already waiting before that step)."""
    n = PARALLEL

    def bodies(messages: list[dict[str, str]], max_tokens: int) -> list[dict[str, Any]]:
        return [
            {
                "messages": messages,
                "temperature": 1.0,
                "seed": 100 + k,
                "max_tokens": max_tokens,
                "logprobs": True,
                "top_logprobs": 2,
            }
            for k in range(n)
        ]

    def at_once(sent: list[dict[str, Any]]) -> tuple[list[tuple[float, list[Any], str]], int]:
        before = client.get("/v1/stats").json()["prompt_tokens_shared"]
        with ThreadPoolExecutor(n) as pool:
            together = list(pool.map(lambda b: _streamed(server.url, b), sent))
        return together, client.get("/v1/stats").json()["prompt_tokens_shared"] - before

    def length(messages: list[dict[str, str]]) -> int:
        return int(client.post("/tokenize", json={"messages": messages}).json()["count"])

    preset = ask(_PRESET)
    prompt_len = length(preset)
    assert 512 < prompt_len <= 1024, prompt_len  # two pieces
    sent = bodies(preset, 8)
    alone, _, _ = _streamed(server.url, {**sent[0], "max_tokens": 1})  # one evaluation
    together, shared = at_once(sent)
    serial = [_streamed(local_server.url, b) for b in sent]
    short = ask("Name three colours.")
    _, shared_short = at_once(bodies(short, 2))
    before = client.get("/v1/stats").json()["prompt_tokens_shared"]
    r = post(server.url, {**bodies(short, 2)[0], "n": n})
    assert r.status_code == 200, r.text
    shared_n = client.get("/v1/stats").json()["prompt_tokens_shared"] - before
    firsts = sorted(t for t, _, _ in together)
    print(
        f"\n{n} separate requests sent at once, one {prompt_len}-token prompt: {shared} prompt "
        f"tokens shared ({shared / prompt_len:.2f} prompts); first tokens after "
        f"{', '.join(f'{t:.2f}' for t in firsts)} s, one evaluation alone {alone:.2f} s. "
        f"With a {length(short)}-token prompt: {shared_short / length(short):.2f} prompts "
        f"shared by {n} requests sent at once, {shared_n / length(short):.2f} by n={n} choices"
    )
    # the first evaluated it; the other n - 1 got a copy of its KV cache
    assert shared == (n - 1) * prompt_len, (shared, prompt_len)
    assert len({text for _, _, text in together}) > 1  # four seeds: not one answer copied
    for k, ((_, got, _), (_, want, _)) in enumerate(zip(together, serial, strict=True)):
        assert got == want, f"request {k}: its tokens or logprobs differ from the one-slot server's"
    assert shared_short % length(short) == 0  # whole prompts, however many
    # the n choices of one request are admitted together: even a short prompt is evaluated
    # once (measured before they were: 2 of 3 copies, the last choice raced the first)
    assert shared_n == (n - 1) * length(short), (shared_n, length(short))


# -- 8 slots: requests at random moments, decoded together ------------------------------------

EIGHT = 8
N_CTX = 2048


@pytest.fixture(scope="module")
def eight() -> Iterator[LocalServer]:
    """8 slots of 2048 tokens: the README's server for a class (its own, for this module)."""
    srv = tmlab.local.start(quiet=True, parallel=EIGHT, n_ctx=N_CTX)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def one() -> Iterator[LocalServer]:
    """One slot with the same context: the reference numbers, and the memory baseline."""
    srv = tmlab.local.start(quiet=True, n_ctx=N_CTX)
    try:
        yield srv
    finally:
        srv.stop()


_ARRIVING = [
    ("Tell me about the number 7.", {"temperature": 0}),
    ("Why is the sky blue?", {"temperature": 1.0, "seed": 1}),
    ("Describe a forest in autumn, the trees, the light and the smell. " * 8, {"temperature": 0}),
    ("What do cats eat?", {"temperature": 0.8, "seed": 2, "top_k": 20}),
    ("Write a haiku about the sea.", {"temperature": 1.2, "seed": 3, "top_p": 0.9}),
    ("List the planets of the solar system.", {"temperature": 0}),
    ("Explain what a token is to a child.", {"temperature": 0.7, "seed": 4, "min_p": 0.05}),
    ("Name three colours.", {"temperature": 1.0, "seed": 5}),
]
_ARRIVING_TOKENS = 64


def _arriving_body(k: int) -> dict[str, Any]:
    text, params = _ARRIVING[k]
    return {
        "messages": ask(text),
        **params,
        "max_tokens": _ARRIVING_TOKENS,
        "ignore_eos": True,
        "logprobs": True,
        "top_logprobs": 3,
    }


def _answer(url: str, k: int) -> tuple[str, Any]:
    r = post(url, _arriving_body(k))
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    return choice["message"]["content"], choice["logprobs"]


class _Watch:
    """Polls ``/v1/stats`` every 20 ms in a thread: the most slots seen generating at once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.most_generating = 0
        self.most_running = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            while not self._stop.is_set():
                stats = c.get("/v1/stats").json()
                busy = sum(s["state"] == "generating" for s in stats["slots"])
                self.most_generating = max(self.most_generating, busy)
                self.most_running = max(self.most_running, stats["running"])
                self.polls += 1
                self._stop.wait(0.02)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_eight_requests_at_random_moments_run_together_and_keep_their_numbers(
    eight: LocalServer, one: LocalServer
) -> None:
    """Up to 8 requests arriving at random (seeded) moments, each with its own sampling:
    every answer equals the one-slot server's, tokens and logprobs (top 3) bit for bit, and
    they did run together: the slots were seen generating side by side (``/v1/stats``)."""
    serial = [_answer(one.url, k) for k in range(EIGHT)]
    rng = random.Random(21)
    delays = [rng.uniform(0.0, 1.5) for _ in range(EIGHT)]

    def arrive(k: int) -> tuple[str, Any]:
        time.sleep(delays[k])
        return _answer(eight.url, k)

    with httpx.Client(base_url=eight.url, timeout=30.0) as c:
        before = c.get("/v1/stats").json()
        with _Watch(eight.url) as watch, ThreadPoolExecutor(EIGHT) as pool:
            batched = list(pool.map(arrive, range(EIGHT)))
        after = c.get("/v1/stats").json()
    peak = after.get("peak_decoded_together")
    print(
        f"\n{EIGHT} requests arriving over {max(delays):.2f} s on --parallel {EIGHT}: at most "
        f"{watch.most_generating} slots seen generating at once and {watch.most_running} "
        f"requests running ({watch.polls} polls of /v1/stats); the batch loop's own peak: "
        f"{peak}"
    )
    for k, (got, want) in enumerate(zip(batched, serial, strict=True)):
        assert got == want, f"request {k} differs from the one-slot server's answer"
    assert after["requests"] - before["requests"] == EIGHT
    # they overlapped: several slots generated side by side, each step decoding them together
    assert watch.most_generating >= EIGHT // 2, watch.most_generating
    # the count the batch loop keeps (tmlab/server/stats.py): every step it decoded
    assert peak is not None and peak >= watch.most_generating, peak


# -- memory: what 8 slots cost, measured ---------------------------------------------------------


def _rss_mb(pid: int) -> float:
    """The resident memory (``VmRSS``) of process ``pid``, in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_the_memory_of_8_slots_is_measured(eight: LocalServer, one: LocalServer) -> None:
    """README, "Teaching a class": each slot holds a KV cache of ``--n-ctx`` tokens. The
    resident memory (``VmRSS``) of the 8-slot and the one-slot server (2048 tokens each), after
    the same requests: the difference is printed for the README's figure and held loosely
    around the cache's arithmetic."""
    for srv in (one, eight):
        with ThreadPoolExecutor(EIGHT) as pool:
            list(pool.map(lambda k, u=srv.url: _answer(u, k), range(EIGHT)))
    rss8, rss1 = _rss_mb(eight.pid), _rss_mb(one.pid)
    # what llama.cpp's f16 KV cache of 8 x 2048 tokens holds, from the model's shape
    per_token = _kv_bytes_per_token()
    kv = EIGHT * N_CTX * per_token / 1e6
    print(
        f"\nVmRSS after the same {EIGHT} requests: --parallel {EIGHT} {rss8:.0f} MB, "
        f"--parallel 1 {rss1:.0f} MB (n_ctx {N_CTX}): {rss8 - rss1:.0f} MB more; "
        f"KV cache arithmetic: {per_token / 1e3:.1f} KB a token, {EIGHT} x {N_CTX} = {kv:.0f} MB"
    )
    # The 8-slot server keeps the one-slot path's context too, plus a KV stream per slot: it
    # holds about the 8 slots' cache more. Held loosely: RSS moves with the allocator.
    assert kv / 2 < rss8 - rss1 < 2 * kv, (rss8, rss1, kv)


def _kv_bytes_per_token() -> int:
    """Bytes of f16 keys and values a token takes in the KV cache, from the model's metadata."""
    from tmlab.server.engine import Engine

    engine = Engine(n_ctx=256)
    try:
        meta = engine.llm.metadata
        kv_type = engine.llm.context_params.type_k
    finally:
        engine.close()
    assert kv_type == 1  # GGML_TYPE_F16: two bytes a number
    layers = int(meta["llama.block_count"])
    kv_heads = int(meta["llama.attention.head_count_kv"])
    head_dim = int(meta["llama.embedding_length"]) // int(meta["llama.attention.head_count"])
    return layers * kv_heads * head_dim * 2 * 2  # keys and values

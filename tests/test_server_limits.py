"""Issue 16: the embedded server holds up when shared.

One real server (the real model, a real socket) started with small limits, so that every
limit is reached quickly. Each row of the issue's table is a test that measures what a user
would notice: how long the refusal took, how long a small request sent meanwhile waited, and
how much memory the server process reached (``VmHWM``, its peak resident set, from /proc).

The small request's wait is the time the server itself reports it queued
(``perf_metrics.queue_time``: from its arrival to the start of its generation), which what
runs ahead of it decides, not how crowded the machine is; before this change it was 13 s
behind a 20 MB body. Its whole latency is shown too, not asserted: on 2 cores shared with other
model servers a one-token answer takes anything from 0.2 to 15 s.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from _e2e import MODEL, STORY, post_raw, read_until
from hypothesis import given, settings
from hypothesis import strategies as st

import tmlab.local
from tmlab.local import LocalServer

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024  # --max-body-bytes of the server under test: 1 MiB
N_CTX = 2048
MAX_N = 4
MAX_REQUEST_TOKENS = 4096
MAX_QUEUE = 2
BODY_TIMEOUT = 2.0  # --body-timeout, seconds
MiB = 1024 * 1024

SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
# How long a small request may queue behind a refused one: milliseconds are expected (the
# refused one never reaches the model), seconds allow for a crowded machine.
SMALL_QUEUE_BOUND_S = 2.0
# How long a refusal may take: measured 0.04-0.7 s (a 60 MB upload over loopback); before
# this change 14.8 s for a 20 MB body and no answer within 120 s for 60 MB.
REJECT_BOUND_S = 10.0
# How much a refused request may raise the server's peak memory: the body it holds is at
# most LIMIT, decoded and rendered a few times over; before this change a 60 MB body took
# it to 4.7 GB.
RSS_GROWTH_BOUND_MB = 150.0


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of process ``pid`` in kB, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """A server with small limits (module-wide: starting one takes seconds)."""
    s = tmlab.local.start(
        quiet=True,
        n_ctx=N_CTX,
        max_body_bytes=LIMIT,
        max_n=MAX_N,
        max_request_tokens=MAX_REQUEST_TOKENS,
        max_queue=MAX_QUEUE,
        body_timeout=BODY_TIMEOUT,
    )
    try:
        with httpx.Client(base_url=s.url, timeout=120) as c:
            assert c.post("/v1/chat/completions", json=SMALL).status_code == 200  # warm
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def envelope(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    return err


@dataclass
class Row:
    """One row of the issue's table, as measured."""

    name: str
    status: int
    reject_s: float  # from sending the request to its answer
    small_wait_s: float  # a one-token request sent while it was in flight: whole latency
    small_queue_s: float  # … of which queued (as the server reports it)
    health_max_s: float  # the slowest /health answer meanwhile
    peak_mb: float  # VmHWM of the server process afterwards
    growth_mb: float  # VmHWM afterwards minus VmHWM before
    body: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"| {self.name} | {self.status} | {self.reject_s:.3f} s"
            f" | {self.small_queue_s:.3f} s ({self.small_wait_s:.3f} s in all)"
            f" | {self.peak_mb:.0f} MB (+{self.growth_mb:.0f})"
            f" | health ≤ {self.health_max_s:.3f} s |"
        )


def measure(server: LocalServer, name: str, send: Callable[[httpx.Client], httpx.Response]) -> Row:
    """Send one request with ``send``; meanwhile a small request and /health polls."""
    pid = server.process.pid
    before = memory_kb(pid)["VmHWM"]
    done = threading.Event()
    health: list[float] = []

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not done.is_set():
                t = time.perf_counter()
                assert c.get("/health").status_code == 200
                health.append(time.perf_counter() - t)
                time.sleep(0.02)

    box: dict[str, Any] = {}

    def big() -> None:
        with httpx.Client(base_url=server.url, timeout=180) as c:
            t = time.perf_counter()
            box["r"] = send(c)
            box["t"] = time.perf_counter() - t

    poller = threading.Thread(target=poll, daemon=True)
    sender = threading.Thread(target=big, daemon=True)
    poller.start()
    sender.start()
    time.sleep(0.05)  # the big one is on its way
    with httpx.Client(base_url=server.url, timeout=180) as c:
        t = time.perf_counter()
        small = c.post("/v1/chat/completions", json={**SMALL, "perf_metrics_in_response": True})
        small_s = time.perf_counter() - t
    sender.join(180)
    done.set()
    poller.join(60)
    assert small.status_code == 200, small.text
    after = memory_kb(pid)["VmHWM"]
    r = box["r"]
    row = Row(
        name,
        r.status_code,
        box["t"],
        small_s,
        small.json()["perf_metrics"]["queue_time"],
        max(health),
        after / 1024,
        (after - before) / 1024,
        r.json(),
    )
    print(row.line())
    assert row.reject_s < REJECT_BOUND_S, row
    assert row.small_queue_s < SMALL_QUEUE_BOUND_S, row
    assert row.health_max_s < SMALL_QUEUE_BOUND_S, row  # /health answered throughout
    return row


def chat_json(content: str, **extra: Any) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body).encode()


# -- the table, row by row ---------------------------------------------------------


@pytest.mark.parametrize("size_mb", [20, 60])
def test_a_body_over_the_limit_is_a_413_that_costs_no_memory(
    server: LocalServer, size_mb: int
) -> None:
    # a prompt of millions of tokens, as JSON
    data = chat_json("word " * (size_mb * MiB // 5))
    assert len(data) > size_mb * MiB
    row = measure(
        server,
        f"a {size_mb} MB body",
        lambda c: c.post(
            "/v1/chat/completions", content=data, headers={"content-type": "application/json"}
        ),
    )
    assert row.status == 413
    err = row.body["error"]
    assert err["code"] == "request_too_large" and "--max-body-bytes" in err["message"]
    assert f"{LIMIT:,}" in err["message"]
    assert row.growth_mb < RSS_GROWTH_BOUND_MB, row


def test_a_declared_oversize_body_is_refused_before_it_is_sent(server: LocalServer) -> None:
    # Content-Length says 60 MB; not one byte of it is sent, and the 413 still comes.
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (60 * MiB)
        )
        answer = read_until(sock, b'"code"')  # the envelope's last field
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code": "request_too_large"' in answer


def test_a_chunked_body_is_counted_as_it_arrives(server: LocalServer) -> None:
    # no Content-Length: the server counts and stops at the limit
    piece = b" " * 65536
    sent = [0]

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [], "pad": "'
        for _ in range(60 * MiB // len(piece)):
            sent[0] += len(piece)
            yield piece
        yield b'"}'

    row = measure(
        server,
        "a 60 MB chunked body",
        lambda c: c.post("/v1/chat/completions", content=chunks()),
    )
    assert row.status == 413 and row.body["error"]["code"] == "request_too_large"
    assert row.growth_mb < RSS_GROWTH_BOUND_MB, row


def test_a_body_at_the_limit_is_read(client: httpx.Client) -> None:
    data = chat_json("Hi", max_tokens=1)
    at_limit = data[:-1] + b" " * (LIMIT - len(data)) + b"}"  # JSON allows the padding
    assert len(at_limit) == LIMIT
    headers = {"content-type": "application/json"}
    assert client.post("/v1/chat/completions", content=at_limit, headers=headers).status_code == 200
    over = at_limit[:-1] + b" }"
    envelope(client.post("/v1/chat/completions", content=over, headers=headers), 413)


def test_a_1_mb_prompt_is_refused_without_tokenising_it(server: LocalServer) -> None:
    data = chat_json("word " * 200_000)  # 1 MB of text, within the body limit
    row = measure(
        server,
        "a 1 MB prompt",
        lambda c: c.post(
            "/v1/chat/completions", content=data, headers={"content-type": "application/json"}
        ),
    )
    assert row.status == 400
    err = row.body["error"]
    assert err["param"] == "messages" and err["code"] == "context_length_exceeded"
    # "at least": counted from its length alone, not tokenised
    assert err["message"].startswith("the prompt is at least ")
    assert int(err["message"].split()[5]) >= 800_000 // 25  # 800 kB of letters, ≤ 25 a token
    assert f"context is {N_CTX} tokens" in err["message"]
    assert row.growth_mb < RSS_GROWTH_BOUND_MB, row


def test_a_prompt_in_the_undecided_band_gets_its_exact_count(client: httpx.Client) -> None:
    # 3,000 tokens of text in 12 kB: its length alone cannot tell, so it is tokenised
    err = envelope(
        client.post("/v1/chat/completions", json={**SMALL, "messages": [STORY[0]] * 150}),
        400,
        "messages",
    )
    assert "at least" not in err["message"] and err["code"] == "context_length_exceeded"


FIVE_THOUSAND = [
    {
        "role": "user" if i % 2 == 0 else "assistant",
        "content": f"Message {i}: " + "tell me more " * 10,
    }
    for i in range(5000)
]


def test_5000_messages_are_refused_quickly(server: LocalServer) -> None:
    assert len(json.dumps(FIVE_THOUSAND)) < LIMIT
    row = measure(
        server,
        "5,000 messages",
        lambda c: c.post("/v1/chat/completions", json={**SMALL, "messages": FIVE_THOUSAND}),
    )
    assert row.status == 400
    err = row.body["error"]
    assert err["param"] == "messages" and err["code"] == "context_length_exceeded"


def test_5000_messages_truncated_keep_the_newest(client: httpx.Client) -> None:
    # dropping the oldest until it fits is a bisection, not 5,000 renderings (which took
    # minutes): planning it is part of its queue time
    r = client.post(
        "/v1/chat/completions",
        json={
            **SMALL,
            "messages": FIVE_THOUSAND,
            "prompt_truncate_len": 1000,
            "perf_metrics_in_response": True,
        },
    )
    assert r.status_code == 200, r.text
    prompt = r.json()["usage"]["prompt_tokens"]
    assert 900 < prompt <= 1000  # as many of the newest messages as fit
    assert r.json()["perf_metrics"]["queue_time"] < REJECT_BOUND_S
    tokenized = client.post("/tokenize", json={"messages": FIVE_THOUSAND[-20:]}).json()["count"]
    assert tokenized < prompt  # more than the last 20 messages were kept


def test_n_above_the_maximum_is_a_400_naming_n(server: LocalServer) -> None:
    row = measure(server, "n=64", lambda c: c.post("/v1/chat/completions", json={**SMALL, "n": 64}))
    assert row.status == 400
    err = row.body["error"]
    assert err["param"] == "n" and f"at most {MAX_N}" in err["message"]
    assert "--max-n" in err["message"]


def test_n_at_the_maximum_is_served(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={**SMALL, "n": MAX_N, "seed": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == MAX_N
    envelope(client.post("/v1/chat/completions", json={**SMALL, "n": MAX_N + 1}), 400, "n")


def test_n_times_max_tokens_is_bounded(client: httpx.Client) -> None:
    over = {**SMALL, "n": 4, "max_tokens": MAX_REQUEST_TOKENS // 4 + 1}
    err = envelope(client.post("/v1/chat/completions", json=over), 400, "max_tokens")
    assert f"at most {MAX_REQUEST_TOKENS}" in err["message"]
    assert "--max-request-tokens" in err["message"]
    # max_tokens beyond the context counts as what the context leaves (as before: capped)
    err = envelope(
        client.post("/v1/chat/completions", json={**SMALL, "n": 3, "max_tokens": 10**9}),
        400,
        "max_tokens",
    )
    assert "capped to what the context leaves" in err["message"]
    ok = {**SMALL, "max_completion_tokens": 10**9, "max_tokens": None, "n": 1}
    ok.update(messages=[{"role": "user", "content": "Say hi."}], temperature=0)
    assert client.post("/v1/chat/completions", json=ok).status_code == 200


@pytest.mark.parametrize(
    "extra,status,param",
    [
        ({"stop": [f"s{i}" for i in range(5000)]}, 400, "stop"),
        ({"seed": 2**80}, 400, "seed"),
        (
            {
                "max_tokens": 10**9,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Hi"}],
            },
            200,
            None,
        ),
        ({"logit_bias": {str(i): -1 for i in range(49_000)}}, 200, None),
    ],
)
def test_hostile_but_small_requests_keep_their_answers(
    client: httpx.Client, extra: dict[str, Any], status: int, param: str | None
) -> None:
    t = time.perf_counter()
    r = client.post("/v1/chat/completions", json={**SMALL, **extra})
    if status != 200:
        assert time.perf_counter() - t < REJECT_BOUND_S
    if status == 200:
        assert r.status_code == 200, r.text[:300]
    else:
        envelope(r, status, param)


def test_deeply_nested_json_is_a_400(client: httpx.Client) -> None:
    nested = b'{"model": "' + MODEL.encode() + b'", "messages": ' + b"[" * 200_000
    r = client.post(
        "/v1/chat/completions", content=nested, headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in envelope(r, 400)["message"]


# -- the queue ----------------------------------------------------------------------------


def _busy(server: LocalServer) -> socket.socket:
    """A stream that keeps the model generating until its socket is closed."""
    sock = post_raw(
        server.url,
        {**SMALL, "messages": STORY, "stream": True, "max_tokens": 1500, "ignore_eos": True},
    )
    read_until(sock, b"data: ")
    return sock


def test_a_full_queue_answers_503_with_retry_after(
    server: LocalServer, client: httpx.Client
) -> None:
    busy = _busy(server)
    queued = [post_raw(server.url, SMALL) for _ in range(MAX_QUEUE)]
    try:
        time.sleep(1.0)  # they are read, planned and queued behind the busy stream
        t = time.perf_counter()
        r = client.post("/v1/chat/completions", json=SMALL)
        assert time.perf_counter() - t < REJECT_BOUND_S  # refused, not queued
        err = envelope(r, 503)
        assert err["code"] == "server_overloaded" and err["type"] == "server_error"
        assert "--max-queue" in err["message"] and f"{MAX_QUEUE} requests" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # other routes that need the model are refused too; health answers
        envelope(client.post("/tokenize", json={"prompt": "hi"}), 503)
        assert client.get("/health").status_code == 200
    finally:
        busy.close()
    for sock in queued:  # the queued ones are answered once the model is free
        assert b"HTTP/1.1 200" in read_until(sock, b'"chat.completion"')
        sock.close()
    assert client.post("/v1/chat/completions", json=SMALL).status_code == 200


def test_queued_requests_whose_client_left_free_their_place(
    server: LocalServer, client: httpx.Client
) -> None:
    busy = _busy(server)
    try:
        for _ in range(3):  # three times what the queue holds, over time
            gone = [post_raw(server.url, SMALL) for _ in range(MAX_QUEUE)]
            time.sleep(1.0)
            for sock in gone:
                sock.close()
            time.sleep(1.0)  # the server notices (it looks every 0.25 s)
        # all the places are free again while the busy stream still runs: exactly MAX_QUEUE
        held = [post_raw(server.url, SMALL) for _ in range(MAX_QUEUE)]
        time.sleep(1.0)
        envelope(client.post("/v1/chat/completions", json=SMALL), 503)
    finally:
        busy.close()
    for sock in held:
        assert b"HTTP/1.1 200" in read_until(sock, b'"chat.completion"')
        sock.close()


def test_a_trickled_body_is_a_408_and_gives_up_its_place(
    server: LocalServer, client: httpx.Client
) -> None:
    # A byte every 0.2 s: each read comes quickly, so only a deadline for the whole body
    # stops it. Enough of them fill the queue (the slot's place and MAX_QUEUE waiting).
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    socks = [socket.create_connection((host, int(port))) for _ in range(MAX_QUEUE + 1)]
    answers = [b""] * len(socks)
    t0 = time.monotonic()
    try:
        for sock in socks:
            sock.sendall(head)
            sock.setblocking(False)
        time.sleep(0.5)
        envelope(client.post("/v1/chat/completions", json=SMALL), 503)  # they hold the queue
        while time.monotonic() - t0 < BODY_TIMEOUT + REJECT_BOUND_S:
            for i, sock in enumerate(socks):
                try:
                    sock.send(b" ")
                    answers[i] += sock.recv(65536)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
            if all(b"\r\n\r\n{" in a for a in answers):
                break
            time.sleep(0.2)
        took = time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        err = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert err["code"] == "request_timeout" and "--body-timeout" in err["message"]
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + REJECT_BOUND_S
    print(f"trickled bodies: 408 after {took:.2f} s (--body-timeout {BODY_TIMEOUT:g})")
    assert client.post("/v1/chat/completions", json=SMALL).status_code == 200  # room again


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--max-n", "0"],
        ["--max-body-bytes", "-1"],
        ["--max-queue", "x"],
        ["--max-request-tokens", "0"],
        ["--body-timeout", "0"],
        ["--body-timeout", "soon"],
    ],
)
def test_bad_limit_options_are_refused_before_loading(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tmlab.server", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert args[0] in done.stderr and "loading" not in done.stderr


def test_the_server_says_its_limits(client: httpx.Client) -> None:
    limits = client.get("/version").json()["limits"]
    assert limits == {
        "max_body_bytes": LIMIT,
        "max_n": MAX_N,
        "max_request_tokens": MAX_REQUEST_TOKENS,
        "max_queue": MAX_QUEUE,
        "body_timeout": BODY_TIMEOUT,
        "n_ctx": N_CTX,
    }


# -- in-process: the bound, the per-request budget, and planning beside a generation ----------


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from tmlab.server.engine import Engine

    e = Engine(n_ctx=256, n_threads=1)
    try:
        yield e
    finally:
        e.close()


RUNS = st.sampled_from([" ", "\n", "-", "#", "=", "\t", "ab", "é", "😀", "<|im_start|>", "1"])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=300)
    | st.lists(st.tuples(RUNS, st.integers(1, 400)), max_size=6).map(
        lambda runs: "".join(piece * k for piece, k in runs)
    )
)
def test_the_length_bound_never_exceeds_the_true_count(engine: Any, text: str) -> None:
    from tmlab.server.limits import prompt_bound

    assert prompt_bound(engine).at_least(text) <= len(engine.tokenize(text))


def test_the_bound_sees_the_longest_tokens(engine: Any) -> None:
    from tmlab.server.limits import prompt_bound

    bound = prompt_bound(engine)
    # SmolLM2 has an 81-byte token (a newline and 80 spaces): llama-cpp-python's own
    # detokenize returns nothing for tokens over 32 bytes, so the bound reads llama.cpp's
    assert bound.longest == len(b"\n" + b" " * 80)
    assert bound.longest_core == len("ManagementPlaneProtection")


def test_an_unset_max_tokens_shares_the_budget(engine: Any) -> None:
    from tmlab.server.prompting import plan_request
    from tmlab.server.protocol import RequestError, parse_chat_request

    def plan(budget: int, **extra: Any) -> Any:
        req = parse_chat_request({**SMALL, "max_tokens": None, **extra}, [MODEL], engine.n_vocab)
        return plan_request(engine, req, max_request_tokens=budget)

    assert plan(1000, n=1).max_tokens == engine.n_ctx - len(plan(1000).prompt_tokens)
    assert plan(100, n=4).max_tokens == 25  # not the context's room: the budget, shared
    assert plan(100, n=4, max_tokens=25).max_tokens == 25
    with pytest.raises(RequestError) as exc:
        plan(100, n=4, max_tokens=26)
    assert exc.value.param == "max_tokens" and "4 × 26 = 104" in exc.value.message
    with pytest.raises(RequestError) as exc:
        plan(3, n=4)
    assert exc.value.param == "n"


def test_planning_beside_a_generation_changes_nothing(engine: Any) -> None:
    # The preparing thread tokenises, renders and checks grammars while the worker
    # generates: the numbers must be those of a generation alone, and nothing may crash.
    from tmlab.server.prompting import JSON_GBNF
    from tmlab.server.sampler import Sampling

    prompt = engine.tokenize(engine.render(STORY))

    def generate() -> list[tuple[int, float]]:
        steps = engine.generate(prompt, Sampling(temperature=0), max_tokens=24, top_logprobs=2)
        return [(s.token_id, s.logprob) for s in steps]

    alone = generate()
    stop = threading.Event()
    done = [0]

    def churn() -> None:
        while not stop.is_set():
            tokens = engine.tokenize("ab cd\n-#  " * 2000)
            engine.detokenize(tokens[:500])
            engine.grammar_from_gbnf(JSON_GBNF)
            engine.render([{"role": "user", "content": "x" * 1000}])
            done[0] += 1

    side = threading.Thread(target=churn)
    side.start()
    try:
        beside = [generate() for _ in range(3)]
    finally:
        stop.set()
        side.join()
    assert done[0] > 0
    assert beside == [alone] * 3

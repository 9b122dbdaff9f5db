"""tmlab.Client and tmlab.AsyncClient through a mock transport and a live loopback server."""

from __future__ import annotations

import json
import logging
import traceback
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from _fake_server import (
    BASE,
    KEY,
    USAGE,
    LiveServer,
    Pieces,
    Script,
    chunk,
    completion,
    scripted_app,
    simple_stream,
    sse,
    sse_response,
)

import tmlab.local
from tmlab import AsyncClient, Client, Delta
from tmlab.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ParameterError,
    RateLimitError,
    ServerError,
    StreamError,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TENSORMESH_INFERENCE_API_KEY", "TENSORMESH_SERVERLESS_BASE_URL", "TMLAB_MODEL"):
        monkeypatch.delenv(name, raising=False)


def make(script: Script, **kw: Any) -> Client:
    """A client on the script, recording sleeps instead of sleeping."""
    kw.setdefault("model", "test-model")
    client = Client(base_url=BASE, api_key=KEY, transport=script.transport(), **kw)
    client.sleeps = []  # type: ignore[attr-defined]
    client._sleep = client.sleeps.append  # type: ignore[assignment,attr-defined]
    return client


def ok() -> httpx.Response:
    return httpx.Response(200, json=completion("Hello!"))


# -- building the request ----------------------------------------------------------------


def test_chat_sends_model_messages_and_params_and_reads_the_answer() -> None:
    script = Script(ok())
    res = make(script).chat("Hi", system="Be brief.", temperature=0.7, top_k=40, logprobs=True)
    (request,) = script.requests
    assert request.url == "http://tm.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.7,
        "top_k": 40,
        "logprobs": True,
    }
    assert res.text == "Hello!" and res.finish_reason == "stop" and res.complete
    assert res.usage.total_tokens == 8
    assert res.request == json.loads(request.content)
    assert res.timing.latency_s is not None and res.timing.latency_s > 0
    assert res.timing.ttft_s == res.timing.latency_s
    assert res.timing.tokens_per_s == pytest.approx(3 / res.timing.latency_s)


def test_messages_list_model_override_and_explicit_none() -> None:
    script = Script(ok())
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    make(script).chat(messages, model="other", seed=None)
    body = script.bodies[0]
    assert body["messages"] == messages and body["model"] == "other"
    assert body["seed"] is None  # explicit None is sent as null


def test_extra_body_passes_through_unvalidated() -> None:
    script = Script(ok())
    make(script).chat("Hi", extra_body={"vendor_knob": {"x": 1}, "temperature": 9})
    body = script.bodies[0]
    assert body["vendor_knob"] == {"x": 1} and body["temperature"] == 9


def test_streaming_asks_for_usage_unless_told_otherwise() -> None:
    script = Script(lambda r: sse_response(simple_stream(["a"])))
    client = make(script)
    client.chat("Hi", stream=True)
    client.chat("Hi", stream=True, stream_options={"include_usage": False})
    assert script.bodies[0]["stream"] is True
    assert script.bodies[0]["stream_options"] == {"include_usage": True}
    assert script.bodies[1]["stream_options"] == {"include_usage": False}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_logprobs": 5}, "top_logprobs"),  # needs logprobs=True
        ({"temprature": 0.5}, "temprature"),
        ({"n": 2, "temperature": 0}, "n"),
        ({"on_delta": print}, "on_delta"),  # without stream=True
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": []}, "messages"),
        ({"messages": ["not a dict"]}, "messages"),
        ({"messages": 42}, "messages"),
        ({"extra_body": {"x": float("nan")}}, "messages"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_sent(kwargs: dict, param: str) -> None:
    script = Script(ok())
    prompt = kwargs.pop("messages", "Hi")
    with pytest.raises(ParameterError) as info:
        make(script).chat(prompt, **kwargs)
    assert info.value.param == param
    assert script.requests == []


def test_remote_server_without_a_model_says_how_to_find_one() -> None:
    script = Script(ok())
    client = Client(base_url=BASE, api_key=KEY, transport=script.transport())
    with pytest.raises(ParameterError, match="model") as info:
        client.chat("Hi")
    assert "client.models()" in str(info.value)
    assert script.requests == []


def test_a_loopback_server_with_one_model_needs_no_model_name() -> None:
    models = httpx.Response(200, json={"data": [{"id": "only-model"}]})
    script = Script(models, ok())
    client = Client(base_url="http://127.0.0.1:9/v1", transport=script.transport())
    client.chat("Hi")
    client.chat("Again")
    assert [r.url.path for r in script.requests] == ["/v1/models"] + ["/v1/chat/completions"] * 2
    assert script.bodies[0]["model"] == "only-model"
    assert client.model == "only-model"


def test_a_loopback_server_with_several_models_lists_them() -> None:
    models = httpx.Response(200, json={"data": [{"id": "a"}, {"id": "b"}]})
    script = Script(models)
    client = Client(base_url="http://localhost:9/v1", transport=script.transport())
    with pytest.raises(ParameterError, match="it serves: a, b"):
        client.chat("Hi")
    with pytest.raises(ParameterError, match="top_k"):  # checked before asking the server
        Client(base_url="http://localhost:9/v1", transport=script.transport()).chat("Hi", top_k=-5)
    assert len(script.requests) == 1


def test_models_lists_the_server_models() -> None:
    script = Script(
        httpx.Response(200, json={"object": "list", "data": [{"id": "a"}, {"id": "b"}]})
    )
    assert [m["id"] for m in make(script).models()] == ["a", "b"]
    assert script.requests[0].method == "GET"
    assert script.requests[0].url.path == "/v1/models"


# -- settings ---------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORMESH_INFERENCE_API_KEY", KEY)
    monkeypatch.setenv("TMLAB_MODEL", "env-model")
    client = Client()
    assert client.base_url == "https://serverless.tensormesh.ai/v1"
    assert client.model == "env-model"
    monkeypatch.setenv("TENSORMESH_SERVERLESS_BASE_URL", "http://other/v1/")
    assert Client(model="arg-model").base_url == "http://other/v1"
    assert Client(model="arg-model").model == "arg-model"


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Replace tmlab.local.ensure_server with a fake that serves from a mock transport."""
    calls: list[int] = []

    def ensure_server(parallel: int | None = None, *, recheck: bool = False) -> Any:
        calls.append(1)
        return types.SimpleNamespace(base_url="http://127.0.0.1:5999/v1")

    monkeypatch.setattr(tmlab.local, "ensure_server", ensure_server)
    yield calls


def test_no_key_no_url_uses_the_local_server_lazily(fake_local: list[int]) -> None:
    script = Script(ok())
    client = Client(transport=script.transport())
    assert fake_local == []  # constructing is instant: nothing started
    assert client.base_url is None
    assert client.model == "SmolLM2-135M-Instruct"
    assert "api_key=None" in repr(client)
    client.chat("Hi")
    client.chat("Hi again")
    assert fake_local == [1]
    assert client.base_url == "http://127.0.0.1:5999/v1"
    assert str(script.requests[0].url) == "http://127.0.0.1:5999/v1/chat/completions"
    assert script.bodies[0]["model"] == "SmolLM2-135M-Instruct"
    assert "authorization" not in script.requests[0].headers


def test_parameter_error_does_not_start_the_local_server(fake_local: list[int]) -> None:
    with pytest.raises(ParameterError):
        Client().chat("Hi", temperature=-1)
    assert fake_local == []


# -- retries ----------------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds() -> None:
    limited = httpx.Response(429, headers={"retry-after": "2"}, json={"error": {"message": "slow"}})
    script = Script(limited, ok())
    client = make(script)
    res = client.chat("Hi")
    assert res.text == "Hello!"
    assert len(script.requests) == 2
    assert client.sleeps == [2.0]  # type: ignore[attr-defined]


def test_retry_after_ms_is_honoured() -> None:
    script = Script(httpx.Response(503, headers={"retry-after-ms": "150"}), ok())
    client = make(script)
    client.chat("Hi")
    assert client.sleeps == [0.15]  # type: ignore[attr-defined]


def test_503_burst_beyond_max_retries_is_a_server_error() -> None:
    script = Script(httpx.Response(503, text="upstream busy"))
    client = make(script, max_retries=3)
    with pytest.raises(ServerError, match="upstream busy") as info:
        client.chat("Hi")
    assert info.value.status_code == 503
    assert len(script.requests) == 4
    sleeps = client.sleeps  # type: ignore[attr-defined]
    assert len(sleeps) == 3 and sleeps == sorted(sleeps)  # exponential backoff
    assert 0.375 <= sleeps[0] <= 0.5


def test_400_is_never_retried() -> None:
    body = {"error": {"message": "n must be 1 with temperature=0", "type": "invalid_request"}}
    script = Script(httpx.Response(400, json=body))
    client = make(script, max_retries=5)
    with pytest.raises(BadRequestError, match="n must be 1"):
        client.chat("Hi")
    assert len(script.requests) == 1 and client.sleeps == []  # type: ignore[attr-defined]


def test_rate_limit_error_after_retries() -> None:
    script = Script(httpx.Response(429, json={"error": {"message": "quota", "code": 429}}))
    with pytest.raises(RateLimitError):
        make(script, max_retries=1).chat("Hi")
    assert len(script.requests) == 2


def test_connection_errors_are_retried_then_reported() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"), ok())
    assert make(script).chat("Hi").text == "Hello!"
    script = Script(httpx.ConnectError("connection refused"))
    with pytest.raises(APIConnectionError, match="connection refused"):
        make(script, max_retries=1).chat("Hi")
    assert len(script.requests) == 2


def test_read_timeout_is_a_timeout_error_and_not_retried() -> None:
    script = Script(httpx.ReadTimeout("timed out"))
    with pytest.raises(APITimeoutError):
        make(script).chat("Hi")
    assert len(script.requests) == 1


# -- streams ---------------------------------------------------------------------------------


def test_stream_reassembles_and_calls_on_delta_per_delta() -> None:
    pieces = [
        b'data: {"id":"c","model":"m","created":1,"choices":[{"index":0,"delta":',
        b'{"role":"assistant","content":"Hel"}}]}\r\n\r\n',
        sse(chunk("lo"), chunk(finish="stop"), chunk(choices=[], usage=USAGE)),
    ]
    script = Script(lambda r: sse_response(pieces))
    deltas: list[Delta] = []
    res = make(script).chat("Hi", stream=True, on_delta=deltas.append)
    assert res.complete and res.text == "Hello" and res.finish_reason == "stop"
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert deltas[-1].finish_reason == "stop"
    assert res.usage.completion_tokens == 3
    assert res.raw["object"] == "chat.completion"
    assert res.request["stream"] is True


def test_stream_cut_after_data_is_a_stream_error_with_the_partial_answer() -> None:
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete body")
    body = sse(chunk("The answer", role="assistant"), chunk(" is"), done=False)
    script = Script(lambda r: sse_response(body, error=cut))
    client = make(script)
    with pytest.raises(StreamError, match="broke off") as info:
        client.chat("Hi", stream=True)
    partial = info.value.partial
    assert partial is not None and partial.complete is False
    assert partial.text == "The answer is"
    assert len(script.requests) == 1  # never retried once data arrived


def test_stream_failing_before_any_byte_is_retried() -> None:
    dead = sse_response([], error=httpx.ReadError("reset"))
    script = Script(dead, lambda r: sse_response(simple_stream(["ok"])))
    assert make(script).chat("Hi", stream=True).text == "ok"
    assert len(script.requests) == 2


def test_stream_without_done_or_finish_reason_is_broken() -> None:
    script = Script(lambda r: sse_response(sse(chunk("Hal", role="assistant"), done=False)))
    with pytest.raises(StreamError) as info:
        make(script).chat("Hi", stream=True)
    assert info.value.partial is not None and info.value.partial.text == "Hal"


def test_malformed_sse_line_is_a_stream_error() -> None:
    script = Script(lambda r: sse_response(sse(chunk("a", role="assistant"), "{not json")))
    with pytest.raises(StreamError, match="malformed") as info:
        make(script).chat("Hi", stream=True)
    assert not isinstance(info.value.__cause__, json.JSONDecodeError)
    assert info.value.partial is not None and info.value.partial.text == "a"


def test_in_band_error_is_a_stream_error_with_type_and_code() -> None:
    err = {"error": {"message": "context overflow", "type": "invalid_request", "code": "ctx"}}
    script = Script(lambda r: sse_response(sse(chunk("x", role="assistant"), err)))
    with pytest.raises(StreamError, match="context overflow") as info:
        make(script).chat("Hi", stream=True)
    assert (info.value.type, info.value.code) == ("invalid_request", "ctx")
    assert info.value.partial is not None and info.value.partial.text == "x"


def test_stream_error_status_is_mapped_before_reading_events() -> None:
    script = Script(httpx.Response(404, json={"detail": "model 'x' not found"}))
    with pytest.raises(Exception, match="model 'x' not found") as info:
        make(script).chat("Hi", stream=True)
    assert type(info.value).__name__ == "NotFoundError"


def test_server_ignoring_stream_true_still_gives_a_result() -> None:
    script = Script(ok())
    res = make(script).chat("Hi", stream=True)
    assert res.text == "Hello!" and res.complete


# -- secrets ----------------------------------------------------------------------------------


def test_the_key_appears_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"invalid key {KEY}", "type": "auth"}}
    script = Script(ok(), httpx.Response(401, json=echo), httpx.ConnectError(f"boom {KEY}"))
    client = make(script, max_retries=0)
    res = client.chat("Hi")
    texts = [repr(client), str(client), repr(res), json.dumps(res.request), json.dumps(res.raw)]
    for _ in range(2):
        with pytest.raises(Exception) as info:
            client.chat("Hi")
        texts += [str(info.value), repr(info.value)]
        shown = "".join(traceback.format_exception(info.value))
        texts.append(shown)
    texts += [r.getMessage() for r in caplog.records]
    assert "api_key='***'" in repr(client)
    assert "invalid key ***" in texts[5]
    assert all(KEY not in t for t in texts)
    assert "ConnectError: boom ***" in str(info.value)  # the kind of failure is still told
    assert "authorization" not in {k.lower() for k in res.request}


def test_a_stream_broken_by_an_error_quoting_the_key_does_not_chain_it() -> None:
    body = sse(chunk("Hal", role="assistant"), done=False)
    script = Script(lambda r: sse_response(body, error=httpx.ReadError(f"reset {KEY}")))
    with pytest.raises(StreamError) as info:
        make(script).chat("Hi", stream=True)
    shown = "".join(traceback.format_exception(info.value))
    assert KEY not in shown and "ReadError" in shown


@pytest.mark.parametrize(
    "key",
    ["sk-AAAA\nBBBBSECRET", "sk-SECRET\u200bKEY123", "sk-SECRET KEY123", "sk-SECRÉTKEY123"],
)
def test_an_api_key_that_cannot_be_sent_is_rejected_without_quoting_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(ok())
    for source in ("argument", "environment"):
        with pytest.raises(ParameterError) as info:
            if source == "argument":
                Client(base_url=BASE, api_key=key, model="m", transport=script.transport())
            else:
                monkeypatch.setenv("TENSORMESH_INFERENCE_API_KEY", key)
                Client(base_url=BASE, model="m", transport=script.transport())
        err = info.value
        assert err.param == "api_key"
        shown = [str(err), repr(err), "".join(traceback.format_exception(err))]
        assert all("SECRET" not in t and "KEY123" not in t for t in shown)
        assert "API key" in str(err)
    assert script.requests == []


def test_a_key_with_surrounding_whitespace_is_still_fine() -> None:
    script = Script(ok())
    client = Client(base_url=BASE, api_key=f"  {KEY}\n", model="m", transport=script.transport())
    client.chat("Hi")
    assert script.requests[0].headers["authorization"] == f"Bearer {KEY}"


# -- a body that breaks off ----------------------------------------------------------------


def _cut_json(request: httpx.Request) -> httpx.Response:
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete body")
    return httpx.Response(
        200,
        headers={"content-type": "application/json"},
        stream=Pieces([b'{"choices": [', b'{"index"'], cut),
    )


def test_a_non_streaming_answer_that_breaks_off_is_not_sent_again() -> None:
    script = Script(_cut_json, ok())
    client = make(script)
    with pytest.raises(APIConnectionError, match="broke off after 21 bytes") as info:
        client.chat("Hi")
    assert not isinstance(info.value, APITimeoutError)
    assert "RemoteProtocolError" in str(info.value)
    assert len(script.requests) == 1 and client.sleeps == []  # type: ignore[attr-defined]


def test_a_failure_before_the_answer_started_is_still_retried() -> None:
    script = Script(httpx.RemoteProtocolError("closed"), httpx.ReadError("reset"), ok())
    assert make(script).chat("Hi").text == "Hello!"
    assert len(script.requests) == 3


@pytest.mark.anyio
async def test_async_non_streaming_answer_that_breaks_off_is_not_sent_again() -> None:
    script = Script(_cut_json, ok())
    client = amake(script)
    with pytest.raises(APIConnectionError, match="broke off after 21 bytes"):
        await client.chat("Hi")
    assert len(script.requests) == 1
    await client.close()


# -- [DONE] ends the stream ------------------------------------------------------------------


class _OpenAfterDone(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Sends a whole stream, then keeps the connection open until the read times out."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.ReadTimeout("timed out")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
        raise httpx.ReadTimeout("timed out")


def test_a_stream_held_open_after_done_is_still_complete() -> None:
    body = _OpenAfterDone(simple_stream(["Hi", " there"]))
    headers = {"content-type": "text/event-stream"}
    script = Script(lambda r: httpx.Response(200, headers=headers, stream=body))
    res = make(script).chat("Hi", stream=True)
    assert res.complete and res.text == "Hi there"
    assert res.finish_reason == "stop"


@pytest.mark.anyio
async def test_async_stream_held_open_after_done_is_still_complete() -> None:
    body = _OpenAfterDone(simple_stream(["Hi", " there"]))
    headers = {"content-type": "text/event-stream"}
    script = Script(lambda r: httpx.Response(200, headers=headers, stream=body))
    async with amake(script) as client:
        res = await client.chat("Hi", stream=True)
    assert res.complete and res.text == "Hi there"


def _client_port_app(ports: list[int]) -> Any:
    """An ASGI app that streams a short answer and records each request's client port."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ports.append(scope["client"][1])
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": simple_stream(["ok"])})

    return app


def test_streams_reuse_one_connection() -> None:
    # Against a remote HTTPS API, a new connection per streamed request costs a handshake.
    ports: list[int] = []
    with (
        LiveServer(_client_port_app(ports)) as server,
        Client(base_url=server.base_url, model="m") as client,
    ):
        for _ in range(3):
            assert client.chat("Hi", stream=True).text == "ok"
    assert len(ports) == 3 and len(set(ports)) == 1


@pytest.mark.anyio
async def test_async_streams_reuse_one_connection() -> None:
    ports: list[int] = []
    with LiveServer(_client_port_app(ports)) as server:
        async with AsyncClient(base_url=server.base_url, model="m") as client:
            for _ in range(3):
                assert (await client.chat("Hi", stream=True)).text == "ok"
    assert len(ports) == 3 and len(set(ports)) == 1


# -- on_delta ----------------------------------------------------------------------------------


def test_sync_client_rejects_an_async_on_delta_before_sending() -> None:
    async def on_delta(delta: Delta) -> None:
        pass

    script = Script(lambda r: sse_response(simple_stream(["Hi"])))
    with pytest.raises(ParameterError, match="AsyncClient") as info:
        make(script).chat("Hi", stream=True, on_delta=on_delta)
    assert info.value.param == "on_delta"
    assert script.requests == []


@pytest.mark.anyio
async def test_async_client_awaits_an_async_on_delta() -> None:
    got: list[str] = []

    async def on_delta(delta: Delta) -> None:
        await anyio.sleep(0)
        got.append(delta.text)

    script = Script(lambda r: sse_response(simple_stream(["Hel", "lo"])))
    async with amake(script) as client:
        res = await client.chat("Hi", stream=True, on_delta=on_delta)
        plain: list[str] = []
        await client.chat("Hi", stream=True, on_delta=lambda d: plain.append(d.text))
    assert res.text == "Hello"
    assert got == plain == ["Hel", "lo", ""]


# -- numbers from numpy ------------------------------------------------------------------------


def test_numpy_numbers_are_sent_as_json_numbers() -> None:
    np = pytest.importorskip("numpy")
    script = Script(ok())
    make(script).chat("Hi", top_k=np.int64(5), temperature=np.float32(0.5), max_tokens=np.int32(7))
    sent = script.bodies[0]
    assert (sent["top_k"], sent["temperature"], sent["max_tokens"]) == (5, 0.5, 7)


# -- live loopback server ----------------------------------------------------------------------


def _live_handler(path: str, body: bytes) -> tuple[int, dict[str, str], list[Any], bool]:
    request = json.loads(body) if body else {}
    sse_headers = {"content-type": "text/event-stream"}
    prompt = request.get("messages", [{}])[-1].get("content")
    if prompt == "cut":
        return 200, sse_headers, [sse(chunk("Once upon", role="assistant"), done=False)], True
    if prompt == "slow":
        return (
            200,
            {"content-type": "application/json"},
            [1.0, json.dumps(completion()).encode()],
            False,
        )
    if request.get("stream"):
        parts: list[Any] = [sse(chunk("", role="assistant"), done=False), 0.05]
        parts += [sse(chunk(w), done=False) for w in ("One", " two", " three")]
        parts.append(sse(chunk(finish="stop"), chunk(choices=[], usage=USAGE)))
        return 200, sse_headers, parts, False
    return (
        200,
        {"content-type": "application/json"},
        [json.dumps(completion("One two three")).encode()],
        False,
    )


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(scripted_app(_live_handler)) as server:
        yield server


def test_live_stream_matches_non_stream_and_measures_ttft(live: LiveServer) -> None:
    with Client(base_url=live.base_url, model="m") as client:
        plain = client.chat("hello")
        streamed = client.chat("hello", stream=True)
    assert streamed.text == plain.text == "One two three"
    assert streamed.usage == plain.usage
    timing = streamed.timing
    assert timing.ttft_s is not None and timing.latency_s is not None
    assert 0.04 < timing.ttft_s <= timing.latency_s  # first token after the server's pause
    assert timing.tokens_per_s is not None and timing.tokens_per_s > 0


def test_live_connection_cut_mid_stream(live: LiveServer) -> None:
    with Client(base_url=live.base_url, model="m") as client, pytest.raises(StreamError) as info:
        client.chat("cut", stream=True)
    assert info.value.partial is not None and info.value.partial.text == "Once upon"


def test_live_timeout(live: LiveServer) -> None:
    with (
        Client(base_url=live.base_url, model="m", timeout=0.2) as client,
        pytest.raises(APITimeoutError, match="timed out"),
    ):
        client.chat("slow")


def test_live_connection_refused_is_a_connection_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens
    client = Client(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1)
    client._sleep = lambda s: None  # type: ignore[assignment]
    with client, pytest.raises(APIConnectionError, match=f"127.0.0.1:{port}"):
        client.chat("Hi")


# -- AsyncClient parity ---------------------------------------------------------------------


def test_anyio_plugin_is_active(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("anyio")


def amake(script: Script, **kw: Any) -> AsyncClient:
    kw.setdefault("model", "test-model")
    client = AsyncClient(base_url=BASE, api_key=KEY, transport=script.transport(), **kw)
    client.sleeps = []  # type: ignore[attr-defined]

    async def sleep(delay: float) -> None:
        client.sleeps.append(delay)  # type: ignore[attr-defined]

    client._sleep = sleep  # type: ignore[assignment]
    return client


@pytest.mark.anyio
async def test_async_chat_and_stream() -> None:
    script = Script(ok(), lambda r: sse_response(simple_stream(["<think>hm</think>", "Yes"])))
    deltas: list[Delta] = []
    async with amake(script) as client:
        res = await client.chat("Hi", temperature=0.2)
        streamed = await client.chat("Hi", stream=True, on_delta=deltas.append)
    assert res.text == "Hello!" and script.bodies[0]["temperature"] == 0.2
    assert (streamed.text, streamed.reasoning) == ("Yes", "hm")
    assert "".join(d.text for d in deltas) == "Yes"
    assert "".join(d.reasoning for d in deltas) == "hm"


@pytest.mark.anyio
async def test_async_retries_honour_retry_after() -> None:
    script = Script(httpx.Response(429, headers={"retry-after": "1.5"}), ok())
    client = amake(script)
    assert (await client.chat("Hi")).text == "Hello!"
    assert client.sleeps == [1.5]  # type: ignore[attr-defined]
    await client.close()


@pytest.mark.anyio
async def test_async_errors_match_the_sync_client() -> None:
    cut = httpx.RemoteProtocolError("peer closed")
    script = Script(
        httpx.Response(400, json={"detail": [{"loc": ["body", "top_k"], "msg": "bad"}]}),
        lambda r: sse_response(sse(chunk("part", role="assistant"), done=False), error=cut),
    )
    client = amake(script)
    with pytest.raises(BadRequestError) as info:
        await client.chat("Hi")
    assert info.value.param == "top_k"
    with pytest.raises(StreamError) as sinfo:
        await client.chat("Hi", stream=True)
    assert sinfo.value.partial is not None and sinfo.value.partial.text == "part"
    with pytest.raises(ParameterError):
        await client.chat("Hi", top_p=2)
    assert len(script.requests) == 2
    await client.close()


@pytest.mark.anyio
async def test_async_live_stream(live: LiveServer) -> None:
    async with AsyncClient(base_url=live.base_url, model="m") as client:
        res = await client.chat("hello", stream=True)
        with pytest.raises(StreamError) as info:
            await client.chat("cut", stream=True)
    assert info.value.partial is not None and info.value.partial.text == "Once upon"
    assert res.text == "One two three" and res.complete

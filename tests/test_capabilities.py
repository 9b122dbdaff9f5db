"""One record of what a server does (:mod:`tmlab.capabilities`) and the one continuation check
(:mod:`tmlab.continuation`), against mock servers: a server that always prefills and repeats
the prefix in its content (as llama.cpp's does), and failures that are not answers (a timeout,
a 5xx), which give ``unknown`` and are asked again."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from _fake_server import BASE, KEY, completion

import tmlab
from tmlab import capabilities, continuation
from tmlab.branching import continue_final, ensure_continues
from tmlab.continuation import PREFIX_NOTE
from tmlab.errors import APITimeoutError

MODELS = {"object": "list", "data": [{"id": "m", "owned_by": "someone"}]}


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    capabilities.forget()
    yield
    capabilities.forget()


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> tmlab.Client:
    return tmlab.Client(
        base_url=BASE,
        api_key=KEY,
        model="m",
        max_retries=0,
        transport=httpx.MockTransport(handler),
    )


def prefiller(request: httpx.Request) -> httpx.Response:
    """Continues a final assistant message whatever the flags, and repeats it in content."""
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json=MODELS)
    last = json.loads(request.content)["messages"][-1]
    if last["role"] == "assistant":
        said = " 5, 6" if last["content"].endswith("4,") else " a time"
        return httpx.Response(200, json=completion(last["content"] + said))
    return httpx.Response(200, json=completion("Hello!"))


def test_a_server_that_always_prefills_and_repeats_the_prefix(history_db: str) -> None:
    with _client(prefiller) as c:
        found = continuation.check(c, "m")
        assert found.verdict == "continues (always prefills)"
        assert found.echoes_prefix and not found.token_ids
        res = continue_final(
            c, [{"role": "user", "content": "A story."}], "Once upon", max_tokens=3
        )
    assert res.text == " a time" and res.full_text == "Once upon a time"
    assert res.notes == [PREFIX_NOTE] and PREFIX_NOTE in res.logprobs_frame().attrs["notes"]
    caps = capabilities.find(BASE, "m")
    assert caps is not None and caps.continuation == found  # kept: the one record


def test_a_timeout_is_unknown_not_kept_and_asked_again(history_db: str) -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadTimeout("too slow", request=request)
        return prefiller(request)

    with _client(flaky) as c:
        first = continuation.check(c, "m")
        assert first.verdict == "unknown" and isinstance(first.error, APITimeoutError)
        assert capabilities.find(BASE, "m") is None  # not an answer: nothing kept
        with pytest.raises(APITimeoutError):  # a branch says what went wrong, not "cannot"
            calls["n"] = 0
            ensure_continues(c, "m")
        assert ensure_continues(c, "m").verdict == "continues (always prefills)"


def test_a_probe_request_that_fails_with_a_5xx_is_unknown_and_asked_again(
    history_db: str,
) -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json=MODELS)
        if "reasoning_effort" in json.loads(request.content):
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return prefiller(request)

    printed: list[str] = []
    with _client(busy) as c:
        df = tmlab.probe(c, out=printed.append)
        verdicts = dict(zip(df["capability"], df["verdict"], strict=True))
        assert verdicts["reasoning"] == "unknown"  # not "none seen"
        assert "ServerError" in df.set_index("capability").loc["reasoning", "came_back"]
        assert verdicts["logprobs"] == "not supported"  # an answer, not a failure
        assert verdicts["continuation of a final assistant message"] == (
            "continues (always prefills)"
        )
        assert "not kept" in df.attrs["notes"]
        tmlab.probe(c, out=printed.append)
    assert len(printed) == 2  # asked again: the first table was not kept

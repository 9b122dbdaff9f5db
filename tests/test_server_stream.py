"""End to end: SSE streams in the OpenAI shape, and a client that leaves stops its generation."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from _e2e import MODEL, STORY, WEATHER, post_raw

pytestmark = pytest.mark.slow


def stream(http: Any, **body: Any) -> list[Any]:
    body = {"model": MODEL, "messages": STORY, "stream": True, **body}
    events: list[Any] = []
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def content(events: list[Any], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if e != "[DONE]"
        for c in e["choices"]
        if c["index"] == index
    )


def test_stream_matches_non_stream_and_ends_with_usage_and_done(http: Any) -> None:
    events = stream(
        http,
        temperature=0,
        max_tokens=12,
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=3,
    )
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 12
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert finish == ["length"]
    body = {
        "model": MODEL,
        "messages": STORY,
        "temperature": 0,
        "max_tokens": 12,
        "logprobs": True,
        "top_logprobs": 3,
    }
    full = http.post("/v1/chat/completions", json=body).json()
    assert content(events) == full["choices"][0]["message"]["content"]
    lps = [
        x
        for e in events[:-1]
        for c in e["choices"]
        if c.get("logprobs")
        for x in c["logprobs"]["content"]
    ]
    assert lps == full["choices"][0]["logprobs"]["content"]


def test_stream_without_include_usage_has_no_usage_chunk(http: Any) -> None:
    events = stream(http, temperature=0, max_tokens=3)
    assert all("usage" not in e for e in events[:-1])


def test_stream_stop_never_shows_the_stop_text(http: Any) -> None:
    full = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": STORY, "temperature": 0, "max_tokens": 30},
    ).json()
    text = full["choices"][0]["message"]["content"]
    stop = text.split()[4][:3]
    events = stream(http, temperature=0, max_tokens=30, stop=stop)
    assert content(events) == text[: text.index(stop)]


def test_stream_reasoning_deltas_and_n(http: Any) -> None:
    events = stream(
        http,
        reasoning_effort="low",
        temperature=0,
        max_tokens=6,
        stream_options={"include_usage": True},
    )
    reasoning = "".join(
        c["delta"].get("reasoning") or "" for e in events[:-1] for c in e["choices"]
    )
    assert reasoning.strip()
    assert events[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    multi = stream(http, n=2, temperature=1.0, seed=3, max_tokens=4)
    assert content(multi, 0) and content(multi, 1)


def test_stream_tool_call_and_extras(http: Any) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"type": "string", "maxLength": 20}},
                "required": ["tz"],
            },
        },
    }
    events = stream(
        http,
        tools=[tool],
        tool_choice="required",
        temperature=0,
        max_tokens=40,
        return_token_ids=True,
        raw_output=True,
        perf_metrics_in_response=True,
    )
    calls = [
        tc for e in events[:-1] for c in e["choices"] for tc in c["delta"].get("tool_calls") or []
    ]
    assert calls[0]["function"]["name"] == "get_time"
    json.loads(calls[0]["function"]["arguments"])
    assert "prompt_token_ids" in events[0]
    last = next(c for e in events[:-1] for c in e["choices"] if c["finish_reason"])
    assert last["finish_reason"] == "tool_calls" and "raw_output" in last
    assert events[-2]["perf_metrics"]["time_to_first_token"] > 0


def test_client_that_disconnects_stops_its_generation(local_server: Any, http: Any) -> None:
    body = {"model": MODEL, "messages": STORY, "stream": True, "ignore_eos": True}
    with post_raw(local_server.url, {**body, "max_tokens": 4000}) as sock:
        got = b""
        while got.count(b"data: ") < 5:
            got += sock.recv(4096)
    # the 4000-token generation must not hold the model: the next request is answered now
    t0 = time.monotonic()
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": STORY, "max_tokens": 2})
    assert r.status_code == 200
    assert time.monotonic() - t0 < 5.0


def test_client_that_leaves_a_non_streaming_request_stops_it(local_server: Any, http: Any) -> None:
    # A notebook user interrupts a long request: the connection closes before any answer.
    body = {"model": MODEL, "messages": STORY, "ignore_eos": True, "max_tokens": 4000}
    with post_raw(local_server.url, body):
        time.sleep(1.0)  # generation is under way
    t0 = time.monotonic()
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": STORY, "max_tokens": 2})
    assert r.status_code == 200
    assert time.monotonic() - t0 < 5.0


_EARLIER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "London", "unit": "celsius"}'},
}
# an earlier call in the conversation shows the model how; it calls again on its own
AUTO_CALL = [
    {"role": "user", "content": "What is the weather in London?"},
    {"role": "assistant", "content": None, "tool_calls": [_EARLIER_CALL]},
    {"role": "user", "content": "What is the weather in Paris?"},
]


def reassemble(events: list[Any], index: int) -> dict[str, Any]:
    """What a client gets by concatenating one choice's chunks."""
    out: dict[str, Any] = {"content": "", "tool_calls": [], "logprobs": [], "token_ids": []}
    finish = []
    for e in events:
        if e == "[DONE]":
            continue
        for c in e["choices"]:
            if c["index"] != index:
                continue
            out["content"] += c["delta"].get("content") or ""
            for tc in c["delta"].get("tool_calls") or []:
                out["tool_calls"].append(tc["function"])
            if c.get("logprobs"):
                out["logprobs"] += c["logprobs"]["content"]
            out["token_ids"] += c.get("token_ids") or []
            if c["finish_reason"]:
                finish.append(c["finish_reason"])
    assert len(finish) == 1
    out["finish_reason"] = finish[0]
    return out


@pytest.mark.parametrize(
    "case",
    [
        {"messages": [{"role": "user", "content": "Reply with just the word yes."}]},
        {"stop": [" the"]},
        {"tools": [WEATHER], "tool_choice": "required"},
        {"messages": AUTO_CALL, "tools": [WEATHER]},
        {"messages": AUTO_CALL, "tools": [WEATHER], "max_tokens": 8},  # a call cut short
        {"response_format": {"type": "json_object"}},
        {"n": 2, "temperature": 0.9, "seed": 5},
    ],
    ids=["eos", "stop", "forced_tool", "auto_tool", "auto_tool_cut", "json_object", "n2_seed"],
)
def test_a_reassembled_stream_equals_the_response(http: Any, case: dict[str, Any]) -> None:
    body = {
        "model": MODEL,
        "messages": STORY,
        "temperature": 0,
        "max_tokens": 48,
        "logprobs": True,
        "top_logprobs": 2,
        "return_token_ids": True,
        **case,
    }
    full = http.post("/v1/chat/completions", json=body).json()
    events = stream(http, **{**body, "stream_options": {"include_usage": True}})
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == full["usage"]["completion_tokens"]
    total = 0
    for choice in full["choices"]:
        got = reassemble(events, choice["index"])
        msg = choice["message"]
        assert got["content"] == (msg["content"] or "")
        assert got["tool_calls"] == [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in msg.get("tool_calls") or []
        ]
        assert got["finish_reason"] == choice["finish_reason"]
        assert got["token_ids"] == choice["token_ids"]
        assert got["logprobs"] == choice["logprobs"]["content"]
        # every generated token, end-of-generation included, has its logprobs entry
        assert [e["token_id"] for e in got["logprobs"]] == choice["token_ids"]
        total += len(choice["token_ids"])
    assert usage["completion_tokens"] == total
    plain = case.get("stop") is None and case.get("n") is None and "tools" not in case
    if plain and full["choices"][0]["finish_reason"] == "stop":
        last = full["choices"][0]["logprobs"]["content"][-1]
        assert last["token"] == "<|im_end|>" and bytes(last["bytes"]) == b"<|im_end|>"
        assert len(last["top_logprobs"]) == 2 and last["logprob"] <= 0


def test_the_case_list_covers_what_it_says(http: Any) -> None:
    """The cases above end as their names say (else the comparison proves less)."""

    def finish(**case: Any) -> tuple[str, str | None]:
        body = {"model": MODEL, "messages": STORY, "temperature": 0, "max_tokens": 48, **case}
        c = http.post("/v1/chat/completions", json=body).json()["choices"][0]
        return c["finish_reason"], c["message"]["content"]

    assert finish(messages=[{"role": "user", "content": "Reply with just the word yes."}])[0] == (
        "stop"
    )
    assert finish(messages=AUTO_CALL, tools=[WEATHER])[0] == "tool_calls"
    reason, text = finish(messages=AUTO_CALL, tools=[WEATHER], max_tokens=8)
    assert reason == "length" and text is not None and "<tool_call>" in text

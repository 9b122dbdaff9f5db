"""End to end: every bad request gets the error envelope and the right status, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
MSGS = [{"role": "user", "content": "Hi"}]


def assert_envelope(r: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"messages": MSGS}, 400, "model"),
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
            400,
            "messages[0].content",
        ),
        ({"model": MODEL, "messages": MSGS, "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL, "messages": MSGS, "temperature": 3}, 400, "temperature"),
        (
            {"model": MODEL, "messages": MSGS, "top_logprobs": 21, "logprobs": True},
            400,
            "top_logprobs",
        ),
        ({"model": MODEL, "messages": MSGS, "top_logprobs": 3}, 400, "top_logprobs"),
        ({"model": MODEL, "messages": MSGS, "temperature": 0, "n": 2}, 400, "n"),
        (
            {"model": MODEL, "messages": MSGS, "max_tokens": 5, "max_completion_tokens": 5},
            400,
            "max_completion_tokens",
        ),
        ({"model": MODEL, "messages": MSGS, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "messages": MSGS, "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
        (
            {"model": MODEL, "messages": MSGS, "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
        (
            {"model": MODEL, "messages": MSGS, "response_format": {"type": "xml"}},
            400,
            "response_format",
        ),
        ({"model": MODEL, "messages": MSGS, "tool_choice": "required"}, 400, "tool_choice"),
        ({"model": MODEL, "messages": MSGS, "stream": "yes"}, 400, "stream"),
        ({"model": "gpt-4o", "messages": MSGS}, 404, "model"),
    ],
)
def test_bad_bodies_get_the_envelope(http: Any, body: Any, status: int, param: str) -> None:
    for stream in (False, True):
        b = dict(body)
        if stream and "stream" not in b:
            b["stream"] = True
            if "stream_options" in b:
                continue
        assert_envelope(http.post("/v1/chat/completions", json=b), status, param)


def test_unknown_model_lists_the_served_models(http: Any) -> None:
    err = assert_envelope(
        http.post("/v1/chat/completions", json={"model": "nope", "messages": MSGS}), 404
    )
    assert MODEL in err["message"] and err["code"] == "model_not_found"


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b"null", b"\xff\xfe", b'"text"'])
def test_malformed_json(http: Any, raw: bytes) -> None:
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_envelope(r, 400)


def test_unknown_route_and_method(http: Any) -> None:
    assert_envelope(http.get("/v1/nothing"), 404)
    assert_envelope(http.get("/v1/chat/completions"), 405)


def test_tokenize_and_detokenize(http: Any) -> None:
    toks = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert toks["count"] == len(toks["tokens"]) > 0
    assert http.post("/detokenize", json={"tokens": toks["tokens"]}).json()["prompt"] == (
        "Hello world"
    )
    chat = http.post("/tokenize", json={"messages": MSGS}).json()
    assert chat["count"] > toks["count"]
    assert_envelope(http.post("/detokenize", json={"tokens": ["a"]}), 400, "tokens")
    assert_envelope(http.post("/detokenize", json={"tokens": [-1]}), 400, "tokens")
    assert_envelope(http.post("/tokenize", json={"prompt": 3}), 400, "prompt")


def test_models_health_version(http: Any) -> None:
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert http.get("/health").status_code == 200
    version = http.get("/version").json()
    assert version["model"] == MODEL and version["version"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
param_names = st.sampled_from(
    [
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "n",
        "stop",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "response_format",
        "tools",
        "tool_choice",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "echo",
        "reasoning_effort",
        "prompt_truncate_len",
        "context_length_exceeded_behavior",
        "mirostat_target",
        "messages",
        "model",
        "functions",
        "function_call",
        "thinking",
        "repetition_penalty",
        "echo_last",
        "ignore_eos",
        "raw_output",
        "speculation",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(param_names, json_values, max_size=4),
    drop=st.sampled_from([None, "model", "messages"]),
)
def test_fuzzed_bodies_never_500(http: Any, extra: dict[str, Any], drop: str | None) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": MSGS, "max_tokens": 1, **extra}
    if "max_completion_tokens" in extra:
        body.pop("max_tokens", None)
    if body.get("reasoning_effort") in ("low", "medium", "high") or "thinking" in body:
        body["reasoning_effort"] = "none"
        body.pop("thinking", None)
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool):
        body["n"] = min(body["n"], 2)
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body and isinstance(body[key], int | float) and not isinstance(body[key], bool):
            body[key] = min(body[key], 2)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = 1  # an explicit null would mean: up to the whole context
    if drop:
        body.pop(drop, None)
    r = http.post(
        "/v1/chat/completions",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert_envelope(r, r.status_code)
    elif body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["object"] == "chat.completion"

"""End to end: the embedded server continues a final assistant message.

``continue_final_message`` (vLLM's name and meaning), ``add_generation_prompt``, and the
embedded server's ``continue_token_ids`` (the prefix as exact token ids). Logprobs, token ids,
usage and streams cover only the new tokens; ``prompt_token_ids`` include the prefix.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from _e2e import MODEL

pytestmark = pytest.mark.slow

COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
PREFIX = "1, 2, 3, 4,"


def post(http: Any, **body: Any) -> Any:
    return http.post("/v1/chat/completions", json={"model": MODEL, **body})


def ok(http: Any, **body: Any) -> dict[str, Any]:
    r = post(http, **body)
    assert r.status_code == 200, r.text
    return r.json()


def tokenize(http: Any, text: str) -> list[int]:
    r = http.post("/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def header_ids(http: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt of a fresh turn: everything a continuation's prompt starts with."""
    body = ok(http, messages=messages, max_tokens=1, return_token_ids=True)
    return body["prompt_token_ids"]


def test_the_final_assistant_message_is_continued_not_closed(http: Any) -> None:
    body = ok(
        http,
        messages=[*COUNT, {"role": "assistant", "content": PREFIX}],
        continue_final_message=True,
        add_generation_prompt=False,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
        return_token_ids=True,
    )
    fresh = header_ids(http, COUNT)
    prompt = body["prompt_token_ids"]
    # the prompt is the open assistant turn followed by the prefix: no end-of-turn after it
    assert prompt[: len(fresh)] == fresh
    assert prompt == tokenize(http, json_text(http, COUNT) + PREFIX)
    choice = body["choices"][0]
    text = choice["message"]["content"]
    assert text.startswith(" 5"), text  # it goes on counting
    assert not text.startswith(PREFIX)
    # the new tokens only, in the token ids, logprobs and usage
    ids = choice["token_ids"]
    assert [e["token_id"] for e in choice["logprobs"]["content"]] == ids
    assert body["usage"]["completion_tokens"] == len(ids)
    assert body["usage"]["prompt_tokens"] == len(prompt)


def json_text(http: Any, messages: list[dict[str, Any]]) -> str:
    """The templated prompt of a fresh turn, as the server renders it (raw_output)."""
    body = ok(http, messages=messages, max_tokens=1, raw_output=True)
    return body["choices"][0]["raw_output"]["prompt_fragments"][0]


def test_token_ids_are_used_verbatim_where_retokenising_would_merge_them(http: Any) -> None:
    hel, lo = tokenize(http, "Hel"), tokenize(http, "lo")
    whole = tokenize(http, "Hello")
    assert len(hel) == len(lo) == len(whole) == 1 and whole != hel + lo  # "Hello" merges
    messages = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello"},
    ]
    fresh = header_ids(http, messages[:1])
    exact = ok(
        http,
        messages=messages,
        continue_final_message=True,
        continue_token_ids=hel + lo,
        max_tokens=1,
        return_token_ids=True,
    )
    assert exact["prompt_token_ids"] == fresh + hel + lo
    as_text = ok(
        http,
        messages=messages,
        continue_final_message=True,
        max_tokens=1,
        return_token_ids=True,
    )
    assert as_text["prompt_token_ids"] == fresh + whole  # the text re-tokenised: merged


def test_continuing_an_answer_from_its_own_tokens_reproduces_its_next_token(http: Any) -> None:
    base = {"messages": COUNT, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    first = ok(http, max_tokens=12, return_token_ids=True, **base)
    ids = first["choices"][0]["token_ids"]
    entries = first["choices"][0]["logprobs"]["content"]
    k = 5
    prefix_text = "".join(bytes(e["bytes"]).decode() for e in entries[:k])
    cont = ok(
        http,
        messages=[*COUNT, {"role": "assistant", "content": prefix_text}],
        continue_final_message=True,
        continue_token_ids=ids[:k],
        max_tokens=1,
        return_token_ids=True,
        **{k_: v for k_, v in base.items() if k_ != "messages"},
    )
    assert cont["prompt_token_ids"] == first["prompt_token_ids"] + ids[:k]
    new = cont["choices"][0]["logprobs"]["content"][0]
    # the same context, evaluated in one batch instead of token by token: the same
    # distribution up to the rounding of the quantised kernels
    assert new["token_id"] == ids[k]
    assert math.isclose(new["logprob"], entries[k]["logprob"], abs_tol=0.02)
    assert [t["token_id"] for t in new["top_logprobs"]] == [
        t["token_id"] for t in entries[k]["top_logprobs"]
    ]


def test_a_streamed_continuation_carries_only_the_new_tokens(http: Any) -> None:
    body = {
        "model": MODEL,
        "messages": [*COUNT, {"role": "assistant", "content": PREFIX}],
        "continue_final_message": True,
        "temperature": 0,
        "max_tokens": 6,
        "logprobs": True,
        "return_token_ids": True,
    }
    whole = ok(http, **{k: v for k, v in body.items() if k != "model"})
    events = []
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert events[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    deltas = [c["delta"].get("content") or "" for e in events for c in e["choices"]]
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    assert PREFIX not in "".join(deltas)
    streamed_ids = [t for e in events for c in e["choices"] for t in c.get("token_ids") or []]
    assert streamed_ids == whole["choices"][0]["token_ids"]
    lps = [
        x
        for e in events
        for c in e["choices"]
        for x in (c.get("logprobs") or {}).get("content") or []
    ]
    assert len(lps) == len(streamed_ids)
    assert events[-1]["usage"] == whole["usage"]


def test_without_the_generation_prompt_the_prompt_ends_after_the_last_message(http: Any) -> None:
    with_header = ok(http, messages=COUNT, max_tokens=1, return_token_ids=True)
    without = ok(
        http, messages=COUNT, add_generation_prompt=False, max_tokens=1, return_token_ids=True
    )
    header = tokenize(http, "<|im_start|>assistant\n")
    assert with_header["prompt_token_ids"] == without["prompt_token_ids"] + header


ASSISTANT = [*COUNT, {"role": "assistant", "content": PREFIX}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"messages": ASSISTANT, "continue_final_message": True, "add_generation_prompt": True},
            "continue_final_message",
            "add_generation_prompt",
        ),
        (
            {"messages": ASSISTANT, "continue_token_ids": [16]},
            "continue_token_ids",
            "needs continue_final_message",
        ),
        ({"messages": COUNT, "continue_final_message": True}, "continue_final_message", "'user'"),
        (
            {"messages": ASSISTANT, "continue_final_message": True, "continue_token_ids": [16]},
            "continue_token_ids",
            "spell",
        ),
        (
            {"messages": ASSISTANT, "continue_final_message": True, "continue_token_ids": [10**7]},
            "continue_token_ids",
            "vocabulary",
        ),
        (
            {"messages": ASSISTANT, "continue_final_message": True, "continue_token_ids": []},
            "continue_token_ids",
            "non-empty",
        ),
        (
            {"messages": ASSISTANT, "continue_final_message": True, "reasoning_effort": "low"},
            "continue_final_message",
            "reasoning",
        ),
        (
            {
                "messages": ASSISTANT,
                "continue_final_message": True,
                "response_format": {"type": "json_object"},
            },
            "continue_final_message",
            "response_format",
        ),
    ],
)
def test_bad_combinations_are_400s_naming_the_field(
    http: Any, body: dict[str, Any], param: str, words: str
) -> None:
    r = post(http, max_tokens=1, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert words in error["message"]

"""The official openai SDK, an independent client, parses the server's answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _e2e import MODEL

pytestmark = pytest.mark.slow

MSGS: Any = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def oai(local_server: Any) -> Any:
    import openai

    with openai.OpenAI(base_url=local_server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_sdk_non_streaming_with_logprobs(oai: Any) -> None:
    res = oai.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=8, temperature=0, logprobs=True, top_logprobs=4
    )
    choice = res.choices[0]
    assert res.object == "chat.completion" and res.model == MODEL
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert res.usage is not None and res.usage.completion_tokens == len(choice.logprobs.content)
    for item in choice.logprobs.content:
        assert len(item.top_logprobs) == 4
        assert item.bytes is not None and bytes(item.bytes).decode("utf-8", "replace") == (
            item.token
        )


def test_sdk_streaming(oai: Any) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=8,
        temperature=0,
        stream=True,
        logprobs=True,
        top_logprobs=2,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_sdk_tool_call(oai: Any) -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
    res = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=[tool],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    call = res.choices[0].message.tool_calls[0]
    assert res.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "add"
    assert set(json.loads(call.function.arguments)) == {"a", "b"}


def test_sdk_errors_and_models(oai: Any) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="nope", messages=MSGS)
    assert MODEL in str(info.value)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=MSGS, temperature=0, n=2)
    assert [m.id for m in oai.models.list()] == [MODEL]

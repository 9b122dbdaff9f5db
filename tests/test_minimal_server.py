"""``tmlab serve --minimal``: the embedded server as a server without the optional capabilities
(no logprobs, no echo, no continuation of a final assistant message, ``n`` = 1 only), the third
target the notebooks run against."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tmlab.local
from tmlab._meta import MODEL_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minimal() -> Iterator[httpx.Client]:
    with (
        tmlab.local.start(quiet=True, minimal=True, n_ctx=2048) as server,
        httpx.Client(base_url=server.base_url, timeout=120) as http,
    ):
        yield http


def _ask(http: httpx.Client, messages: list[dict[str, Any]], **params: Any) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 4, "temperature": 0}
    return http.post("/chat/completions", json={**body, **params})


def test_logprobs_and_echo_are_ignored_not_refused(minimal: httpx.Client) -> None:
    user = [{"role": "user", "content": "Count: 1, 2, 3,"}]
    r = _ask(minimal, user, logprobs=True, top_logprobs=5, echo=True)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] and choice.get("logprobs") is None


def test_n_above_one_is_a_400_naming_n(minimal: httpx.Client) -> None:
    r = _ask(minimal, [{"role": "user", "content": "Hi"}], n=2, temperature=1)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "n"


def test_a_final_assistant_message_starts_a_new_turn(minimal: httpx.Client) -> None:
    msgs = [
        {"role": "user", "content": "Count to ten."},
        {"role": "assistant", "content": "1, 2, 3, 4,"},
    ]
    flags = {"continue_final_message": True, "add_generation_prompt": False}
    plain = _ask(minimal, msgs).json()
    asked = _ask(minimal, msgs, **flags).json()
    # the flags change nothing: both answers are a new assistant turn after the prefix
    assert asked["choices"][0]["message"] == plain["choices"][0]["message"]
    assert asked["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]

"""``tmlab serve --minimal``: the embedded server as a server without the optional capabilities
(no logprobs, no echo, no continuation of a final assistant message, ``n`` = 1 only), the third
target the notebooks run against."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tmlab.local
from tmlab.meta import MODEL_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minimal_url() -> Iterator[str]:
    with tmlab.local.start(quiet=True, minimal=True, n_ctx=2048) as server:
        yield server.base_url


@pytest.fixture
def minimal(minimal_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=minimal_url, timeout=120) as http:
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


def test_a_lesson_that_needs_logprobs_switches_to_the_local_model_and_says_so(
    minimal_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tmlab.client.settings import session

    monkeypatch.setenv("TENSORMESH_SERVERLESS_BASE_URL", minimal_url)
    monkeypatch.delenv("TENSORMESH_INFERENCE_API_KEY", raising=False)
    with tmlab.Client() as client:
        table = tmlab.probe(client, quiet=True)
    verdicts = dict(zip(table["capability"], table["verdict"], strict=True))
    assert not verdicts["logprobs"].startswith("supported")
    assert not verdicts["continuation of a final assistant message"].startswith("continues")
    assert verdicts["n > 1"] != "supported"
    assert tmlab.needs("n") is False  # n = 1 only here
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "lacks n" in line and minimal_url in line
    assert session.local
    with tmlab.Client() as local:  # the session now talks to the embedded model
        assert local.chat("Hi", max_tokens=2, logprobs=True).choices[0].logprobs
    assert tmlab.needs("logprobs", "continuation") is True  # the local model has both
    with pytest.raises(tmlab.ParameterError):
        tmlab.needs("telepathy")


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_asked_and_not_returned_say_so(minimal_url: str, stream: bool) -> None:
    """An answer without the logprobs it asked for says so everywhere its numbers show: the
    result's notes, the frame's notes, the usage line; never an empty table alone."""
    from tmlab.display import usage_line
    from tmlab.result import NO_LOGPROBS_NOTE

    with tmlab.Client(base_url=minimal_url, timeout=120) as c:
        res = c.chat("Say hi", max_tokens=4, logprobs=True, top_logprobs=3, stream=stream)
        plain = c.chat("Say hi", max_tokens=4, stream=stream)
    assert res.text and res.logprobs_missing and res.notes == [NO_LOGPROBS_NOTE]
    df = res.logprobs_frame()
    assert df.empty and NO_LOGPROBS_NOTE in df.attrs["notes"]
    assert "no logprobs came back" in usage_line(res)
    assert res.sequence_logprob is None
    # not asked, nothing to say
    assert not plain.logprobs_missing and not plain.notes
    assert "logprobs" not in usage_line(plain)


def test_a_client_of_a_server_started_here_is_embedded_unless_minimal(
    local_server: Any, minimal_url: str
) -> None:
    # local.start() in this process: the embedded model with every capability
    assert tmlab.Client(base_url=local_server.base_url).embedded
    # the same model serving as a server without the optional capabilities is not
    assert not tmlab.Client(base_url=minimal_url).embedded

"""No runaway answers by default: the session's default ``max_tokens`` and loop detection.

The front ends (``%%tmchat``, the Explorer, sweeps, branches) send the session's default
length limit when a request gives none; ``Client.chat`` sends only what it is given. What
reached the server is read back from the history row (or the mock server's request). A
repetition loop at the end of an answer is named on the usage line.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _e2e import dead_url
from _fake_server import completion
from IPython.core.interactiveshell import InteractiveShell
from test_magics import last_row, markdown_shown, run

import tmlab
from tmlab.client.settings import DEFAULT_MAX_TOKENS, ENV_MAX_TOKENS, session, session_limit
from tmlab.display import usage_line
from tmlab.errors import ParameterError
from tmlab.history import history
from tmlab.jupyter.explorer import CHANGE_LIMIT as EXPLORER_CHANGE
from tmlab.jupyter.explorer import Explorer
from tmlab.jupyter.magic_branches import CHANGE_LIMIT as MAGIC_CHANGE
from tmlab.local import LocalServer
from tmlab.params import NOT_GIVEN
from tmlab.repetition import find_loop, text_units
from tmlab.result import ChatResult, SessionLimit

STORY = "Tell me a long story about a dragon."


@pytest.fixture
def history_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "history.sqlite3"
    monkeypatch.setenv("TMLAB_HISTORY", str(path))
    monkeypatch.delenv(ENV_MAX_TOKENS, raising=False)
    return path


class Recorder:
    """A scripted server that answers every chat with ``finish_reason`` and keeps the bodies."""

    def __init__(self, finish: str = "stop", completion_tokens: int = 3) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.finish = finish
        self.tokens = completion_tokens

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "test-model"}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        data = completion("Once upon a time")
        data["choices"][0]["finish_reason"] = self.finish
        data["usage"] = {
            "prompt_tokens": 5,
            "completion_tokens": self.tokens,
            "total_tokens": 5 + self.tokens,
        }
        return httpx.Response(200, json=data)

    def client(self, cls: type[Any] = tmlab.Client) -> Any:
        return cls(
            base_url="http://tm.test/v1", model="test-model", transport=httpx.MockTransport(self)
        )


# -- the setting ------------------------------------------------------------------------------


def test_the_setting_resolves_tmconfig_then_environment_then_default() -> None:
    assert session.max_tokens_default(environ={}) == DEFAULT_MAX_TOKENS == 512
    assert session.max_tokens_default(environ={ENV_MAX_TOKENS: "300"}) == 300
    assert session.max_tokens_default(environ={ENV_MAX_TOKENS: "off"}) is None
    session.update(max_tokens=64)
    assert session.max_tokens_default(environ={ENV_MAX_TOKENS: "300"}) == 64
    assert "64 (from %tmconfig)" in session.describe(environ={})["max_tokens"]
    session.update(max_tokens="none")
    assert session.max_tokens_default(environ={ENV_MAX_TOKENS: "300"}) is None
    assert session.describe(environ={})["max_tokens"].startswith("off")
    session.update(max_tokens=None)  # cleared: the environment again
    assert session.max_tokens_default(environ={ENV_MAX_TOKENS: "300"}) == 300
    for bad in (0, -3, "lots", True, 1.5):
        with pytest.raises(ParameterError, match="max_tokens"):
            session.update(max_tokens=bad)


def test_a_length_limit_given_in_any_form_wins_over_the_default() -> None:
    assert session_limit({}, environ={}) == 512
    assert session_limit({"temperature": 1.0}, environ={}) == 512
    assert session_limit({"max_tokens": 7}, environ={}) is None
    assert session_limit({"max_completion_tokens": 7}, environ={}) is None
    assert session_limit({"max_tokens": None}, environ={}) is None  # an explicit null
    assert session_limit({"extra_body": {"max_tokens": 7}}, environ={}) is None
    assert session_limit({"max_tokens": NOT_GIVEN}, environ={}) == 512


# -- plain code sends only what it is given --------------------------------------------------


def test_client_chat_sends_no_default_and_the_history_has_what_was_sent(history_db: Path) -> None:
    server = Recorder()
    with server.client() as client:
        res = client.chat(STORY)
        assert "max_tokens" not in server.bodies[-1]
        assert res.session_limit is None
        client.chat(STORY, max_tokens=40)
        assert server.bodies[-1]["max_tokens"] == 40
    rows = history().to_dict("records")
    assert "max_tokens" not in rows[0]["params"]
    assert rows[1]["params"]["max_tokens"] == 40


def test_a_sweep_sends_the_default_unless_a_limit_is_given(history_db: Path) -> None:
    server = Recorder()
    df = tmlab.sweep(
        STORY,
        grid={"temperature": [0.5, 1.0]},
        client=server.client(tmlab.AsyncClient),
        progress=False,
    )
    assert [b["max_tokens"] for b in server.bodies] == [512, 512]
    assert df.attrs["session_limit"] == 512 and df.attrs["fixed"]["max_tokens"] == 512
    assert "session's default" in df.attrs["notes"]
    assert [r["max_tokens"] for r in history()["params"]] == [512, 512]
    server.bodies.clear()
    df = tmlab.sweep(
        STORY,
        grid={"max_tokens": [3, 9]},
        client=server.client(tmlab.AsyncClient),
        progress=False,
    )
    assert sorted(b["max_tokens"] for b in server.bodies) == [3, 9]
    assert df.attrs["session_limit"] is None
    session.update(max_tokens="off")
    server.bodies.clear()
    tmlab.sweep(STORY, client=server.client(tmlab.AsyncClient), progress=False)
    assert "max_tokens" not in server.bodies[-1]


# -- the usage line ----------------------------------------------------------------------------


def _result(
    finish: str, max_tokens: int | None, completion_tokens: int, text: str = "Once upon a time"
) -> ChatResult:
    request: dict[str, Any] = {"model": "m", "messages": []}
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    raw = {
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens},
    }
    return ChatResult(raw, request=request)


def test_the_usage_line_names_the_session_limit_where_the_answer_stopped() -> None:
    res = _result("length", 512, 512)
    res.session_limit = SessionLimit(512, MAGIC_CHANGE)
    line = usage_line(res)
    assert (
        "finish: length (stopped at the session's 512-token limit; "
        "`--max-tokens N` or `%tmconfig max_tokens=N|off` to change)" in line
    )
    # an answer that ended by itself says which limit was in force, not that it stopped there
    done = _result("stop", 512, 40)
    done.session_limit = SessionLimit(512, MAGIC_CHANGE)
    assert "finish: stop" in usage_line(done)
    assert "max_tokens 512 (session default)" in usage_line(done)
    assert "stopped at" not in usage_line(done)
    # "length" before the limit: the context was full, not the session's limit
    full = _result("length", 512, 100)
    full.session_limit = SessionLimit(512, MAGIC_CHANGE)
    assert "stopped at" not in usage_line(full)
    # a limit the user gave: the wording as before
    own = _result("length", 512, 512)
    assert "· finish: length" in usage_line(own) and "session" not in usage_line(own)


# -- the loop detector -------------------------------------------------------------------------

# Real-looking text that repeats without looping: none of them is named as a loop.
NOT_LOOPS = {
    "numbered list": ", ".join(str(i) for i in range(1, 300)),
    "numbered lines": "\n".join(f"{i}. Item number {i}: buy more milk." for i in range(1, 120)),
    "poem with a refrain": (
        (
            "The sea is calling, calling me home,\n"
            "Over the waves where the white birds roam.\n"
            "Row, row, row to the shore,\n"
            "The sea is calling, calling me home.\n\n"
        )
        * 4
        + "Row, row, row, row, row to the shore,\nRow, row, row to the shore."
    ),
    "code with repeated lines": (
        "def banner():\n"
        + '    print("=" * 40)\n' * 3
        + '    print("Welcome")\n'
        + '    print("=" * 40)\n' * 3
        + "    return None\n\nbanner()\n"
        + "board = [\n"
        + "    [0, 0, 0, 0],\n" * 4
        + "]\n"
    ),
    "laughter": "That is so funny! " + "ha " * 20 + "I cannot stop laughing.",
    "a table": "| n | n² |\n|---|---|\n" + "".join(f"| {i} | {i * i} |\n" for i in range(80)),
    "a short repeated chorus": "Verse.\n" + "Oh my darling, oh my darling Clementine.\n" * 5,
}

LOOPS = {
    "one word": ("The wind is strong and" + " unrelenting," * 120, 120, " unrelenting,"),
    "a sentence": (
        "Once upon a time, " + "the cat sat on the mat and looked at the moon. " * 12,
        12,
        "the cat sat",
    ),
    "a line": ("Here is the list:\n" + "- The best way to learn is to practice.\n" * 20, 20, "-"),
    "a paragraph": (
        "Story:\n\n"
        + (
            "Tom went to the market to buy some apples. He saw a dog and a cat playing "
            "together in the street. The sun was shining and everyone was happy. "
        )
        * 5,
        4,  # the first copy starts the text ("Tom" has no space before it): 4 whole ones
        "went to the market",
    ),
}


@pytest.mark.parametrize("name", sorted(NOT_LOOPS))
def test_repetition_in_normal_text_is_not_a_loop(name: str) -> None:
    text = NOT_LOOPS[name]
    assert find_loop(text_units(text), units="words") is None
    # as tokens too (a crude tokenizer: words split at punctuation)
    assert find_loop(_crude_tokens(text)) is None


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_a_loop_is_named_with_its_unit_and_count(name: str) -> None:
    text, repeats, unit = LOOPS[name]
    loop = find_loop(text_units(text), units="words")
    assert loop is not None and loop.repeats >= repeats and unit in loop.text
    assert loop.describe().startswith(f"the last {loop.span} words repeat ")
    assert f"{loop.repeats} times" in loop.describe()
    assert find_loop(_crude_tokens(text)) is not None


def _crude_tokens(text: str) -> list[str]:
    import re

    # like a generation cut by its limit: no whitespace of a next copy at the very end
    return re.findall(r"\s?\w+|\s?[^\w\s]|\s+", text.rstrip())


def test_a_loop_cut_mid_unit_by_the_limit_is_still_found() -> None:
    tokens = ["The", " wind", " is"] + [" unrel", "enting", ","] * 80 + [" unrel"]
    loop = find_loop(tokens)
    assert loop is not None
    assert loop.unit == (" unrel", "enting", ",") and loop.repeats == 80
    assert loop.span == 241
    assert loop.describe() == "the last 241 tokens repeat ' unrelenting,' 80 times"
    assert find_loop(tokens[:40]) is None  # 13 copies of 3 tokens: 39 < 64 tokens


def test_the_usage_line_names_a_loop() -> None:
    res = _result("length", 600, 600, text="The wind was" + " unrelenting," * 120)
    line = usage_line(res)
    assert "finish: length" in line
    assert "looping: the last 120 words repeat ' unrelenting,' 120 times" in line
    assert res.loop is not None and res.loop.repeats == 120
    assert "looping" not in usage_line(_result("stop", None, 20, text=NOT_LOOPS["a table"]))


# -- the Explorer --------------------------------------------------------------------------


@pytest.fixture
def made() -> Iterator[list[Explorer]]:
    explorers: list[Explorer] = []
    yield explorers
    for ex in explorers:
        ex.stop()
        assert ex.wait(timeout=60)
        ex.close()


def test_the_explorer_sends_the_default_shows_it_and_an_explicit_one_wins(
    history_db: Path, made: list[Explorer]
) -> None:
    server = Recorder(finish="length", completion_tokens=512)
    ex = Explorer(server.client(), prompt=STORY, temperature=0.5)
    made.append(ex)
    call = html.unescape(ex.call_line.value)
    assert "max_tokens=512" in call and "max_tokens=512 is the session's default" in call
    assert "session default: 512" in ex.controls["max_tokens"].status.value
    assert ex.params() == {"temperature": 0.5}  # what the controls set
    assert ex.run() and ex.wait(30)
    assert server.bodies[-1]["max_tokens"] == 512
    res = ex.result
    assert res is not None and res.session_limit == SessionLimit(512, EXPLORER_CHANGE)
    shown = html.unescape(ex.answer.value)
    assert "stopped at the session's 512-token limit; set max_tokens here" in shown
    assert history(source="explorer")["params"].iloc[-1]["max_tokens"] == 512
    # an explicit max_tokens wins, and keeps the old wording
    ex.controls["max_tokens"].value = 512
    assert ex.run() and ex.wait(30)
    assert ex.result is not None and ex.result.session_limit is None
    assert "finish: length" in ex.answer.value and "session" not in ex.answer.value
    # %tmconfig max_tokens=off: nothing is added
    ex.controls["max_tokens"].reset()
    session.update(max_tokens="off")
    assert ex.run() and ex.wait(30)
    assert "max_tokens" not in server.bodies[-1]
    assert "max_tokens" not in ex.call_line.value


# -- against the embedded model: the magic, a branch, the Explorer's branches ----------------


@pytest.mark.slow
def test_the_magic_stops_at_the_session_limit_and_says_so(ip: InteractiveShell) -> None:
    run(ip, "%tmconfig max_tokens=5")
    result, cap = run(ip, f"%%tmchat --temperature 0\n{STORY}")
    assert result.success, cap.stdout
    res = result.result
    row = last_row()
    assert row["params"]["max_tokens"] == 5  # what was sent, in the history
    assert res.finish_reason == "length" and res.usage.completion_tokens == 5
    shown = html.unescape(markdown_shown(cap)[0])
    assert "stopped at the session's 5-token limit; `--max-tokens N`" in shown
    # %tmconfig lists it
    frame, _ = run(ip, "%tmconfig")
    assert str(frame.result.loc["max_tokens", "value"]).startswith("5 (from %tmconfig)")
    # an explicit --max-tokens wins and keeps the old wording
    result, cap = run(ip, f"%%tmchat --temperature 0 --max-tokens 3\n{STORY}")
    assert last_row()["params"]["max_tokens"] == 3
    (shown,) = markdown_shown(cap)
    assert "finish: length" in shown and "session" not in shown


def test_tmconfig_off_sends_no_limit(ip: InteractiveShell) -> None:
    run(ip, f"%tmconfig base_url={dead_url()} max_tokens=off")
    result, _ = run(ip, f"%%tmchat --model m\n{STORY}")  # no server: fails at once
    assert not result.success
    assert "max_tokens" not in last_row()["params"]
    run(ip, "%tmconfig max_tokens=")  # back to the default
    run(ip, f"%%tmchat --model m\n{STORY}")
    assert last_row()["params"]["max_tokens"] == 512
    result, _ = run(ip, "%tmconfig max_tokens=lots")
    assert not result.success


@pytest.mark.slow
def test_a_branch_of_an_unlimited_answer_gets_the_default(
    ip: InteractiveShell, local_server: LocalServer
) -> None:
    with tmlab.Client(base_url=local_server.base_url) as client:
        parent = client.chat(STORY, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    assert parent.session_limit is None  # plain code: no default
    del parent.request["max_tokens"]  # as if asked without a limit (it would run for long)
    session.update(max_tokens=4)
    b = parent.branch(2)
    assert b.request["max_tokens"] == 4 and b.finish_reason == "length"
    assert b.session_limit is not None and b.session_limit.tokens == 4
    assert "stopped at the session's 4-token limit; pass max_tokens=N" in usage_line(b)
    assert history()["params"].iloc[-1]["max_tokens"] == 4
    # an explicit limit wins
    b = parent.branch(2, max_tokens=2)
    assert b.request["max_tokens"] == 2 and b.session_limit is None
    # through the magic: %tmchat --branch names the magic's flag
    result, cap = run(ip, f"%tmchat --branch {parent.history_id}:2")
    assert result.success, cap.stdout
    assert last_row()["params"]["max_tokens"] == 4
    shown = html.unescape(markdown_shown(cap)[0])
    assert "stopped at the session's 4-token limit; `--max-tokens N`" in shown


@pytest.mark.slow
def test_the_explorer_branch_keeps_the_session_budget(
    history_db: Path, local_server: LocalServer, made: list[Explorer]
) -> None:
    session.update(max_tokens=8)
    client = tmlab.Client(base_url=local_server.base_url, timeout=300)
    ex = Explorer(client, prompt=STORY, temperature=0.0, logprobs=True, top_logprobs=3)
    made.append(ex)
    assert ex.run() and ex.wait(120)
    root = ex.result
    assert root is not None and root.request["max_tokens"] == 8
    assert root.finish_reason == "length"
    assert "stopped at the session's 8-token limit" in html.unescape(ex.answer.value)
    entries = root.choices[0].logprobs or []
    alt = next(a for a in entries[2].top if a.token_id != entries[2].token_id)
    assert ex.branch(root, 2, alt.token) and ex.wait(120)
    b = ex.result
    assert b is not None and b.parent is not None
    assert b.request["max_tokens"] == 8 - 3  # the parent's budget for the whole answer
    assert b.session_limit == SessionLimit(8, EXPLORER_CHANGE)
    if b.finish_reason == "length":
        assert "stopped at the session's 8-token limit" in html.unescape(ex.answer.value)
    client.close()

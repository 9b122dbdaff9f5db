"""res.branch(): continue an answer from any token, on the embedded server and elsewhere.

End to end against the real embedded server (a real socket, the real model); a fake server
(a mock transport) for a server that does not continue a final assistant message, which the
embedded server cannot be made to be.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _fake_server import BASE, KEY, Script, completion

import tmlab
from tmlab import branching, capabilities
from tmlab.display import usage_line
from tmlab.errors import ContinuationError
from tmlab.history import SCHEMA_VERSION, forget_results, get_row
from tmlab.local import LocalServer

PROMPT = "Write one sentence about the sea."
ASK = {"temperature": 0.0, "max_tokens": 24, "logprobs": True, "top_logprobs": 5}


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[tmlab.Client]:
    with tmlab.Client(base_url=local_server.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(local_server: LocalServer) -> Iterator[Any]:
    with httpx.Client(base_url=local_server.url, timeout=60) as http:

        def tokenize(text: str) -> list[int]:
            r = http.post("/tokenize", json={"prompt": text})
            assert r.status_code == 200, r.text
            return list(r.json()["tokens"])

        yield tokenize


def _ids(res: tmlab.ChatResult) -> list[int]:
    return [int(e.token_id) for e in res.choices[0].logprobs or []]  # type: ignore[arg-type]


def _text(entries: list[Any]) -> str:
    return b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")


@pytest.mark.slow
def test_a_branch_continues_from_exactly_the_chosen_tokens(
    history_db: str, client: tmlab.Client, tokenizer: Any
) -> None:
    # a list: after a "\n" the alternative "\n" re-tokenises with it as one "\n\n" token
    parent = client.chat("List three colours, one per line.", return_token_ids=True, **ASK)
    entries = parent.choices[0].logprobs or []
    ids = _ids(parent)
    # a position and alternative where re-tokenising the text would merge tokens differently
    found = None
    for pos in range(1, len(entries) - 1):
        for alt in entries[pos].top:
            if alt.token_id == ids[pos]:
                continue
            exact = [*ids[:pos], alt.token_id]
            text = _text(entries[:pos]) + bytes(alt.bytes or []).decode("utf-8", "replace")
            if tokenizer(text) != exact:
                found = (pos, alt)
                break
        if found:
            break
    assert found is not None, "no position in this answer re-tokenises differently"
    pos, alt = found
    res = parent.branch(pos, alt.token_id, return_token_ids=True)
    # the prompt is the parent's, then its tokens up to pos, then the chosen token: verbatim
    assert res.prompt_token_ids == parent.prompt_token_ids + ids[:pos] + [alt.token_id]
    assert res.parent is not None and res.parent.exact
    assert res.parent.position == pos and res.parent.token_id == alt.token_id
    prefix = _text(entries[:pos]) + alt.token
    assert res.parent.prefix_text == prefix
    assert res.full_text == prefix + res.text
    # the new tokens only, in logprobs and usage
    assert res.usage.completion_tokens == len(res.choices[0].logprobs or [])
    assert res.usage.prompt_tokens == len(res.prompt_token_ids or [])
    # the history: the branch names its parent, the position and the token
    row = get_row(res.history_id)  # type: ignore[arg-type]
    assert row is not None
    assert row["parent_id"] == parent.history_id
    assert (row["branch_position"], row["branch_token"]) == (pos, alt.token)
    assert row["messages"][-1] == {"role": "assistant", "content": prefix}
    assert row["params"]["continue_final_message"] is True
    assert row["params"]["continue_token_ids"] == [*ids[:pos], alt.token_id]
    # the parent's settings, with the parent's length budget for the whole answer
    assert row["params"]["temperature"] == 0.0
    assert row["params"]["max_tokens"] == ASK["max_tokens"] - pos - 1
    # the prefix's probability by the parent's numbers
    expected = math.fsum(e.logprob for e in entries[:pos]) + alt.logprob
    assert res.parent.prefix_logprob == pytest.approx(expected)
    assert row["prefix_logprob"] == pytest.approx(expected)


@pytest.mark.slow
def test_the_default_token_is_the_most_likely_one_not_generated_and_streams(
    history_db: str, client: tmlab.Client
) -> None:
    parent = client.chat(PROMPT, **ASK)
    entries = parent.choices[0].logprobs or []
    pos = 2
    expected = next(a for a in entries[pos].top if a.token_id != entries[pos].token_id)
    seen: list[str] = []
    res = parent.branch(pos, stream=True, on_delta=lambda d: seen.append(d.text or ""))
    assert res.parent is not None and res.parent.token == expected.token
    assert "".join(seen) == res.text  # on_delta sees only the new text
    assert res.full_text.startswith(_text(entries[:pos]) + expected.token)
    # a branch of the branch: the prefix grows, the tree records both levels
    grand = res.branch(0, max_tokens=3)
    assert grand.parent is not None and grand.parent.parent_id == res.history_id
    assert grand.full_text.startswith(res.parent.prefix_text)
    assert grand.parent.prefix_token_ids is not None
    assert grand.parent.prefix_token_ids[: len(res.parent.prefix_token_ids or ())] == (
        res.parent.prefix_token_ids
    )
    assert grand.usage.completion_tokens is not None and grand.usage.completion_tokens <= 3


@pytest.mark.slow
def test_sequence_scores_are_over_the_generated_tokens(
    history_db: str, client: tmlab.Client
) -> None:
    res = client.chat(PROMPT, **ASK)
    values = [e.logprob for e in res.choices[0].logprobs or []]
    assert res.sequence_logprob == pytest.approx(math.fsum(values))
    assert res.mean_logprob == pytest.approx(math.fsum(values) / len(values))
    assert res.perplexity == pytest.approx(math.exp(-math.fsum(values) / len(values)))
    assert res.perplexity is not None and res.perplexity >= 1.0
    frame = res.usage_frame()
    assert frame.loc[0, "sequence_logprob"] == pytest.approx(res.sequence_logprob)
    assert frame.loc[0, "perplexity"] == pytest.approx(res.perplexity)
    assert "sequence logprob" in usage_line(res)
    row = get_row(res.history_id)  # type: ignore[arg-type]
    assert row is not None and row["sequence_logprob"] == pytest.approx(res.sequence_logprob)
    plain = client.chat(PROMPT, max_tokens=3)
    assert plain.sequence_logprob is None and plain.perplexity is None
    assert "sequence logprob" not in usage_line(plain)


@pytest.mark.slow
def test_bad_branches_are_refused_before_anything_is_sent(
    history_db: str, client: tmlab.Client
) -> None:
    res = client.chat(PROMPT, **ASK)
    before = len(tmlab.history())
    n = len(res.choices[0].logprobs or [])
    for args, param, words in [
        ((n,), "position", f"0..{n - 1}"),
        ((-1,), "position", "outside"),
        ((0, "no-such-token"), "token", "not among the alternatives"),
        ((0, 10**7), "token", "not among the alternatives"),
    ]:
        with pytest.raises(tmlab.ParameterError) as info:
            res.branch(*args)
        assert info.value.param == param and words in str(info.value)
    no_logprobs = client.chat(PROMPT, max_tokens=3)
    with pytest.raises(tmlab.ParameterError, match="logprobs"):
        no_logprobs.branch(0)
    assert len(tmlab.history()) == before + 1  # only the request without logprobs


# -- servers other than the embedded one ----------------------------------------------------


def _parent(script: Script) -> tuple[tmlab.Client, tmlab.ChatResult]:
    """A result with logprobs from a fake server, and the client that talks to it."""
    lp = {
        "content": [
            {
                "token": t,
                "logprob": -0.1,
                "bytes": list(t.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": -0.1, "bytes": list(t.encode())},
                    {"token": a, "logprob": -2.5, "bytes": list(a.encode())},
                ],
            }
            for t, a in [("The", "A"), (" sea", " ocean"), (" is", " was")]
        ]
    }
    body = completion("The sea is")
    body["choices"][0]["logprobs"] = lp
    script.replies.insert(0, httpx.Response(200, json=body))
    client = tmlab.Client(
        base_url=BASE, api_key=KEY, model="test-model", transport=script.transport()
    )
    return client, client.chat(PROMPT, logprobs=True, top_logprobs=2)


def _forget_checks() -> None:
    capabilities.forget()


def test_a_server_that_starts_a_new_turn_is_refused_once_and_nothing_is_a_branch(
    history_db: str,
) -> None:
    _forget_checks()
    # answers every request with a fresh turn, whatever continue_final_message says
    script = Script(httpx.Response(200, json=completion("Sure! Here is the list: 1, 2, 3")))
    client, parent = _parent(script)
    with client, pytest.raises(ContinuationError) as info:
        parent.branch(1, client=client)
    message = str(info.value)
    assert BASE in message and "does not continue a final assistant message" in message
    assert "Sure!" in message and "Nothing was sent as a branch" in message
    assert KEY not in message
    probe = script.bodies[1]
    assert probe["messages"][-1] == {"role": "assistant", "content": "1, 2, 3, 4,"}
    assert probe["continue_final_message"] is True and probe["temperature"] == 0
    assert "continue_token_ids" not in probe
    # the refusal is remembered: a second branch sends nothing
    with pytest.raises(ContinuationError):
        parent.branch(2, client=client)
    assert len(script.requests) == 2
    rows = tmlab.history()
    assert rows["parent_id"].isna().all()  # nothing recorded as a branch


def test_a_server_that_refuses_the_field_is_named_in_the_error(history_db: str) -> None:
    _forget_checks()
    refusal = {
        "error": {
            "message": "Unrecognized request argument supplied: continue_final_message",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    script = Script(httpx.Response(400, json=refusal))
    client, parent = _parent(script)
    with client, pytest.raises(ContinuationError, match="refused continue_final_message"):
        parent.branch(1, client=client)


def test_a_server_that_continues_gets_the_branch_as_text(history_db: str) -> None:
    _forget_checks()
    script = Script(
        httpx.Response(200, json=completion(" 5, 6")),  # the check: it goes on counting
        httpx.Response(200, json=completion("Sure!")),  # without the fields: a new turn
        httpx.Response(
            200, json={"object": "list", "data": [{"id": "test-model", "owned_by": "vllm"}]}
        ),
        httpx.Response(200, json=completion(" calm today.")),
    )
    client, parent = _parent(script)
    with client:
        res = parent.branch(1, client=client)
    sent = script.bodies[-1]
    assert sent["messages"][-1] == {"role": "assistant", "content": "The ocean"}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert "continue_token_ids" not in sent  # only a tmlab server honours it
    assert res.parent is not None and not res.parent.exact
    assert res.full_text == "The ocean calm today."
    row = get_row(res.history_id)  # type: ignore[arg-type]
    assert row is not None and row["parent_id"] == parent.history_id
    assert row["branch_token"] == " ocean" and row["branch_position"] == 1


# -- the tree ------------------------------------------------------------------------------

_V1 = """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, source TEXT NOT NULL,
    base_url TEXT, model TEXT, messages TEXT, params TEXT, text TEXT, reasoning TEXT,
    finish_reason TEXT, complete INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,
    total_tokens INTEGER, latency_s REAL, ttft_s REAL, tokens_per_s REAL, error TEXT
);
CREATE INDEX requests_model ON requests(model);
CREATE INDEX requests_source ON requests(source);
INSERT INTO requests (time, source, model, messages, params, text, complete)
VALUES ('2024-01-01T00:00:00.000+00:00', 'client', 'old', '[]', '{}', 'an old answer', 1);
PRAGMA user_version = 1;
"""


@pytest.mark.slow
def test_the_tree_of_a_history_migrated_from_version_1(
    history_db: str, client: tmlab.Client
) -> None:
    conn = sqlite3.connect(history_db)
    conn.executescript(_V1)
    conn.close()
    root = client.chat(PROMPT, **ASK)
    first = root.branch(3, max_tokens=4)
    second = root.branch(1, max_tokens=4)
    deeper = first.branch(0, max_tokens=3)
    conn = sqlite3.connect(history_db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        old = conn.execute("SELECT text, parent_id FROM requests WHERE id = 1").fetchone()
        assert old == ("an old answer", None)  # the old row is kept
    finally:
        conn.close()
    df = tmlab.tree(deeper.history_id)  # type: ignore[arg-type]
    assert list(df["id"]) == [
        root.history_id,
        second.history_id,
        first.history_id,
        deeper.history_id,
    ]
    assert list(df["depth"]) == [0, 1, 1, 2]
    assert df["parent"].isna().tolist() == [True, False, False, False]
    assert df["parent"].tolist()[1:] == [root.history_id, root.history_id, first.history_id]
    assert df["position"].tolist()[1:] == [1, 3, 0]
    assert df.iloc[2]["token"] == (first.parent.token if first.parent else None)
    assert df.iloc[3]["full_text"] == deeper.full_text
    assert df.iloc[0]["sequence_logprob"] == pytest.approx(root.sequence_logprob)
    answer = (first.parent.prefix_logprob or 0) + (first.sequence_logprob or 0)
    assert df.iloc[2]["answer_logprob"] == pytest.approx(answer)
    assert list(df["finish"]) == [r.finish_reason for r in (root, second, first, deeper)]
    html = df._repr_html_()
    assert html.count('class="tmlab-tree-node"') == 4
    assert "margin-left: 3.2em" in html  # depth 2 is indented twice
    assert html.count("tmlab-branch-token") == 3
    # the old row is a tree of its own
    assert list(tmlab.tree(1)["id"]) == [1]
    with pytest.raises(tmlab.ParameterError, match="no request"):
        tmlab.tree(10**9)


def test_a_branch_by_history_id_needs_a_row_with_tokens(history_db: str) -> None:
    with pytest.raises(tmlab.ParameterError) as info:
        branching.result_of(10**9)
    assert info.value.param == "id" and "tokens and alternatives" in str(info.value)


@pytest.mark.slow
def test_a_branch_by_history_id_works_in_a_later_session(
    history_db: str, client: tmlab.Client
) -> None:
    root = client.chat(PROMPT, **ASK)
    live = root.branch(3, max_tokens=6)
    deeper_live = live.branch(1, max_tokens=3)
    plain = client.chat(PROMPT, max_tokens=4)
    forget_results()  # a new kernel: nothing of the earlier one is in memory

    stored = branching.result_of(root.history_id)  # type: ignore[arg-type]
    assert stored is not root and stored.history_id == root.history_id
    assert stored.text == root.text and _ids(stored) == _ids(root)
    assert stored.logprobs_frame().equals(root.logprobs_frame())
    again = stored.branch(3, max_tokens=6)
    assert again.parent is not None and live.parent is not None
    assert again.parent.parent_id == root.history_id
    assert again.parent.prefix_token_ids == live.parent.prefix_token_ids
    assert again.full_text == live.full_text and _ids(again) == _ids(live)

    # a branch of a branch: the stored branch knows its own prefix (ids and log-probability)
    forget_results()
    child = branching.result_of(live.history_id)  # type: ignore[arg-type]
    assert child.parent is not None and child.parent.exact
    assert child.parent.prefix_token_ids == live.parent.prefix_token_ids
    assert child.parent.prefix_logprob == pytest.approx(live.parent.prefix_logprob)
    deeper = child.branch(1, max_tokens=3)
    assert deeper.parent is not None and deeper_live.parent is not None
    assert deeper.parent.prefix_token_ids == deeper_live.parent.prefix_token_ids
    assert deeper.parent.prefix_logprob == pytest.approx(deeper_live.parent.prefix_logprob)
    assert deeper.full_text == deeper_live.full_text

    # an answer without logprobs stores no tokens: the error says so
    with pytest.raises(tmlab.ParameterError, match="without logprobs"):
        branching.result_of(plain.history_id)  # type: ignore[arg-type]

"""The client and the analyses against a server that is not tmlab's: llama.cpp's own C++
server on the same GGUF, configured as a user would (``llamacpp_server`` in conftest).

What a user would notice: answers come back, streams assemble, frames say what their numbers
are, a branch continues its prefix (llama.cpp repeats the prefix in a non-streamed answer's
content: tmlab removes it, and says so), score and classify give numbers, never a silent NaN,
and the probe says what this server does. Few tokens each: the server shares the machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

import tmlab
from tmlab import capabilities
from tmlab.analysis.continuation_check import PREFIX_NOTE

pytestmark = pytest.mark.slow

COUNT = "Count from 1 to 10, separated by commas."
QUESTION = "Is the sky blue? Answer yes or no."


@pytest.fixture(scope="module")
def client(llamacpp_server: str) -> Iterator[tmlab.Client]:
    capabilities.forget()
    with tmlab.Client(base_url=llamacpp_server, timeout=300.0) as c:
        yield c
    capabilities.forget()


def test_chat(client: tmlab.Client, history_db: str) -> None:
    res = client.chat("Say hello.", max_tokens=4, temperature=0)
    assert res.text and res.finish_reason in ("length", "stop")
    assert res.usage.completion_tokens is not None and 1 <= res.usage.completion_tokens <= 4
    assert len(tmlab.history()) == 1


def test_stream(client: tmlab.Client) -> None:
    pieces: list[str] = []
    res = client.chat(
        "Say hello.",
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        on_delta=lambda d: pieces.append(d.text),
    )
    assert res.text and "".join(pieces) == res.text
    assert res.usage.completion_tokens is not None


def test_logprobs_frame(client: tmlab.Client) -> None:
    res = client.chat("Name a colour.", max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    df = res.logprobs_frame()
    assert len(df) == res.usage.completion_tokens
    assert df["logprob"].notna().all() and (df["rank"] == 1).all()  # greedy: the top token
    assert "".join(df["token"]) == res.text
    assert df["top_tokens"].map(len).eq(3).all()


def test_sweep(client: tmlab.Client, history_db: str) -> None:
    df = tmlab.sweep(
        "Name a colour.",
        grid={"temperature": [0.5, 1.0]},
        client=client,
        progress=False,
        max_tokens=3,
        seed=1,
    )
    assert len(df) == 2 and df["error"].isna().all() and df["text"].str.len().gt(0).all()


def test_audit(client: tmlab.Client) -> None:
    report = tmlab.audit("Name a colour.", repeats=2, client=client, max_tokens=3)
    assert report.runs == 2 and report.identical  # the same seed, one request at a time


def test_probe(client: tmlab.Client) -> None:
    printed: list[str] = []
    df = tmlab.probe(client, out=printed.append)
    again = tmlab.probe(client, out=printed.append)
    assert len(printed) == 1 and df.equals(again)  # kept: asked once
    verdicts = dict(zip(df["capability"], df["verdict"], strict=True))
    assert verdicts == {
        "logprobs": "supported, top_logprobs up to 20",
        "logprobs meaning": "raw_logprobs",
        "seed": "repeats",
        "n > 1": "supported",
        "echo with prompt logprobs": "not supported",
        "continuation of a final assistant message": "continues (always prefills)",
        "reasoning": "none seen",
        "usage in streams": "supported",
    }
    came_back = df.set_index("capability")["came_back"]
    assert "repeats the prefix" in came_back["continuation of a final assistant message"]


def test_branch_continues_the_prefix(client: tmlab.Client, history_db: str) -> None:
    res = client.chat(COUNT, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    b = res.branch(2, max_tokens=3, temperature=0)
    assert b.parent is not None and not b.parent.exact
    prefix = b.parent.prefix_text
    assert prefix == res.logprobs_frame()["token"].iloc[:2].str.cat() + b.parent.token
    assert b.text and not b.text.startswith(prefix)  # the new text only
    assert b.full_text == prefix + b.text
    assert "".join(b.logprobs_frame()["token"]) == b.text
    assert PREFIX_NOTE in b.notes and PREFIX_NOTE in b.logprobs_frame().attrs["notes"]
    streamed = res.branch(2, max_tokens=3, temperature=0, stream=True)
    assert streamed.text == b.text and not streamed.notes  # deltas hold the new text only


def test_the_continuation_check_is_recorded_as_tmlabs_own_requests(
    client: tmlab.Client, history_db: str
) -> None:
    """The check's requests are in the history as ``probe``, not as the user's questions."""
    from tmlab import continuation

    verdict = continuation.check(client, client.model, refresh=True)
    assert verdict.continues and verdict.always_prefills and verdict.echoes_prefix, verdict
    rows = tmlab.history()
    assert len(rows) == verdict.requests == 2 and set(rows["source"]) == {"probe"}, rows
    assert tmlab.history(source="client").empty


def test_score(client: tmlab.Client) -> None:
    s = tmlab.score("Yes.", context=QUESTION, client=client)
    assert s.method == "continuation"
    assert [t.token for t in s.tokens] == ["Yes", "."]
    assert math.isfinite(s.total_logprob) and s.total_logprob < 0


def test_classify(client: tmlab.Client) -> None:
    df = tmlab.classify(QUESTION, ["Yes", "No"], client=client, progress=False)
    assert df["error"].isna().all()
    assert df[["logprob", "prob", "p_norm", "mass"]].notna().all().all()
    assert df["p_norm"].sum() == pytest.approx(1.0) and df["is_top"].sum() == 1
    yes = tmlab.score("Yes", context=QUESTION, client=client)
    assert df.loc[0, "logprob"] == pytest.approx(yes.total_logprob, abs=1e-6)


def test_continuations_end_where_the_server_shows_end_of_turn_as_an_empty_token(
    client: tmlab.Client,
) -> None:
    """llama.cpp's server writes control tokens (end of turn) as ``""``: such a path ends
    there (no children, no text added), as ``<|im_end|>`` does on the embedded server."""
    df = tmlab.continuations(
        [{"role": "user", "content": "Say exactly: Yes"}], client=client, depth=3, width=2
    )
    empty = df[df["token"] == ""]
    assert len(empty) >= 1, df[["depth", "token", "prob"]]
    assert empty["ends"].all()
    assert not df["parent"].isin(empty["node"]).any()  # nothing was asked after them
    parents = df.set_index("node").loc[empty["parent"], "text"].tolist()
    assert empty["text"].tolist() == parents  # they add nothing to the answer

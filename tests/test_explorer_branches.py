"""The Explorer's clickable token view and Branches tab, without a browser.

A click in the browser is one message from ``tokenview.js`` / ``branches.js``; here the same
message is handed to the widget's handler, and what follows (the request, the history row,
the views) is checked against the real embedded server.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tmlab
from tmlab.history import get_row
from tmlab.jupyter.explorer import Explorer

pytestmark = pytest.mark.slow


@pytest.fixture
def explorer(
    local_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Explorer]:
    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite3"))
    client = tmlab.Client(base_url=local_server.base_url, timeout=300)
    ex = Explorer(
        client,
        prompt="Name three colours.",
        temperature=0.0,
        max_tokens=10,
        logprobs=True,
        top_logprobs=3,
    )
    yield ex
    ex.stop()
    assert ex.wait(timeout=120)
    ex.close()
    client.close()


def _click_alternative(ex: Explorer, index: int) -> tuple[int, dict[str, Any]]:
    """Send what tokenview.js sends for a click on the first alternative not said."""
    token = ex.token_view.tokens[index]
    k = next(i for i, a in enumerate(token["alts"]) if not a["taken"])
    ex.token_view._on_message(ex.token_view, {"type": "branch", "index": index, "alt": k}, [])
    return k, token["alts"][k]


def test_clicking_an_alternative_branches_there(explorer: Explorer) -> None:
    ex = explorer
    assert ex.run() and ex.wait(120)
    root = ex.result
    assert root is not None and root.history_id is not None
    entries = root.choices[0].logprobs or []
    tokens = ex.token_view.tokens
    assert len(tokens) == len(entries) and all(len(t["alts"]) == 3 for t in tokens)
    assert [t["prob"] for t in tokens] == [round(2.718281828459045**e.logprob, 6) for e in entries]
    assert ex.branches.nodes and ex.branches.nodes[0]["depth"] == 0

    _, alt = _click_alternative(ex, 2)
    assert ex.wait(120)
    res = ex.result
    assert res is not None and res.parent is not None and res.parent.parent_result is root
    assert res.parent.position == 2 and res.parent.token_id == alt["id"]
    row = get_row(res.history_id)  # type: ignore[arg-type]
    assert row is not None and row["source"] == "explorer"
    assert row["parent_id"] == root.history_id and row["branch_position"] == 2
    assert row["branch_token"] == res.parent.token
    prefix = "".join(bytes(e.bytes or []).decode() for e in entries[:2]) + res.parent.token
    assert row["messages"][-1] == {"role": "assistant", "content": prefix}
    # the Answer tab shows the prefix (dimmed) then the new text; the token view the prefix's
    # tokens (inherited, clickable) then the branch's own
    shown = html.unescape(ex.answer.value)
    assert prefix in shown and res.text in shown and res.full_text == prefix + res.text
    view = ex.token_view.tokens
    assert [t["inherited"] for t in view[:3]] == [True, True, True]
    assert not any(t["inherited"] for t in view[3:])
    assert len(view) == 3 + len(res.choices[0].logprobs or [])
    assert ex.token_view.streaming == "" and not ex.token_view.busy
    nodes = ex.branches.nodes
    assert [n["depth"] for n in nodes] == [0, 1] and nodes[1]["token"] == res.parent.token

    # a click on an inherited token branches the answer it came from: a sibling under the root
    _click_alternative(ex, 0)
    assert ex.wait(120)
    sibling = ex.result
    assert sibling is not None and sibling.parent is not None
    assert sibling.parent.parent_result is root and sibling.parent.position == 0
    assert [n["depth"] for n in ex.branches.nodes] == [0, 1, 1]
    assert ex.branches.results[1] is sibling  # by position: 0 before 2

    # the Branches tab: a click on the root shows it again, everywhere
    ex.branches._on_message(ex.branches, {"type": "select", "node": 0}, [])
    assert ex.result is root and ex.branches.selected == 0
    assert len(ex.token_view.tokens) == len(entries)
    assert html.escape(root.text) in ex.answer.value


def test_a_message_that_names_nothing_sends_nothing(explorer: Explorer) -> None:
    ex = explorer
    assert ex.run() and ex.wait(120)
    before = len(tmlab.history())
    for message in (
        {"type": "branch", "index": 999, "alt": 0},
        {"type": "branch", "index": 0, "alt": 99},
        {"type": "branch", "index": "0", "alt": 0},
        {"type": "other"},
    ):
        ex.token_view._on_message(ex.token_view, message, [])
    assert ex.wait(30) and len(tmlab.history()) == before


def test_stop_ends_a_branch_and_keeps_it_as_a_partial_branch(explorer: Explorer) -> None:
    ex = explorer
    long = ex.client.chat(
        "Tell me a long story.", max_tokens=80, ignore_eos=True, logprobs=True, top_logprobs=2
    )
    entries = long.choices[0].logprobs or []
    alt = next(a for a in entries[1].top if a.token_id != entries[1].token_id)
    assert ex.branch(long, 1, alt.token_id)
    deadline = time.monotonic() + 120
    while not ex.token_view.streaming and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ex.token_view.streaming, "the branch did not stream into the token view"
    ex.stop()
    assert ex.wait(120)
    res = ex.result
    assert res is not None and not res.complete
    assert res.parent is not None and res.parent.parent_result is long
    assert res.usage.completion_tokens is None or res.usage.completion_tokens < 78
    row = get_row(res.history_id)  # type: ignore[arg-type]
    assert row is not None and row["parent_id"] == long.history_id
    assert row["complete"] is False and row["error"] == "interrupted"
    assert "stopped" in ex.status.value
    assert not ex.token_view.busy and ex.token_view.tokens[1]["inherited"]

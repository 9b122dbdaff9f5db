"""tmlab.continuations(): the probability tree of an answer's first tokens, end to end."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

import tmlab
from tmlab.local import LocalServer

PROMPT = "Name a colour."


@pytest.fixture
def client(local_server: LocalServer) -> Iterator[tmlab.Client]:
    with tmlab.Client(base_url=local_server.base_url) as c:
        yield c


@pytest.mark.slow
def test_path_probabilities_are_the_products_of_the_returned_probabilities(
    history_db: str, client: tmlab.Client
) -> None:
    df = tmlab.continuations(PROMPT, depth=3, width=3, client=client, seed=1)
    rows = tmlab.history()
    # one request per expanded node, plus the continuation check (a loopback server is not
    # this process's embedded server): none repeated
    expanded = int(((df["depth"] < 3) & ~df["ends"]).sum())
    # the check (two requests: with the continuation fields, then without) is made once per
    # server and model in a session: an earlier test may have
    checks = int(rows["messages"].map(lambda m: "1, 2, 3, 4," in str(m[-1]["content"])).sum())
    assert checks in (0, 2)
    assert df.attrs["requests"] == len(rows) == checks + 1 + expanded
    assert df.attrs["requests"] <= 2 + 1 + 3 + 9
    chat_rows = rows[rows["params"].map(lambda p: p.get("top_logprobs") == 3)]
    sent = [
        json.dumps([r["messages"], r["params"].get("continue_token_ids")])
        for r in chat_rows.to_dict("records")
    ]
    assert len(sent) == len(set(sent)) == 1 + expanded
    for level in (2, 3):  # width children under every expanded node of the level above
        above = df[(df["depth"] == level - 1) & ~df["ends"]]
        assert (df["depth"] == level).sum() == 3 * len(above)
    by_node = df.set_index("node")
    for row in df.to_dict("records"):
        product, node = 1.0, row["node"]
        while node >= 0:
            product *= by_node.loc[node, "prob"]
            node = by_node.loc[node, "parent"]
        assert row["path_prob"] == pytest.approx(product, rel=1e-12)
        assert row["path_prob"] == pytest.approx(math.exp(row["path_logprob"]), rel=1e-12)
    # each level holds the width most likely tokens after its parent, most likely first
    for _, siblings in df.groupby("parent"):
        assert list(siblings["rank"]) == list(range(1, len(siblings) + 1))
        assert siblings["prob"].is_monotonic_decreasing
    # a node's probability is the one a fresh continuation of exactly its path returns
    deep = df[df["depth"] == 3].iloc[0]
    parent = by_node.loc[deep["parent"]]
    ids = [int(by_node.loc[parent["parent"], "token_id"]), int(parent["token_id"])]
    again = client.chat(
        [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": parent["text"]},
        ],
        continue_final_message=True,
        continue_token_ids=ids,
        max_tokens=1,
        logprobs=True,
        top_logprobs=3,
        seed=1,
    )
    top = (again.choices[0].logprobs or [])[0].top
    assert top[0].token == deep["token"]
    assert top[0].logprob == pytest.approx(deep["logprob"], abs=1e-9)
    # siblings' mass and the rest add up to 1
    level1 = df[df["depth"] == 1]
    assert math.fsum(level1["prob"]) + df.attrs["root_other_mass"] == pytest.approx(1.0)


def test_bad_arguments_are_refused_before_anything_is_sent(history_db: str) -> None:
    for kwargs, param in [
        ({"depth": 0}, "depth"),
        ({"width": 21}, "width"),
        ({"width": True}, "width"),
        ({"max_tokens": 5}, "max_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"depth": 8, "width": 20}, "width"),
    ]:
        with pytest.raises(tmlab.ParameterError) as info:
            tmlab.continuations(PROMPT, **kwargs)
        assert info.value.param == param
    assert tmlab.history().empty


@pytest.mark.slow
def test_the_tree_plots_as_an_icicle(history_db: str, client: tmlab.Client) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = tmlab.continuations(PROMPT, depth=2, width=2, client=client)
    ax = df.plot_tree()
    try:
        labels = [t.get_text() for t in ax.texts]
        shown = df[df["path_prob"] > 0.025]
        assert len(labels) == len(shown)
        assert all(f"{p:.2f}" in label for p, label in zip(shown["prob"], labels, strict=True))
        # bars: one per node plus the hatched rest of each expanded span
        assert len(ax.patches) >= len(df) + 1
    finally:
        plt.close(ax.figure)

"""ChatResult reads logprobs on first use: nothing per token at construction, the same objects
(and the same values, field by field) as reading them eagerly, kept once read."""

from __future__ import annotations

import dataclasses
import gc
import math
import pickle

from tmlab import ChatResult
from tmlab.result import Choice, TokenLogprob, TopLogprob


def _content() -> list[dict]:
    return [
        {
            "token": "A",
            "logprob": -0.5,
            "bytes": [65],
            "token_id": 32,
            "top_logprobs": [
                {"token": "A", "logprob": -0.5, "bytes": [65], "token_id": 32},
                {"token": "B", "logprob": -1, "bytes": [66], "id": 33},  # int, llama.cpp id
                {"token": "C", "logprob": None},  # unknown: dropped
                {"token": "D", "logprob": -3.0, "token_id": True},  # a bool is no id
            ],
        },
        {"token": "\n", "logprob": None, "top_logprobs": []},
        {"logprob": 0},
    ]


def _raw(logprobs: object) -> dict:
    return {
        "choices": [
            {
                "index": 0,
                "message": {"content": "A\n"},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ]
    }


def test_construction_reads_no_token_and_first_use_reads_all() -> None:
    res = ChatResult(_raw({"content": _content()}), request={"logprobs": True})
    choice = res.choices[0]
    assert "logprobs" not in vars(choice)  # not read yet
    assert choice.has_logprobs and not res.logprobs_missing
    assert "logprobs" not in vars(choice)  # still not: known from the raw shape
    toks = choice.logprobs
    assert toks is choice.logprobs  # kept
    assert toks is not None and len(toks) == 3
    a, nl, empty = toks
    assert a == TokenLogprob(
        "A",
        -0.5,
        [65],
        32,
        (TopLogprob("A", -0.5, [65], 32), TopLogprob("B", -1.0, [66], 33), TopLogprob("D", -3.0)),
    )
    assert type(a.top[1].logprob) is float
    assert math.isnan(nl.logprob) and nl.top == () and nl.token_id is None
    assert empty == TokenLogprob("", 0.0)
    try:
        a.token = "x"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("TokenLogprob must stay frozen")


def test_missing_and_legacy_and_none() -> None:
    res = ChatResult(_raw(None), request={"logprobs": True})
    assert res.logprobs_missing and res.choices[0].logprobs is None
    legacy = {"tokens": ["a", "b"], "token_logprobs": [-1.0, None], "top_logprobs": [{"a": -1.0}]}
    (choice,) = ChatResult(_raw(legacy)).choices
    assert choice.has_logprobs
    assert [t.token for t in choice.logprobs or []] == ["a", "b"]


def test_choice_still_behaves_as_a_dataclass() -> None:
    res = ChatResult(_raw({"content": _content()}))
    choice = res.choices[0]
    changed = dataclasses.replace(choice, text="other")
    assert changed.text == "other" and changed.logprobs == choice.logprobs
    assert Choice.from_raw(choice.raw) == choice
    again = pickle.loads(pickle.dumps(ChatResult(_raw({"content": _content()})).choices[0]))
    assert again.logprobs == choice.logprobs
    try:
        choice.nothing  # noqa: B018
    except AttributeError as exc:
        assert "nothing" in str(exc)
    else:
        raise AssertionError("an unknown attribute must raise")


def test_garbage_collector_state_is_restored() -> None:
    assert gc.isenabled()
    assert ChatResult(_raw({"content": _content()})).choices[0].logprobs
    assert gc.isenabled()
    gc.disable()
    try:
        assert ChatResult(_raw({"content": _content()})).choices[0].logprobs
        assert not gc.isenabled()
    finally:
        gc.enable()

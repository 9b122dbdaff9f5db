"""Frames: the numbers shown are checked against hand computations."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tmlab import ChatResult, Timing, logprobs_frame, usage_frame
from tmlab.frames import LOGPROBS_COLUMNS, LONG_COLUMNS

LN = math.log


def _openai_lp(
    token: str,
    p: float,
    alts: list[tuple[str, float]],
    tid: int | None = None,
    alt_ids: list[int] | None = None,
) -> dict:
    top = [{"token": t, "logprob": LN(q), "bytes": list(t.encode())} for t, q in alts]
    if alt_ids is not None:
        for item, i in zip(top, alt_ids, strict=True):
            item["token_id"] = i
    out = {"token": token, "logprob": LN(p), "bytes": list(token.encode()), "top_logprobs": top}
    if tid is not None:
        out["token_id"] = tid
    return out


def _result(content: list[dict], n_choices: int = 1) -> ChatResult:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "x"},
            "finish_reason": "stop",
            "logprobs": {"content": content},
        }
        for i in range(n_choices)
    ]
    return ChatResult({"model": "m", "choices": choices})


def test_columns_and_hand_computed_numbers() -> None:
    res = _result(
        [
            _openai_lp("B", 0.3, [("A", 0.5), ("B", 0.3), ("C", 0.1)]),
            _openai_lp("A", 0.6, [("A", 0.6), ("B", 0.2)]),
        ]
    )
    df = logprobs_frame(res)
    assert list(df.columns) == LOGPROBS_COLUMNS
    row = df.iloc[0]
    assert row["token"] == "B"
    assert row["prob"] == pytest.approx(0.3)
    assert row["rank"] == 2
    assert row["entropy"] == pytest.approx(-(0.5 * LN(0.5) + 0.3 * LN(0.3) + 0.1 * LN(0.1)))
    assert row["top_mass"] == pytest.approx(0.9)
    assert row["other_mass"] == pytest.approx(0.1)
    assert row["top_tokens"] == ["A", "B", "C"]
    assert row["top_logprobs"] == pytest.approx([LN(0.5), LN(0.3), LN(0.1)])
    assert df.iloc[1]["rank"] == 1
    assert list(df["position"]) == [0, 1]
    assert "lower bound" in df.attrs["notes"]


def test_rank_is_unknown_when_sampled_token_is_not_among_alternatives() -> None:
    df = logprobs_frame(_result([_openai_lp("Z", 0.01, [("A", 0.7), ("B", 0.2)])]))
    assert df["rank"].isna().all()
    assert df.iloc[0]["other_mass"] == pytest.approx(0.1)


def test_rank_is_unknown_when_the_sampled_logprob_is_null() -> None:
    token = _openai_lp("A", 0.5, [("A", 0.5), ("B", 0.3)])
    token["logprob"] = None
    df = logprobs_frame(_result([token]))
    assert pd.isna(df.iloc[0]["rank"]) and math.isnan(df.iloc[0]["logprob"])
    assert df.iloc[0]["top_mass"] == pytest.approx(0.8)  # the alternatives are still known


def test_ties_share_the_better_rank_and_ids_win_over_text() -> None:
    # Two alternatives render as the same text but have different ids (byte-level pieces).
    res = _result([_openai_lp("a", 0.4, [("a", 0.4), ("a", 0.4)], tid=8, alt_ids=[7, 8])])
    df = logprobs_frame(res)
    assert df.iloc[0]["rank"] == 1
    assert df.iloc[0]["token_id"] == 8


def test_no_alternatives_gives_nan_not_zero() -> None:
    df = logprobs_frame(_result([{"token": "x", "logprob": LN(0.25), "top_logprobs": []}]))
    assert df.iloc[0]["prob"] == pytest.approx(0.25)
    assert math.isnan(df.iloc[0]["entropy"])
    assert pd.isna(df.iloc[0]["rank"])


def test_zero_probability_alternative_contributes_no_entropy() -> None:
    content = [
        {
            "token": "A",
            "logprob": 0.0,
            "top_logprobs": [
                {"token": "A", "logprob": 0.0},
                {"token": "B", "logprob": float("-inf")},
            ],
        }
    ]
    df = logprobs_frame(_result(content))
    assert df.iloc[0]["entropy"] == 0.0
    assert df.iloc[0]["other_mass"] == 0.0


def test_legacy_shape_gives_the_same_numbers() -> None:
    legacy = {
        "tokens": ["B", "A"],
        "token_logprobs": [LN(0.3), LN(0.6)],
        "top_logprobs": [{"A": LN(0.5), "B": LN(0.3), "C": LN(0.1)}, {"B": LN(0.2), "A": LN(0.6)}],
        "text_offset": [0, 1],
    }
    res = ChatResult({"choices": [{"index": 0, "message": {"content": "BA"}, "logprobs": legacy}]})
    new = _result(
        [
            _openai_lp("B", 0.3, [("A", 0.5), ("B", 0.3), ("C", 0.1)]),
            _openai_lp("A", 0.6, [("A", 0.6), ("B", 0.2)]),
        ]
    )
    cols = ["token", "prob", "rank", "entropy", "top_mass", "top_tokens"]
    pd.testing.assert_frame_equal(logprobs_frame(res)[cols], logprobs_frame(new)[cols])


def test_several_choices_and_long_form() -> None:
    res = _result([_openai_lp("B", 0.3, [("A", 0.5), ("B", 0.3)])], n_choices=2)
    df = logprobs_frame(res)
    assert list(df["choice"]) == [0, 1]
    long = res.logprobs_frame(long=True)
    assert list(long.columns) == LONG_COLUMNS
    assert len(long) == 4
    assert list(long["alt_rank"]) == [1, 2, 1, 2]
    assert list(long["is_sampled"]) == [False, True, False, True]
    assert long["alt_prob"].tolist() == pytest.approx([0.5, 0.3, 0.5, 0.3])


def test_empty_frame_keeps_its_columns() -> None:
    res = ChatResult({"choices": [{"index": 0, "message": {"content": "hi"}}]})
    assert list(logprobs_frame(res).columns) == LOGPROBS_COLUMNS
    assert len(logprobs_frame(res)) == 0
    assert len(logprobs_frame(res, long=True)) == 0


def _usage_result(model: str = "m") -> ChatResult:
    raw = {
        "model": model,
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "length"}],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400},
            "completion_tokens_details": {"reasoning_tokens": 50},
        },
    }
    return ChatResult(raw, timing=Timing(latency_s=2.0, ttft_s=0.5, tokens_per_s=133.3))


def test_usage_frame_counts_timing_and_cost() -> None:
    res = _usage_result()
    df = usage_frame(res, prices={"input": 0.5, "output": 2.0})
    row = df.iloc[0]
    assert (
        row["prompt_tokens"],
        row["cached_tokens"],
        row["completion_tokens"],
        row["reasoning_tokens"],
        row["total_tokens"],
    ) == (1000, 400, 200, 50, 1200)
    assert (row["latency_s"], row["ttft_s"]) == (2.0, 0.5)
    assert row["finish_reason"] == "length"
    # 600 uncached input tokens at $0.5/M, cached free, 200 output at $2/M
    assert row["cost_usd"] == pytest.approx((600 * 0.5 + 200 * 2.0) / 1e6)


def test_usage_frame_per_model_prices_and_missing_counts() -> None:
    bare = ChatResult({"model": "other", "choices": []})
    df = usage_frame([_usage_result("m"), bare], prices={"m": {"input": 1.0, "output": 1.0}})
    assert len(df) == 2
    assert df["cost_usd"].iloc[0] == pytest.approx(800 / 1e6)
    assert pd.isna(df["cost_usd"].iloc[1])
    assert pd.isna(df["prompt_tokens"].iloc[1])
    assert "cost_usd" not in usage_frame(bare).columns

"""What-if sampling against hand-computed cases (no server: the maths over given logprobs)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tmlab import ChatResult, ParameterError
from tmlab.sampling import (
    ENTROPY_COLUMNS,
    RAW_LABEL,
    SAMPLED_COLUMNS,
    WHATIF_COLUMNS,
    WHATIF_LABEL,
    entropy_frame,
    reshape,
    whatif,
    whatif_position,
    whatif_sampled,
)

LN = math.log


def _lp(token: str, p: float, alts: list[tuple[str, float]]) -> dict[str, Any]:
    top = [{"token": t, "logprob": LN(q), "bytes": list(t.encode())} for t, q in alts]
    return {"token": token, "logprob": LN(p), "bytes": list(token.encode()), "top_logprobs": top}


def _res(*positions: dict[str, Any]) -> ChatResult:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "x"},
        "finish_reason": "stop",
        "logprobs": {"content": list(positions)},
    }
    return ChatResult({"model": "m", "choices": [choice]})


ABC = _res(_lp("B", 0.3, [("A", 0.5), ("B", 0.3), ("C", 0.1)]))  # other_mass 0.1


def _probs(res: ChatResult, **settings: Any) -> list[float]:
    return whatif(res, **settings)["whatif_prob"].tolist()


def test_temperature_one_is_the_returned_distribution_renormalised() -> None:
    df = whatif(ABC)
    assert list(df.columns) == WHATIF_COLUMNS
    assert df["token"].tolist() == ["A", "B", "C"]
    assert df["rank"].tolist() == [1, 2, 3]
    assert df["raw_prob"].tolist() == pytest.approx([0.5, 0.3, 0.1])  # as returned, untouched
    assert df["whatif_prob"].tolist() == pytest.approx([5 / 9, 3 / 9, 1 / 9])
    assert df["kept"].all()
    assert df["is_sampled"].tolist() == [False, True, False]
    # The mass outside the returned alternatives is shown on every row, not hidden.
    assert df["other_mass"].tolist() == pytest.approx([0.1, 0.1, 0.1])


def test_every_frame_says_which_distribution_and_that_it_is_an_approximation() -> None:
    df = whatif(ABC, temperature=0.7)
    assert "APPROXIMATION" in df.attrs["notes"]
    assert "other_mass" in df.attrs["notes"]
    assert df.attrs["distribution"] == {"raw_prob": RAW_LABEL, "whatif_prob": WHATIF_LABEL}
    assert "approximation" in WHATIF_LABEL and "as returned" in RAW_LABEL
    assert df.attrs["settings"]["temperature"] == 0.7
    long = whatif(ABC, temperature=0.7, long=True)
    assert set(long["distribution"]) == {RAW_LABEL, WHATIF_LABEL}
    assert len(long) == 6
    raw = long[long["distribution"] == RAW_LABEL]["prob"].tolist()
    assert raw == pytest.approx([0.5, 0.3, 0.1])


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (0.5, [0.25 / 0.35, 0.09 / 0.35, 0.01 / 0.35]),  # p^2, renormalised
        (2.0, np.sqrt([0.5, 0.3, 0.1]) / np.sqrt([0.5, 0.3, 0.1]).sum()),  # p^(1/2)
    ],
)
def test_temperature_reshapes_as_softmax_of_logprob_over_t(
    temperature: float, expected: list[float]
) -> None:
    assert _probs(ABC, temperature=temperature) == pytest.approx(list(expected))


def test_temperature_zero_is_one_hot_and_ties_share() -> None:
    df = whatif(ABC, temperature=0)
    assert df["whatif_prob"].tolist() == [1.0, 0.0, 0.0]
    assert df["kept"].tolist() == [True, False, False]
    tie = _res(_lp("A", 0.4, [("A", 0.4), ("B", 0.4), ("C", 0.2)]))
    assert _probs(tie, temperature=0) == [0.5, 0.5, 0.0]


def test_tiny_temperature_approaches_one_hot_without_overflow() -> None:
    assert _probs(ABC, temperature=1e-6) == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [
        (1, [1.0, 0.0, 0.0]),
        (2, [5 / 8, 3 / 8, 0.0]),
        (3, [5 / 9, 3 / 9, 1 / 9]),
        (50, [5 / 9, 3 / 9, 1 / 9]),  # more than returned: nothing to cut here
        (0, [5 / 9, 3 / 9, 1 / 9]),  # 0 and -1 mean off, as on the server
        (-1, [5 / 9, 3 / 9, 1 / 9]),
    ],
)
def test_top_k(top_k: int, expected: list[float]) -> None:
    df = whatif(ABC, top_k=top_k)
    assert df["whatif_prob"].tolist() == pytest.approx(expected)
    assert df["kept"].tolist() == [p > 0 for p in expected]


def test_top_k_keeps_a_tie_at_the_boundary() -> None:
    res = _res(_lp("A", 0.4, [("A", 0.4), ("B", 0.2), ("C", 0.2), ("D", 0.1)]))
    assert _probs(res, top_k=2) == pytest.approx([0.5, 0.25, 0.25, 0.0])


EXACT = _res(_lp("A", 0.5, [("A", 0.5), ("B", 0.3), ("C", 0.2)]))  # other_mass 0


@pytest.mark.parametrize(
    ("top_p", "n_kept"),
    [
        (0.0, 1),  # the most likely alternative is always kept
        (0.5, 1),  # exactly reached by A alone
        (0.5000001, 2),
        (0.8, 2),  # exact boundary: 0.5 + 0.3 = 0.8 ≥ 0.8
        (0.8000001, 3),
        (1.0, 3),
    ],
)
def test_top_p_boundaries(top_p: float, n_kept: int) -> None:
    df = whatif(EXACT, top_p=top_p)
    assert df["kept"].tolist() == [i < n_kept for i in range(3)]
    kept_mass = [0.5, 0.8, 1.0][n_kept - 1]
    expected = [p / kept_mass if i < n_kept else 0.0 for i, p in enumerate([0.5, 0.3, 0.2])]
    assert df["whatif_prob"].tolist() == pytest.approx(expected)


def test_top_p_counts_mass_over_the_returned_alternatives_renormalised() -> None:
    # Renormalised over A, B, C: 5/9, 3/9, 1/9; A+B = 8/9 reaches top_p = 8/9 exactly.
    assert whatif(ABC, top_p=8 / 9)["kept"].tolist() == [True, True, False]
    assert whatif(ABC, top_p=0.85)["kept"].tolist() == [True, True, False]


def test_top_p_keeps_a_whole_tie_group() -> None:
    res = _res(_lp("A", 0.4, [("A", 0.4), ("B", 0.3), ("C", 0.3)]))
    assert whatif(res, top_p=0.5)["kept"].tolist() == [True, True, True]
    assert whatif(res, top_p=0.4)["kept"].tolist() == [True, False, False]


MINP = _res(_lp("A", 0.5, [("A", 0.5), ("B", 0.25), ("C", 0.2), ("D", 0.05)]))


@pytest.mark.parametrize(
    ("min_p", "expected"),
    [
        (0.0, [0.5, 0.25, 0.2, 0.05]),
        (0.1, [0.5, 0.25, 0.2, 0.05]),  # exact boundary: 0.05 = 0.1 × 0.5 is kept
        (0.11, [0.5 / 0.95, 0.25 / 0.95, 0.2 / 0.95, 0.0]),
        (0.4, [0.5 / 0.95, 0.25 / 0.95, 0.2 / 0.95, 0.0]),  # exact boundary: 0.2 = 0.4 × 0.5
        (0.41, [2 / 3, 1 / 3, 0.0, 0.0]),
        (0.5, [2 / 3, 1 / 3, 0.0, 0.0]),  # exact boundary: 0.25 = 0.5 × 0.5
        (0.5000001, [1.0, 0.0, 0.0, 0.0]),
        (1.0, [1.0, 0.0, 0.0, 0.0]),
    ],
)
def test_min_p_boundaries(min_p: float, expected: list[float]) -> None:
    assert _probs(MINP, min_p=min_p) == pytest.approx(expected)


def test_min_p_applies_to_the_tempered_distribution() -> None:
    # T = 0.5 squares: ratios to the top are 1, 0.25, 0.16, 0.01.
    df = whatif(MINP, temperature=0.5, min_p=0.2)
    assert df["kept"].tolist() == [True, True, False, False]
    assert df["whatif_prob"].tolist() == pytest.approx([0.25 / 0.3125, 0.0625 / 0.3125, 0, 0])


def test_truncations_apply_in_turn_each_renormalised() -> None:
    # top_k=3 leaves 0.5, 0.25, 0.2 → renormalised 0.526, 0.263, 0.211; top_p=0.75 then needs
    # A+B = 0.789; min_p=0.6 then drops B (0.263 < 0.6 × 0.526).
    assert whatif(MINP, top_k=3, top_p=0.75)["kept"].tolist() == [True, True, False, False]
    df = whatif(MINP, top_k=3, top_p=0.75, min_p=0.6)
    assert df["whatif_prob"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_order_truncate_first_is_the_llama_cpp_chain() -> None:
    # temperature first: 0.25, 0.09, 0.04 → A alone has 0.658 ≥ 0.6.
    assert _probs(EXACT, temperature=0.5, top_p=0.6) == pytest.approx([1.0, 0.0, 0.0])
    # truncate first: raw A = 0.5 < 0.6, keep A and B, then temperature over them.
    df = whatif(EXACT, temperature=0.5, top_p=0.6, order="truncate_first")
    assert df["whatif_prob"].tolist() == pytest.approx([0.25 / 0.34, 0.09 / 0.34, 0.0])
    assert df.attrs["settings"]["order"] == "truncate_first"


def test_kept_probabilities_sum_to_one_and_dropped_are_zero() -> None:
    for settings in (
        {"temperature": 0.3},
        {"temperature": 1.7, "top_k": 2},
        {"top_p": 0.6, "min_p": 0.05},
    ):
        df = whatif(MINP, **settings)
        assert df["whatif_prob"].sum() == pytest.approx(1.0)
        assert (df.loc[~df["kept"], "whatif_prob"] == 0).all()
        assert (df.loc[df["kept"], "whatif_prob"] > 0).all()


def test_alternatives_in_any_order_and_positions() -> None:
    res = _res(
        _lp("A", 0.5, [("C", 0.1), ("A", 0.5), ("B", 0.3)]),
        _lp("x", 0.9, [("x", 0.9), ("y", 0.05)]),
    )
    df = whatif(res, top_k=1)
    assert df["position"].tolist() == [0, 0, 0, 1, 1]
    assert df["token"].tolist() == ["A", "B", "C", "x", "y"]
    one = whatif_position(res, 1, temperature=0.5)
    assert one["token"].tolist() == ["x", "y"]
    assert one["whatif_prob"].tolist() == pytest.approx([0.81 / 0.8125, 0.0025 / 0.8125])
    assert one["other_mass"].tolist() == pytest.approx([0.05, 0.05])


def test_reshape_on_bare_logprobs() -> None:
    probs, kept = reshape([LN(0.2), LN(0.5), LN(0.3)], top_k=2)
    assert probs.tolist() == pytest.approx([0.0, 0.5 / 0.8, 0.3 / 0.8])
    assert kept.tolist() == [False, True, True]


def test_sampled_token_probability_under_the_what_if() -> None:
    res = _res(
        _lp("B", 0.3, [("A", 0.5), ("B", 0.3), ("C", 0.1)]),
        _lp("Z", 0.02, [("A", 0.6), ("B", 0.3)]),  # sampled outside the returned two
    )
    df = whatif_sampled(res, temperature=0.5)
    assert list(df.columns) == SAMPLED_COLUMNS
    assert df["whatif_prob"].iloc[0] == pytest.approx(0.09 / 0.35)
    assert df["raw_prob"].tolist() == pytest.approx([0.3, 0.02])
    assert df["in_top"].tolist() == [True, False]
    assert math.isnan(df["whatif_prob"].iloc[1])  # unknowable: nothing provably drops it
    assert whatif_sampled(res, top_k=2)["whatif_prob"].iloc[1] == 0.0  # provably cut
    assert whatif_sampled(res, min_p=0.05)["whatif_prob"].iloc[1] == 0.0  # 0.02 < 0.05 × 0.6
    assert math.isnan(whatif_sampled(res, min_p=0.01)["whatif_prob"].iloc[1])
    assert whatif_sampled(res, temperature=0)["whatif_prob"].tolist() == [0.0, 0.0]
    assert whatif_sampled(res, top_k=1)["n_kept"].tolist() == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"order": "sideways"}, "order"),
        ({"position": 7}, "position"),
        ({"position": "0"}, "position"),
        ({"choice": 3}, "choice"),
    ],
)
def test_bad_settings_raise_parameter_error(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ParameterError) as info:
        whatif(ABC, **kwargs)
    assert info.value.param == param


def test_a_response_without_logprobs_says_what_to_ask_for() -> None:
    res = ChatResult({"choices": [{"index": 0, "message": {"content": "hi"}}]})
    with pytest.raises(ParameterError, match="logprobs=True"):
        whatif(res)


def test_entropy_frame_hand_computed() -> None:
    res = _res(
        _lp("B", 0.3, [("A", 0.5), ("B", 0.3), ("C", 0.1)]),
        _lp("A", 0.45, [("A", 0.45), ("B", 0.4)]),
        {"token": "q", "logprob": LN(0.9), "top_logprobs": [{"token": "q", "logprob": LN(0.9)}]},
    )
    df = entropy_frame(res, gap=0.1)
    assert list(df.columns) == ENTROPY_COLUMNS
    assert df["surprisal"].tolist() == pytest.approx([-LN(0.3), -LN(0.45), -LN(0.9)])
    h0 = -(0.5 * LN(0.5) + 0.3 * LN(0.3) + 0.1 * LN(0.1))
    assert df["entropy"].iloc[0] == pytest.approx(h0)
    assert df["top2_gap"].iloc[:2].tolist() == pytest.approx([0.2, 0.05])
    assert df["may_diverge"].tolist() == [False, True, False]
    assert math.isnan(df["top2_gap"].iloc[2])  # one alternative: the gap is unknown
    assert df["top1_token"].tolist() == ["A", "A", "q"]
    assert "lower bound" in df.attrs["notes"].lower()
    assert entropy_frame(res, gap=0.25)["may_diverge"].tolist() == [True, True, False]
    with pytest.raises(ParameterError):
        entropy_frame(res, gap=2)
    assert df["may_diverge"].dtype == bool


@pytest.mark.parametrize(
    ("settings", "bound"),
    [
        ({}, 0.1),  # T = 1: exactly the mass outside
        ({"temperature": 0.5}, 1 / 36),  # r = 1 / (5² + 3² + 1²) = 1/35
        ({"temperature": 0}, 0.0),
        ({"top_k": 2}, 0.0),
        ({"min_p": 0.3}, 0.0),  # unseen ≤ q = 0.1 < 0.3 × 0.5: none can pass
        ({"min_p": 0.1}, 0.1),
        ({"top_p": 0.45}, 0.0),  # A holds 5/9 × (1 − 0.1) = 0.5 ≥ 0.45 whatever is unseen
        ({"top_p": 0.55}, 0.1 + (3 / 9) / 0.55),  # B might join: ε̄ + g / top_p
        ({"top_p": 0.55, "min_p": 0.1}, math.nan),
        ({"temperature": 1.5}, math.nan),  # above 1 the unseen tail is unbounded by m, q
        ({"temperature": 0.7, "order": "truncate_first"}, math.nan),
    ],
)
def test_error_bound_from_the_returned_numbers(settings: dict[str, Any], bound: float) -> None:
    df = whatif(ABC, **settings)
    assert df["tv_bound"].tolist() == pytest.approx([bound] * 3, nan_ok=True)
    assert whatif_sampled(ABC, **settings)["tv_bound"].iloc[0] == pytest.approx(bound, nan_ok=True)
    assert "tv_bound" in df.attrs["notes"]

"""The determinism audit and diff: divergences found where they are, drift computed exactly,
and a seeded audit of the embedded server that reports identical answers."""

from __future__ import annotations

from typing import Any

import pytest

import tmlab
from tmlab.audits import AuditReport, audit, diff
from tmlab.errors import ParameterError
from tmlab.result import ChatResult


@pytest.fixture(autouse=True)
def _history(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite"))


def result(
    tokens: list[str],
    logprobs: list[float] | None = None,
    alternatives: list[list[tuple[str, float]]] | None = None,
) -> ChatResult:
    """A ChatResult from raw JSON, as a server sends it; without logprobs when None."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": "".join(tokens)},
        "finish_reason": "stop",
    }
    if logprobs is not None:
        alts = alternatives or [[(t, lp)] for t, lp in zip(tokens, logprobs, strict=True)]
        choice["logprobs"] = {
            "content": [
                {
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [{"token": a, "logprob": alp} for a, alp in alt],
                }
                for t, lp, alt in zip(tokens, logprobs, alts, strict=True)
            ]
        }
    raw = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5},
    }
    return ChatResult(raw, request={"model": "m", "messages": [], "seed": 7, "temperature": 1.0})


CAT = ["The", " cat", " sat", " down", "."]
DOG = ["The", " cat", " ran", " off", "."]
LP_CAT = [-0.10, -0.50, -0.70, -0.20, -0.05]
LP_DOG = [-0.10, -0.45, -0.75, -0.30, -0.05]
ALTS = [(" sat", -0.70), (" ran", -0.75), (" lay", -2.5)]


def test_diff_marks_the_first_divergence() -> None:
    alts = [[(t, lp)] for t, lp in zip(CAT, LP_CAT, strict=True)]
    alts[2] = ALTS
    d = diff(result(CAT, LP_CAT, alts), result(DOG, LP_DOG))
    assert d.position == 2 and d.unit == "token" and not d.identical and d.shared == 2
    # only the shared tokens count: |-0.50 - -0.45| at position 1, not the later ones
    assert d.max_abs_dlogprob == abs(-0.50 - -0.45)
    frame = d.frame()
    assert frame["same"].tolist() == [True, True, False, False, False]
    assert frame.loc[2, ["token_a", "token_b"]].tolist() == [" sat", " ran"]
    text = str(d)
    assert "differ at token 2" in text and "⟦“␣sat”⟧" in text and "“␣ran”" in text
    assert "alternatives: “␣sat” -0.700, “␣ran” -0.750" in text
    html = d._repr_html_()
    assert "outline:2px solid" in html and "token 2" in html


def test_diff_identical_and_one_answer_ending_early() -> None:
    same = diff(result(CAT, LP_CAT), result(CAT, LP_CAT))
    assert same.identical and same.position is None and same.max_abs_dlogprob == 0.0
    assert str(same).startswith("identical: the same 5 tokens")
    shorter = diff(result(CAT[:3], LP_CAT[:3]), result(CAT, LP_CAT))
    assert shorter.position == 3 and "(ended)" in str(shorter)


def test_diff_without_logprobs_compares_pieces_of_text() -> None:
    d = diff(result(["Hello world, how are you?"]), result(["Hello world, who are you?"]))
    assert d.unit == "text piece" and d.max_abs_dlogprob is None
    assert d.tokens_a[:4] == ["Hello", " ", "world", ","] and d.position == 5
    assert d.tokens_a[5] == "how" and d.tokens_b[5] == "who"


def test_report_finds_the_earliest_divergence_and_the_drift() -> None:
    runs = [
        result(
            CAT, LP_CAT, [[(t, lp)] for t, lp in zip(CAT, LP_CAT, strict=True)][:2] + [ALTS] * 3
        ),
        result(CAT, [-0.10, -0.50, -0.69, -0.20, -0.05]),  # same tokens, one logprob moved
        result(DOG, LP_DOG),  # diverges at 2
        result([*CAT[:4], "!"], LP_CAT),  # diverges at 4
    ]
    report = AuditReport.from_results(runs, seed=7)
    assert not report.identical and report.distinct_answers == 3
    d = report.divergence
    assert d is not None and (d.run, d.position) == (2, 2)
    assert (d.token_ref, d.token_other) == (" sat", " ran") and d.prefix == "The cat"
    assert d.alternatives_ref == ALTS
    # by hand: run 1 shares all 5 tokens (|Δ| 0.01 at 2), run 2 shares 2 (0.05 at 1),
    # run 3 shares 4 (0): the largest is run 2's
    assert report.max_abs_dlogprob == abs(-0.50 - -0.45)
    assert report.max_abs_dlogprob_at == (2, 1)
    assert report.shared_prefix == 2
    frame = report.frame()
    assert frame["first_divergence"].tolist() == [pd_na(), pd_na(), 2, 4]
    assert frame["identical_to_run0"].tolist() == [True, True, False, False]
    text = str(report)
    assert "NOT IDENTICAL: 3 different answers among 4 runs" in text
    assert "First divergence: token 2 (0-based), between run 0 and run 2" in text
    assert "What seed promises" in text and "does not promise" in text
    assert "NOT IDENTICAL" in report._repr_html_()


def pd_na() -> Any:
    import pandas as pd

    return pd.NA


def test_report_of_identical_runs() -> None:
    report = AuditReport.from_results([result(CAT, LP_CAT)] * 3, seed=7)
    assert report.identical and report.divergence is None and report.max_abs_dlogprob == 0.0
    assert "IDENTICAL: all 3 answers are the same, token for token (5 tokens)" in str(report)
    assert "exactly the same probabilities" in str(report)


def test_audit_refuses_bad_input_before_sending() -> None:
    with pytest.raises(ParameterError, match="repeats"):
        audit("hi", repeats=1)
    with pytest.raises(ParameterError, match="temperature"):
        audit("hi", temperature=5)


@pytest.mark.slow
def test_seeded_audit_on_the_embedded_server_is_identical(local_server: Any) -> None:
    with tmlab.Client(base_url=local_server.base_url) as client:
        report = audit(
            "Tell me a story about a fox.",
            repeats=3,
            seed=7,
            client=client,
            temperature=1.2,
            max_tokens=12,
        )
    assert report.identical, str(report)
    assert report.unit == "token" and report.max_abs_dlogprob == 0.0
    assert report.params["top_logprobs"] == 5 and report.params["seed"] == 7
    assert len(report.results[0].choices[0].logprobs or []) == 12
    assert "IDENTICAL" in str(report) and "What seed promises" in str(report)
    frame = report.frame()
    assert len(frame) == 3 and frame["identical_to_run0"].all()

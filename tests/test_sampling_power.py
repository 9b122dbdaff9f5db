"""The test of notebook 07: does a sampler draw from a probability tree? (tmlab.sampling)

The exact binomial arithmetic against values computed another way, then the test itself on the
embedded server: the tree of :func:`tmlab.continuations` against 600 real samples passes, and the
same tree with any category's probability moved by 0.1 is rejected.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import tmlab
from tmlab.errors import ParameterError
from tmlab.local import LocalServer
from tmlab.sampling import binomial_p_value, binomial_power, frequency_test, least_power

QUESTION = "Is the sky blue? Answer yes or no."  # notebook 07's
N = 600  # notebook 07's sample size, alpha and shift
ALPHA = 0.01
SHIFT = 0.1
CATEGORIES = 10  # at most: 3 x 3 paths of depth 2, and "(other)"


def _brute_p_value(k: int, n: int, p: float) -> float:
    """The two-sided exact test, summed term by term with integer binomial coefficients."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return min(1.0, math.fsum(q for q in pmf if q <= pmf[k] * (1 + 1e-7)))


def test_the_p_value_is_the_exact_two_sided_binomial_test() -> None:
    # Bin(10, 1/2): P(K <= 3) + P(K >= 7) = 2 (1 + 10 + 45 + 120) / 1024
    assert binomial_p_value(3, 10, 0.5) == pytest.approx(352 / 1024, rel=1e-12)
    for k, n, p in [(0, 20, 0.1), (5, 20, 0.1), (9, 30, 0.4), (30, 30, 0.9), (61, 600, 0.1)]:
        assert binomial_p_value(k, n, p) == pytest.approx(_brute_p_value(k, n, p), rel=1e-9)
    # a probability of 0 or 1 allows one count only
    assert binomial_p_value(0, 10, 0.0) == 1.0 and binomial_p_value(1, 10, 0.0) == 0.0
    assert binomial_p_value(10, 10, 1.0) == 1.0 and binomial_p_value(9, 10, 1.0) == 0.0


def test_the_power_is_what_a_simulation_finds() -> None:
    rng = np.random.default_rng(0)
    level = ALPHA / CATEGORIES
    for claimed, true in [(0.5, 0.4), (0.6, 0.5), (0.2, 0.1), (0.05, 0.15)]:
        p_values = np.array([binomial_p_value(k, N, claimed) for k in range(N + 1)])
        counts = rng.binomial(N, true, size=20_000)
        simulated = float((p_values[counts] < level).mean())
        # 20,000 draws: a standard error of at most 0.0036
        assert binomial_power(N, claimed, true, level) == pytest.approx(simulated, abs=0.015)


def test_600_samples_catch_an_error_of_0_1_that_60_miss() -> None:
    level = ALPHA / CATEGORIES
    assert least_power(N, level, SHIFT) >= 0.9
    # the worst case sits near 0.5, where a count varies most
    assert min(binomial_power(N, 0.5, t, level) for t in (0.4, 0.6)) >= 0.9
    # the earlier design, 60 samples at 0.001/m: a tree saying 0.7 where the truth is 0.5
    # passes more often than not
    assert binomial_power(60, 0.7, 0.5, 0.001 / CATEGORIES) < 0.5


def test_claims_that_are_not_a_distribution_are_refused() -> None:
    with pytest.raises(ParameterError, match="add up to"):
        frequency_test(["a"] * 10, {"a": 0.7, "b": 0.4})
    with pytest.raises(ParameterError, match="probability"):
        frequency_test(["a"] * 10, {"a": -0.1})


@pytest.fixture(scope="module")
def drawn(parallel_server: LocalServer) -> tuple[pd.Series, pd.Series]:
    """Notebook 07's tree (its leaves' probabilities by text) and N real two-token samples."""
    with tmlab.Client(base_url=parallel_server.base_url) as client:
        tree = tmlab.continuations(QUESTION, depth=2, width=3, client=client)
        samples = tmlab.sweep(
            QUESTION,
            grid={"seed": list(range(N))},
            max_tokens=2,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            progress=False,
            client=client,
        )
    assert samples["error"].isna().all(), samples["error"].dropna().tolist()
    leaves = tree[(tree["depth"] == 2) | tree["ends"]]
    return leaves.groupby("text")["path_prob"].sum(), samples["text"]


@pytest.mark.slow
def test_the_true_tree_passes(drawn: tuple[pd.Series, pd.Series]) -> None:
    claimed, texts = drawn
    result = frequency_test(texts, claimed, alpha=ALPHA, shift=SHIFT)
    assert len(result) <= CATEGORIES
    assert result.attrs["least_power"] >= 0.9
    assert result.attrs["agree"], result


def _shifted(claimed: pd.Series, category: str, by: float) -> pd.Series:
    """The claims with ``category`` (or the rest, "(other)") moved by ``by``, the others scaled
    so that the whole still adds up to 1."""
    full = {**claimed.to_dict(), "(other)": max(0.0, 1.0 - float(claimed.sum()))}
    rest = 1.0 - full[category]
    moved = {k: (v + by if k == category else v * (rest - by) / rest) for k, v in full.items()}
    moved.pop("(other)")
    return pd.Series(moved)


@pytest.mark.slow
def test_a_tree_wrong_by_0_1_in_any_category_is_rejected(
    drawn: tuple[pd.Series, pd.Series],
) -> None:
    claimed, texts = drawn
    passed, tried = [], 0
    for category in [*claimed.index, "(other)"]:
        p = float(claimed.get(category, 1.0 - claimed.sum()))
        for by in (-SHIFT, SHIFT):
            if not 0.0 <= p + by <= 1.0:
                continue
            tried += 1
            result = frequency_test(texts, _shifted(claimed, category, by), alpha=ALPHA)
            if result.attrs["agree"]:
                passed.append((category, round(p, 3), by))
    assert tried >= 10  # every category moved up, the likelier ones down too
    assert not passed, f"wrong trees that passed: {passed}"

"""Does a sampler draw from given numbers? Exact binomial tests and their power.

**Does a sampler draw from given numbers?** :func:`frequency_test` compares outcomes sampled
by real requests (a sweep's answers) with the probabilities something claims for them (a
:func:`tmlab.continuations` tree): one exact two-sided binomial test per outcome
(:func:`binomial_p_value`), Bonferroni-corrected, and how likely it was to catch a claim wrong
by a given amount (:func:`binomial_power`, :func:`least_power`), computed exactly from the
binomial distribution.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from tmlab.errors import ParameterError

__all__ = [
    "FREQUENCY_COLUMNS",
    "binomial_p_value",
    "binomial_power",
    "frequency_test",
    "least_power",
]


# Two outcomes whose probabilities agree to this relative precision are equally likely (the
# two-sided exact test counts every outcome at most as likely as the observed one).
_TIE: Final = 1e-7


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(K = k) for k = 0..n under Bin(n, p), computed in logs (no overflow for large n)."""
    k = np.arange(n + 1)
    if p <= 0.0 or p >= 1.0:
        return (k == (0 if p <= 0.0 else n)).astype(float)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    log_pmf = (
        log_fact[n] - log_fact[k] - log_fact[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    )
    return np.exp(log_pmf)


def _p_values(n: int, p: float) -> np.ndarray:
    """The exact two-sided p-value of every count 0..n under Bin(n, p)."""
    pmf = _binomial_pmf(n, p)
    ascending = np.sort(pmf)
    cumulative = np.cumsum(ascending)
    at_most = np.searchsorted(ascending, pmf * (1 + _TIE), side="right")
    return np.minimum(1.0, cumulative[at_most - 1])


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ParameterError("n", f"n={n!r} is not a number of samples", "an int ≥ 1")
    return int(n)


def _check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ParameterError(name, f"{name}={value!r} is not a probability", "a number in 0..1")
    return float(value)


def binomial_p_value(k: int, n: int, p: float) -> float:
    """The exact two-sided binomial test of ``k`` successes in ``n`` draws against ``p``.

    The probability, if each draw succeeds with probability ``p``, of a count at most as likely
    as ``k`` (the same definition as R's ``binom.test`` and SciPy's ``binomtest``).
    """
    n = _check_n(n)
    p = _check_prob("p", p)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= n:
        raise ParameterError("k", f"k={k!r} is not a count of {n} draws", f"an int in 0..{n}")
    return float(_p_values(n, p)[int(k)])


def binomial_power(n: int, claimed: float, true: float, level: float) -> float:
    """The chance that the exact test at ``level`` rejects ``claimed`` when the truth is ``true``.

    The count is Bin(``n``, ``true``); the test rejects when its p-value
    (:func:`binomial_p_value` against ``claimed``) is below ``level``. Exact, no simulation.
    """
    n = _check_n(n)
    rejects = _p_values(n, _check_prob("claimed", claimed)) < _check_prob("level", level)
    return float(_binomial_pmf(n, _check_prob("true", true))[rejects].sum())


def least_power(n: int, level: float, shift: float = 0.1, *, grid: int = 1001) -> float:
    """The smallest :func:`binomial_power` against any claim wrong by ``shift``.

    The minimum over claimed probabilities ``0, 1/(grid-1), …, 1`` and true ones
    ``claimed ± shift`` (within 0..1): how sure ``n`` samples are to catch such an error,
    whatever the probability. The worst case is near 0.5, where a count varies most.
    """
    n = _check_n(n)
    level = _check_prob("level", level)
    shift = _check_prob("shift", shift)
    if shift == 0:
        raise ParameterError("shift", "shift=0: no claim is wrong by 0", "a number in (0, 1]")
    worst = 1.0
    for claimed in np.linspace(0.0, 1.0, grid):
        rejects = _p_values(n, float(claimed)) < level
        for true in (claimed - shift, claimed + shift):
            if -_TIE <= true <= 1 + _TIE:
                power = _binomial_pmf(n, min(1.0, max(0.0, float(true))))[rejects].sum()
                worst = min(worst, float(power))
    return worst


FREQUENCY_COLUMNS: Final = [
    "outcome",
    "prob",
    "expected",
    "observed",
    "p_value",
    "power",
    "rejects",
]


def frequency_test(
    samples: Iterable[Hashable],
    probs: Mapping[Hashable, float] | pd.Series,
    *,
    alpha: float = 0.01,
    shift: float = 0.1,
    other: str = "(other)",
) -> pd.DataFrame:
    """Do sampled outcomes follow the probabilities claimed for them? One row per outcome.

    ``samples`` are the outcomes drawn (a sweep's ``text`` column); ``probs`` the claimed
    probability of each outcome (a Series or mapping). Outcomes not in ``probs`` (a missing
    one, None or NaN, too) are counted together in one more row, ``other``, whose claimed
    probability is the rest, ``1 - sum(probs)``. Each row is one exact two-sided binomial test
    of its count against ``n × prob``; with ``m`` rows the claim is rejected when any p-value
    is below ``alpha / m`` (Bonferroni), so a true claim is rejected with probability at most
    ``alpha``. Columns: ``outcome, prob, expected, observed, p_value``, ``power`` (the chance
    that this row's test rejects if the row's true probability were ``shift`` away, the worse
    side) and ``rejects``. ``df.attrs``: ``n``, ``alpha``, ``level`` (``alpha / m``),
    ``agree`` (no row rejects) and ``least_power`` (:func:`least_power` at this ``n`` and
    level: the chance of catching a claim wrong by ``shift`` in any row, whatever its
    probability).
    """
    alpha = _check_prob("alpha", alpha)
    shift = _check_prob("shift", shift)
    claimed = {key: _check_prob(f"probs[{key!r}]", float(v)) for key, v in dict(probs).items()}
    total = math.fsum(claimed.values())
    if total > 1 + 1e-9:
        raise ParameterError("probs", f"the claimed probabilities add up to {total:.6g}", "≤ 1")
    if other in claimed:
        raise ParameterError("other", f"other={other!r} is one of the outcomes", "another name")
    observed = pd.Series(list(samples), dtype=object).value_counts(dropna=False)
    n = _check_n(int(observed.sum()))
    counts = {key: int(observed.get(key, 0)) for key in claimed}
    counts[other] = n - sum(counts.values())
    claimed[other] = max(0.0, 1.0 - total)
    level = alpha / len(claimed)
    rows = []
    for key, p in claimed.items():
        k = counts[key]
        sides = [t for t in (p - shift, p + shift) if 0.0 <= t <= 1.0]
        power = min(binomial_power(n, p, t, level) for t in sides) if sides else math.nan
        p_value = binomial_p_value(k, n, p)
        rows.append((key, p, n * p, k, p_value, power, p_value < level))
    df = pd.DataFrame.from_records(rows, columns=FREQUENCY_COLUMNS)
    df.attrs.update(
        n=n,
        alpha=alpha,
        level=level,
        shift=shift,
        agree=not bool(df["rejects"].any()),
        least_power=least_power(n, level, shift),
    )
    df.attrs["notes"] = (
        f"{n} samples. p_value: exact two-sided binomial test of the observed count against "
        f"n x prob; rejects: p_value < alpha/m = {alpha:g}/{len(df)} (Bonferroni: a true claim "
        f"is rejected with probability at most {alpha:g}). power: the chance this row's test "
        f"rejects if its true probability were {shift:g} away (the worse side)."
    )
    return df

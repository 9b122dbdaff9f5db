"""Frames: ChatResults → plain pandas DataFrames with fixed column names.

Frames know nothing of HTTP or display. Every number says which distribution it describes:

- ``logprob``/``prob`` are what the server returned for the generated token. For the embedded
  server (and vLLM by default) that is the model's raw distribution: log-softmax of the
  logits *before* temperature, penalties and truncation — not the distribution the token was
  sampled from; with ``logprobs_mode="processed_logprobs"`` it is that one. Which it is comes
  from the response when it says, else from :func:`tmlab.probe` for that server and model,
  else "as returned by the server (meaning not probed)": the notes say which
  (``df.attrs["logprobs_mode"]``: ``"raw_logprobs"``, ``"processed_logprobs"`` or None).
- ``rank``, ``entropy``, ``top_mass`` and ``other_mass`` are computed over the *returned*
  alternatives (``top_logprobs``), the only part of the distribution the server sent.
  ``entropy = -Σ p·ln p`` over those alternatives, in nats: a lower bound of the entropy of the
  full distribution (the missing terms are all ≥ 0). ``other_mass = 1 - top_mass`` is the
  probability outside the returned alternatives, shown rather than hidden.

The same notes travel with each frame in ``df.attrs["notes"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tmlab.result import ChatResult, TokenLogprob

__all__ = [
    "LOGPROBS_COLUMNS",
    "LONG_COLUMNS",
    "USAGE_COLUMNS",
    "logprobs_frame",
    "mean_entropy",
    "usage_frame",
]

LOGPROBS_COLUMNS = [
    "choice",
    "position",
    "token",
    "token_id",
    "logprob",
    "prob",
    "rank",
    "entropy",
    "top_mass",
    "other_mass",
    "top_tokens",
    "top_logprobs",
]
LONG_COLUMNS = [
    "choice",
    "position",
    "token",
    "alt_rank",
    "alt_token",
    "alt_token_id",
    "alt_logprob",
    "alt_prob",
    "is_sampled",
]
USAGE_COLUMNS = [
    "model",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "latency_s",
    "ttft_s",
    "tokens_per_s",
    "finish_reason",
    "sequence_logprob",
    "mean_logprob",
    "perplexity",
]

LOGPROBS_NOTES = (
    "logprob/prob: for the generated token, {meaning}. rank, entropy, "
    "top_mass, other_mass: over the returned top_logprobs alternatives only; entropy is in nats "
    "and is a lower bound of the full distribution's entropy; other_mass is the probability "
    "outside the returned alternatives. rank is <NA> when the generated token is not among them "
    "or its logprob is unknown (null)."
)
LONG_NOTES = (
    "one row per returned alternative (top_logprobs), alt_rank 1 = most likely; probabilities "
    "{meaning}."
)


def _rows(res: ChatResult) -> Iterable[tuple[int, int, Any]]:
    for choice in res.choices:
        for pos, tok in enumerate(choice.logprobs or ()):
            yield choice.index, pos, tok


def logprobs_frame(res: ChatResult, long: bool = False) -> pd.DataFrame:
    """One row per generated token (or, with ``long=True``, one row per alternative).

    Columns: ``choice, position, token, token_id, logprob, prob, rank, entropy, top_mass,
    other_mass, top_tokens, top_logprobs`` — see the module docstring for what each number
    describes. Empty (with the columns) when the response carries no logprobs.
    """
    if long:
        return _long_frame(list(_rows(res)), res)
    # Column by column, with the per-alternative work done by map/attrgetter and
    # itertools in C: a long answer has hundreds of thousands of alternatives.
    toks: list[TokenLogprob] = []
    choice_col: list[np.ndarray] = []
    for choice in res.choices:
        got = choice.logprobs or ()
        toks.extend(got)
        choice_col.append(np.full(len(got), choice.index, dtype=np.int64))
    n = len(toks)
    tops = list(map(_get_top, toks))
    top_tokens = [list(map(_get_token, top)) for top in tops]
    top_logprobs = [list(map(_get_logprob, top)) for top in tops]
    lp = np.array(list(map(_get_logprob, toks)), dtype=float)
    n_alts = np.array(list(map(len, tops)), dtype=np.int64)
    alt_lp = np.fromiter(chain.from_iterable(top_logprobs), dtype=float, count=int(n_alts.sum()))
    row_of_alt = np.repeat(np.arange(n), n_alts)

    alt_p = np.exp(alt_lp)
    # 0·ln 0 = 0: an alternative of probability 0 contributes nothing.
    contrib = np.zeros_like(alt_p)
    positive = alt_p > 0
    contrib[positive] = -alt_p[positive] * alt_lp[positive]
    has_alts = n_alts > 0
    entropy = np.where(has_alts, np.bincount(row_of_alt, weights=contrib, minlength=n), np.nan)
    top_mass = np.where(has_alts, np.bincount(row_of_alt, weights=alt_p, minlength=n), np.nan)
    other_mass = np.where(has_alts, np.clip(1.0 - top_mass, 0.0, 1.0), np.nan)

    # rank = 1 + number of alternatives strictly more likely than the generated token, but only
    # when the generated token is among the alternatives and its logprob is known (a null
    # logprob compares false with everything and would read as rank 1).
    sampled_in_top = np.array(list(map(_contains, toks, top_tokens)), dtype=bool)
    sampled_in_top &= ~np.isnan(lp)
    above = np.bincount(row_of_alt, weights=(alt_lp > lp[row_of_alt]).astype(float), minlength=n)
    rank = pd.array(np.where(sampled_in_top, above + 1, 0).astype(np.int64), dtype="Int64")
    rank[~sampled_in_top] = pd.NA

    df = pd.DataFrame(
        {
            "choice": np.concatenate(choice_col) if choice_col else np.zeros(0, np.int64),
            "position": np.concatenate([np.arange(len(c), dtype=np.int64) for c in choice_col])
            if choice_col
            else np.zeros(0, np.int64),
            "token": list(map(_get_token, toks)),
            "token_id": pd.array(list(map(_get_token_id, toks)), dtype="Int64"),
            "logprob": lp,
            "prob": np.exp(lp),
            "rank": rank,
            "entropy": entropy,
            "top_mass": top_mass,
            "other_mass": other_mass,
            "top_tokens": top_tokens,
            "top_logprobs": top_logprobs,
        },
        columns=LOGPROBS_COLUMNS,
    )
    _describe(df, res)
    return df


def _describe(df: pd.DataFrame, res: ChatResult, notes: str = LOGPROBS_NOTES) -> None:
    """Notes saying which distribution the numbers describe (response, probe, or unknown)."""
    from tmlab.meaning import meaning

    m = meaning(res)
    df.attrs["notes"] = " ".join([notes.format(meaning=m.text), *res.notes])
    df.attrs["logprobs_mode"] = m.mode
    df.attrs["logprobs_meaning_source"] = m.source


_get_top = attrgetter("top")
_get_token = attrgetter("token")
_get_token_id = attrgetter("token_id")
_get_logprob = attrgetter("logprob")


def _contains(tok: TokenLogprob, top_tokens: list[str]) -> bool:
    """Whether the generated token is among the alternatives (by id when all have one)."""
    if tok.token_id is not None:
        ids = list(map(_get_token_id, tok.top))
        if None not in ids:
            return tok.token_id in ids
    return tok.token in top_tokens


def _long_frame(rows: list[tuple[int, int, Any]], res: ChatResult) -> pd.DataFrame:
    flat = [(c, p, t, i, a) for c, p, t in rows for i, a in enumerate(t.top, start=1)]
    alt_lp = np.fromiter((a.logprob for *_, a in flat), dtype=float, count=len(flat))
    df = pd.DataFrame(
        {
            "choice": np.fromiter((f[0] for f in flat), dtype=np.int64, count=len(flat)),
            "position": np.fromiter((f[1] for f in flat), dtype=np.int64, count=len(flat)),
            "token": [f[2].token for f in flat],
            "alt_rank": np.fromiter((f[3] for f in flat), dtype=np.int64, count=len(flat)),
            "alt_token": [a.token for *_, a in flat],
            "alt_token_id": pd.array([a.token_id for *_, a in flat], dtype="Int64"),
            "alt_logprob": alt_lp,
            "alt_prob": np.exp(alt_lp),
            "is_sampled": [
                (a.token_id == t.token_id)
                if a.token_id is not None and t.token_id is not None
                else a.token == t.token
                for _, _, t, _, a in flat
            ],
        },
        columns=LONG_COLUMNS,
    )
    _describe(df, res, LONG_NOTES)
    return df


def price_of(prices: Mapping[str, Any] | None, model: str | None) -> Mapping[str, float] | None:
    if not prices:
        return None
    if "input" in prices or "output" in prices:
        return prices
    entry = prices.get(model or "")
    return entry if isinstance(entry, Mapping) else None


def mean_entropy(res: ChatResult, choice: int = 0) -> float:
    """Mean over one choice's positions of ``entropy`` (nats, over the returned alternatives:
    a lower bound); NaN when the answer has no ``top_logprobs``."""
    frame = logprobs_frame(res)
    values = frame.loc[frame["choice"] == choice, "entropy"].dropna()
    return float(values.to_numpy().mean()) if len(values) else math.nan


_LIKELIHOOD = ("sequence_logprob", "mean_logprob", "perplexity")


def usage_frame(
    results: ChatResult | Iterable[ChatResult],
    prices: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per response: token counts, latency, time to first token, tokens/s, cost.

    ``prices`` in USD per million tokens, either ``{"input": 0.3, "output": 1.2,
    "cached_input": 0.0}`` for every model or ``{model_name: {...}}``. Cached input tokens are
    billed at ``cached_input`` (default 0, as on Tensormesh). A ``cost_usd`` column is added
    when prices are given; it is <NA> for a model without a price. ``sequence_logprob``,
    ``mean_logprob`` and ``perplexity`` are over the first choice's generated tokens with
    logprobs, as returned by the server (NaN without logprobs; see :mod:`tmlab.likelihood`).
    """
    items = list(results) if isinstance(results, Iterable) else [results]
    records = []
    for r in items:
        u, t = r.usage, r.timing
        records.append(
            {
                "model": r.model,
                "prompt_tokens": u.prompt_tokens,
                "cached_tokens": u.cached_tokens,
                "completion_tokens": u.completion_tokens,
                "reasoning_tokens": u.reasoning_tokens,
                "total_tokens": u.total_tokens,
                "latency_s": t.latency_s,
                "ttft_s": t.ttft_s,
                "tokens_per_s": t.tokens_per_s,
                "finish_reason": r.finish_reason,
                "sequence_logprob": r.sequence_logprob,
                "mean_logprob": r.mean_logprob,
                "perplexity": r.perplexity,
            }
        )
    df = pd.DataFrame.from_records(records, columns=USAGE_COLUMNS)
    for col in (
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "total_tokens",
    ):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    for col in ("latency_s", "ttft_s", "tokens_per_s", *_LIKELIHOOD):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if prices:
        costs: list[float | None] = []
        for r in items:
            price = price_of(prices, r.model)
            u = r.usage
            if price is None or u.prompt_tokens is None or u.completion_tokens is None:
                costs.append(None)
                continue
            cached = u.cached_tokens or 0
            costs.append(
                (
                    (u.prompt_tokens - cached) * float(price.get("input", 0.0))
                    + cached * float(price.get("cached_input", 0.0))
                    + u.completion_tokens * float(price.get("output", 0.0))
                )
                / 1e6
            )
        df["cost_usd"] = pd.array(costs, dtype="Float64")
    return df

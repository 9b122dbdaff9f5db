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
    "LOGPROBS_FOR_COLUMNS",
    "LONG_COLUMNS",
    "TRACE_COLUMNS",
    "USAGE_COLUMNS",
    "cache_hit_rate",
    "logprobs_for_frame",
    "logprobs_frame",
    "mean_entropy",
    "request_cost",
    "stage_summary",
    "trace_frame",
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
    "cache_hit_rate",
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


def cache_hit_rate(prompt_tokens: Any, cached_tokens: Any) -> float | None:
    """``cached_tokens / prompt_tokens``: the share of the prompt the server reused from its
    cache. ``None`` when either count is unknown (the server did not say) or the prompt is
    empty: unknown is not 0."""
    if _missing(prompt_tokens) or _missing(cached_tokens) or int(prompt_tokens) <= 0:
        return None
    return int(cached_tokens) / int(prompt_tokens)


def request_cost(
    price: Mapping[str, Any], prompt_tokens: int, cached_tokens: int | None, completion_tokens: int
) -> tuple[float, float]:
    """``(cost_usd, saved_usd)`` of one request at ``price`` (USD per million tokens:
    ``input``, ``output``, ``cached_input`` — default 0, as on Tensormesh).

    Cached prompt tokens are billed at ``cached_input``, the others at ``input``;
    ``saved_usd = cached_tokens × (input − cached_input)``: what the cache hits saved against
    the same request billed without a cache (cached tokens × the input price when cached input
    is free). An unknown ``cached_tokens`` counts as 0 cached.
    """
    cached = int(cached_tokens) if cached_tokens is not None and not _missing(cached_tokens) else 0
    inp = float(price.get("input", 0.0))
    cached_in = float(price.get("cached_input", 0.0))
    cost = (
        (prompt_tokens - cached) * inp
        + cached * cached_in
        + completion_tokens * float(price.get("output", 0.0))
    )
    return cost / 1e6, cached * (inp - cached_in) / 1e6


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


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
    """One row per response: token counts, cache hit rate, latency, TTFT, tokens/s, cost.

    ``cache_hit_rate = cached_tokens / prompt_tokens`` (<NA> when the server did not report
    cached tokens). ``prices`` in USD per million tokens, either ``{"input": 0.3, "output":
    1.2, "cached_input": 0.0}`` for every model or ``{model_name: {...}}``. Cached input tokens
    are billed at ``cached_input`` (default 0, as on Tensormesh). ``cost_usd`` and
    ``saved_usd`` (cached tokens × (input − cached_input) price: what the cache saved) are
    added when prices are given; <NA> for a model without a price. ``sequence_logprob``,
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
                "cache_hit_rate": cache_hit_rate(u.prompt_tokens, u.cached_tokens),
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
    df["cache_hit_rate"] = pd.array(df["cache_hit_rate"].tolist(), dtype="Float64")
    if prices:
        costs: list[float | None] = []
        saved: list[float | None] = []
        for r in items:
            price = price_of(prices, r.model)
            u = r.usage
            if price is None or u.prompt_tokens is None or u.completion_tokens is None:
                costs.append(None)
                saved.append(None)
                continue
            cost, save = request_cost(price, u.prompt_tokens, u.cached_tokens, u.completion_tokens)
            costs.append(cost)
            saved.append(save)
        df["cost_usd"] = pd.array(costs, dtype="Float64")
        df["saved_usd"] = pd.array(saved, dtype="Float64")
    return df


TRACE_COLUMNS = [
    "choice",
    "position",
    "token",
    "stage_index",
    "stage",
    "setting",
    "active",
    "kept",
    "removed_mass",
    "entropy",
    "candidate",
    "candidate_id",
    "p",
    "cut_by",
    "drawn",
]

TRACE_NOTES = (
    "The sampler trace, from the server's own sampler chain in its order: p is each "
    "candidate's probability after the stage (0 once a stage removed it), over the whole "
    "vocabulary; kept counts the tokens still allowed; removed_mass is the probability, in "
    "the previous stage's distribution, that the stage removed; entropy is over the whole "
    "distribution after the stage, in nats. The first stage is the model's raw "
    "distribution, the last the one the token was drawn from. Exact, not reconstructed."
)


def trace_frame(res: ChatResult, choice: int | None = None) -> pd.DataFrame:
    """The sampler trace (``sampler_trace`` of the embedded server): one row per (position,
    stage, candidate); empty, with a note saying why, when the response has none."""
    records: list[tuple[Any, ...]] = []
    found = False
    for c in res.choices:
        if choice is not None and c.index != choice:
            continue
        trace = c.raw.get("sampler_trace")
        if not isinstance(trace, dict):
            continue
        found = True
        for pos in trace.get("positions") or []:
            cands = pos["candidates"]
            for si, st in enumerate(pos["stages"]):
                for cand, p in zip(cands, st["p"], strict=True):
                    records.append(
                        (
                            c.index,
                            pos["position"],
                            pos["token"],
                            si,
                            st["stage"],
                            st["setting"],
                            st["active"],
                            st["kept"],
                            st["removed_mass"],
                            st["entropy"],
                            cand["token"],
                            cand["id"],
                            p,
                            cand["cut_by"],
                            cand["id"] == pos["token_id"],
                        )
                    )
    df = pd.DataFrame.from_records(records, columns=TRACE_COLUMNS)
    # settings are ints, floats, strings or dicts: kept as sent (pandas would make 20 → 20.0)
    df["setting"] = pd.Series([r[5] for r in records], dtype=object, index=df.index)
    df.attrs["notes"] = (
        TRACE_NOTES
        if found
        else "No sampler trace in this response: ask with sampler_trace=True (tmlab's "
        "embedded server; other servers do not report their sampler's stages)."
    )
    return df


LOGPROBS_FOR_COLUMNS = [
    "choice",
    "position",
    "token",
    "token_id",
    "raw_logprob",
    "raw_prob",
    "raw_rank",
    "logprob",
    "prob",
    "rank",
    "cut_by",
]


def logprobs_for_frame(res: ChatResult) -> pd.DataFrame:
    """Given tokens' numbers at every generated position (``logprobs_for``): raw log-probability
    and rank (the model's distribution), and in the distribution the token was drawn from
    (NaN and ``cut_by`` once a stage removed it). Exact, over the whole vocabulary."""
    records: list[tuple[Any, ...]] = []
    for c in res.choices:
        lf = c.raw.get("logprobs_for")
        if not isinstance(lf, dict):
            continue
        tokens = lf["tokens"]
        for pos in lf["positions"]:
            for i, tok in enumerate(tokens):
                raw, lp = pos["raw_logprob"][i], pos["logprob"][i]
                records.append(
                    (
                        c.index,
                        pos["position"],
                        tok["token"],
                        tok["id"],
                        raw,
                        math.exp(raw),
                        pos["raw_rank"][i],
                        math.nan if lp is None else lp,
                        0.0 if lp is None else math.exp(lp),
                        pos["rank"][i],
                        pos["cut_by"][i],
                    )
                )
    df = pd.DataFrame.from_records(records, columns=LOGPROBS_FOR_COLUMNS)
    for col in ("raw_rank", "rank"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    df.attrs["notes"] = (
        "raw_*: the model's distribution (log-softmax of the logits); logprob, prob, rank: "
        "the distribution the token was drawn from, after the sampler's stages (NaN, prob 0: "
        "removed by cut_by). Ranks over the whole vocabulary, 1 = most likely."
    )
    return df


def stage_summary(res: ChatResult, choice: int = 0, *, top: int = 5) -> pd.DataFrame:
    """The sampler trace in brief: one row per (position, stage that acted), with the stage's
    setting, how many tokens it kept, the mass it removed, the entropy after it and its
    ``top`` most likely candidates (``token p``, most likely first)."""
    df = trace_frame(res, choice)
    rows: list[dict[str, Any]] = []
    if not df.empty:
        active = df[df["active"]]
        for (pos, _), g in active.groupby(["position", "stage_index"], sort=True):
            best = g[g["p"] > 0].nlargest(top, "p")
            first = g.iloc[0]
            setting = first["setting"]
            rows.append(
                {
                    "position": pos,
                    "token": first["token"],
                    "stage": first["stage"],
                    "setting": "" if setting is None else str(setting),
                    "kept": first["kept"],
                    "removed_mass": first["removed_mass"],
                    "entropy": first["entropy"],
                    "top": " · ".join(
                        f"{t!r} {p:.3f}" for t, p in zip(best["candidate"], best["p"], strict=True)
                    ),
                }
            )
    out = pd.DataFrame(
        rows,
        columns=[
            "position",
            "token",
            "stage",
            "setting",
            "kept",
            "removed_mass",
            "entropy",
            "top",
        ],
    )
    out.attrs["notes"] = df.attrs["notes"]
    return out

"""What-if sampling: reshape one response's returned ``top_logprobs`` locally, with no request.

A response asked with ``logprobs=True, top_logprobs=N`` carries, at every position, the N most
likely tokens and their log-probabilities. From those alone this module recomputes what the
distribution at each position *would be* under another ``temperature``, ``top_k``, ``top_p``
or ``min_p``:

1. ``softmax(logprob / temperature)`` over the returned alternatives (``temperature=0``: the
   limit T → 0, all mass on the most likely alternative; alternatives that tie for the top
   share it equally — a greedy server picks one of them, which one is up to the server);
2. truncation, in this order, each step renormalised before the next:
   ``top_k`` keeps every alternative whose probability is ≥ the k-th largest (a tie at the
   boundary keeps them all, as vLLM and transformers do; ``0`` or ``-1``: off);
   ``top_p`` keeps the smallest set of most likely alternatives whose mass is ≥ p, whole tie
   groups at a time (``top_p=0`` keeps the most likely alternative(s));
   ``min_p`` keeps every alternative with probability ≥ ``min_p`` × the largest;
3. renormalisation over what is kept.

Boundaries are compared with an absolute tolerance of :data:`TOLERANCE` (1e-9), so that a
hand-written boundary (``top_p=0.8`` over 0.5, 0.3, 0.2) behaves as written, not as float
rounding of ``exp(log(0.3))`` decides.

``order="temperature_first"`` (the default) is the order above, that of vLLM and Hugging Face
transformers. ``order="truncate_first"`` truncates the *raw* distribution and applies the
temperature to what is kept: the order of llama.cpp's sampler chain, used by tmlab's embedded
server. The two differ for ``top_p`` and ``min_p`` when the temperature is not 1.

**This is an approximation.** The probability outside the returned alternatives
(``other_mass`` of the raw distribution) is unknown token by token, and the what-if treats it as
if it did not exist. How good it is (temperature first, the returned alternatives being the
true top N): ``top_k`` ≤ N is exact (alone or with top_p/min_p); ``min_p`` is exact when
``(q / p_max)^(1/T) < min_p`` (``q`` the smallest returned probability: no unseen token can
pass); without truncation the
total-variation error is exactly the tempered mass outside the returned alternatives —
``other_mass`` itself at T = 1, and for T ≤ 1 at most ``r / (1 + r)`` with
``r = (other_mass / q) / Σ_i (p_i / q)^(1/T)``. Above T = 1 the unseen tail gains weight and
``other_mass`` alone no longer bounds the error. Every what-if frame carries that bound per
position (``tv_bound``: 0 = exact, NaN = unknown; see :func:`tv_bound`) and says which
distribution each number describes (``df.attrs["notes"]``, ``df.attrs["distribution"]``).

**Raw logprobs only.** The what-if starts from the model's raw distribution. Logprobs that are
already processed (the distribution the token was drawn from, after the request's own
temperature and truncation: ``logprobs_mode="processed_logprobs"``, or a server that
:func:`tmlab.probe` found to return them) would get a temperature applied twice: a what-if on
them warns (:class:`ProcessedLogprobsWarning`), and its notes say so. A response that carries
both (Fireworks-style ``logprob`` raw beside ``sampling_logprob``) is reshaped from the raw ones.

**Does a sampler draw from given numbers?** :mod:`tmlab.analysis.frequency` (its functions are
here too, as ``tmlab.sampling.frequency_test`` …).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from tmlab.analysis.frequency import (
    FREQUENCY_COLUMNS,
    binomial_p_value,
    binomial_power,
    frequency_test,
    least_power,
)
from tmlab.analysis.sampler_twin import (
    TOLERANCE,
    SamplerSettings,
    check_settings,
    reshape,
    tv_bound,
)
from tmlab.errors import ParameterError

if TYPE_CHECKING:
    from tmlab.result import ChatResult, Choice, TokenLogprob, TopLogprob

__all__ = [
    "ENTROPY_COLUMNS",
    "FREQUENCY_COLUMNS",
    "RAW_LABEL",
    "SAMPLED_COLUMNS",
    "TOLERANCE",
    "WHATIF_COLUMNS",
    "WHATIF_LABEL",
    "ProcessedLogprobsWarning",
    "SamplerSettings",
    "binomial_p_value",
    "binomial_power",
    "check_settings",
    "entropy_frame",
    "frequency_test",
    "least_power",
    "reshape",
    "tv_bound",
    "whatif",
    "whatif_position",
    "whatif_sampled",
]

RAW_LABEL: Final = "raw (as returned)"
WHATIF_LABEL: Final = "what-if (approximation over the returned top_logprobs)"

WHATIF_COLUMNS: Final = [
    "choice",
    "position",
    "rank",
    "token",
    "token_id",
    "is_sampled",
    "logprob",
    "raw_prob",
    "whatif_prob",
    "kept",
    "other_mass",
    "tv_bound",
]
SAMPLED_COLUMNS: Final = [
    "choice",
    "position",
    "token",
    "token_id",
    "logprob",
    "raw_prob",
    "whatif_prob",
    "in_top",
    "n_kept",
    "other_mass",
    "tv_bound",
]
ENTROPY_COLUMNS: Final = [
    "choice",
    "position",
    "token",
    "logprob",
    "surprisal",
    "entropy",
    "top1_token",
    "top1_prob",
    "top2_token",
    "top2_prob",
    "top2_gap",
    "may_diverge",
    "other_mass",
]

_RAW_NOTE = (
    "raw_prob/logprob: as returned by the server ({meaning}), not renormalised; "
    "other_mass: the probability outside the returned alternatives."
)
_TWICE_NOTE = (
    " WARNING: these logprobs are processed (the request's own temperature and truncation are "
    "already in them): the what-if applies its settings on top, a temperature twice; ask with "
    "logprobs_mode='raw_logprobs' for a what-if from the model's own distribution."
)


class ProcessedLogprobsWarning(UserWarning):
    """A what-if on processed logprobs: the temperature would apply twice."""


def _check_raw(res: ChatResult, s: SamplerSettings) -> str:
    """The meaning note; warns when the what-if would reshape processed logprobs."""
    from tmlab.meaning import PROCESSED, meaning

    m = meaning(res)
    note = _RAW_NOTE.format(meaning=m.text)
    if m.mode == PROCESSED:
        note += _TWICE_NOTE
        changes = s.temperature != 1.0 or any(v is not None for v in (s.top_k, s.top_p, s.min_p))
        if changes:
            warnings.warn(
                f"what-if ({s.describe()}) on processed logprobs ({m.source}): they already "
                "carry the request's temperature and truncation, so this applies a temperature "
                "twice. Ask with logprobs_mode='raw_logprobs' (or a server that returns raw "
                "logprobs) for a what-if from the model's own distribution.",
                ProcessedLogprobsWarning,
                stacklevel=3,
            )
    return note


_WHATIF_NOTE = (
    "whatif_prob: an APPROXIMATION, recomputed locally with no new request over the returned "
    "top_logprobs alternatives only (as if other_mass did not exist): softmax(logprob / "
    "temperature), then top_k, top_p, min_p, renormalised; order={order}. kept: may be sampled "
    "under the what-if setting (probability > 0). tv_bound: an upper bound of the "
    "total-variation distance between this what-if and the exact one over the whole vocabulary, "
    "from the returned numbers alone (taking them as the true top alternatives): 0 = exact, "
    "NaN = no bound known (temperature > 1, order=truncate_first, or top_p with min_p)."
)


# --- from a ChatResult ---------------------------------------------------------------------


def _choice(res: ChatResult, choice: int) -> Choice:
    for c in res.choices:
        if c.index == choice:
            if not c.logprobs:
                raise ParameterError(
                    "logprobs",
                    f"choice {choice} carries no logprobs",
                    "a response asked with logprobs=True, top_logprobs ≥ 2",
                )
            return c
    have = [c.index for c in res.choices]
    raise ParameterError("choice", f"choice={choice!r} is not in the response", f"one of {have}")


def _positions(c: Choice, position: int | None) -> range:
    n = len(c.logprobs or ())
    if position is None:
        return range(n)
    if isinstance(position, bool) or not isinstance(position, int | np.integer):
        raise ParameterError("position", f"position={position!r} is not an int", f"0..{n - 1}")
    pos = int(position)
    if not 0 <= pos < n:
        raise ParameterError("position", f"position={pos} is out of range", f"0..{n - 1}")
    return range(pos, pos + 1)


def _is_sampled(alt: TopLogprob, tok: TokenLogprob) -> bool:
    if alt.token_id is not None and tok.token_id is not None:
        return alt.token_id == tok.token_id
    return alt.token == tok.token


def _sorted_alts(tok: TokenLogprob) -> list[TopLogprob]:
    # Most likely first; equal logprobs keep the server's order (sorted() is stable).
    return sorted(tok.top, key=lambda a: -a.logprob)


def _other_mass(alts: list[TopLogprob]) -> float:
    if not alts:
        return math.nan
    return float(min(1.0, max(0.0, 1.0 - sum(math.exp(a.logprob) for a in alts))))


def _attrs(df: pd.DataFrame, s: SamplerSettings, note: str) -> pd.DataFrame:
    df.attrs["notes"] = note + " " + _WHATIF_NOTE.format(order=s.order)
    df.attrs["distribution"] = {"raw_prob": RAW_LABEL, "whatif_prob": WHATIF_LABEL}
    df.attrs["settings"] = {
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "order": s.order,
    }
    df.attrs["approximation"] = True
    return df


def whatif(
    res: ChatResult,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    position: int | None = None,
    choice: int = 0,
    order: str = "temperature_first",
    long: bool = False,
) -> pd.DataFrame:
    """What-if distribution at each position, one row per (position, returned alternative).

    Columns: ``choice, position, rank`` (1 = most likely as returned), ``token, token_id,
    is_sampled, logprob, raw_prob`` (as returned), ``whatif_prob`` (the approximation),
    ``kept`` (may be sampled under the what-if setting), ``other_mass`` (raw mass outside the
    returned alternatives), ``tv_bound`` (a bound of the approximation's error at that
    position, see :func:`tv_bound`). ``position`` restricts to one position. With
    ``long=True``: one row per (position, alternative, distribution) with a ``distribution``
    column saying :data:`RAW_LABEL` or :data:`WHATIF_LABEL` and a ``prob`` column. No request
    is sent; ParameterError for settings outside the parameter table's ranges.
    """
    s = check_settings(temperature, top_k, top_p, min_p, order)
    c = _choice(res, choice)
    note = _check_raw(res, s)
    rows: list[tuple[Any, ...]] = []
    for pos in _positions(c, position):
        tok = (c.logprobs or [])[pos]
        alts = _sorted_alts(tok)
        probs, kept = reshape([a.logprob for a in alts], s)
        other = _other_mass(alts)
        bound = tv_bound([a.logprob for a in alts], s)
        for rank, (alt, p, k) in enumerate(zip(alts, probs, kept, strict=True), start=1):
            rows.append(
                (
                    c.index,
                    pos,
                    rank,
                    alt.token,
                    alt.token_id,
                    _is_sampled(alt, tok),
                    alt.logprob,
                    math.exp(alt.logprob),
                    float(p),
                    bool(k),
                    other,
                    bound,
                )
            )
    df = pd.DataFrame.from_records(rows, columns=WHATIF_COLUMNS)
    df["token_id"] = pd.array(df["token_id"].tolist(), dtype="Int64")
    for col in ("choice", "position", "rank"):
        df[col] = df[col].astype(np.int64)
    for col in ("logprob", "raw_prob", "whatif_prob", "other_mass", "tv_bound"):
        df[col] = df[col].astype(float)
    for col in ("is_sampled", "kept"):
        df[col] = df[col].astype(bool)
    if long:
        df = _long(df)
    return _attrs(df, s, note)


def _long(df: pd.DataFrame) -> pd.DataFrame:
    keys = [
        "choice",
        "position",
        "rank",
        "token",
        "token_id",
        "is_sampled",
        "other_mass",
        "tv_bound",
    ]
    out = df.melt(
        id_vars=keys, value_vars=["raw_prob", "whatif_prob"], var_name="distribution"
    ).rename(columns={"value": "prob"})
    out["distribution"] = out["distribution"].map(
        {"raw_prob": RAW_LABEL, "whatif_prob": WHATIF_LABEL}
    )
    return out.sort_values(["choice", "position", "rank"], kind="stable").reset_index(drop=True)


def whatif_position(res: ChatResult, position: int, **kwargs: Any) -> pd.DataFrame:
    """:func:`whatif` at one position (same columns; keyword arguments as for ``whatif``)."""
    return whatif(res, position=position, **kwargs)


def _sampled_whatif(
    tok: TokenLogprob, alts: list[TopLogprob], s: SamplerSettings
) -> tuple[float, int]:
    """The sampled token's what-if probability (NaN if unknowable) and the kept count."""
    if not alts:
        return math.nan, 0
    probs, kept = reshape([a.logprob for a in alts], s)
    for alt, p in zip(alts, probs, strict=True):
        if _is_sampled(alt, tok):
            return float(p), int(kept.sum())
    # Not among the alternatives: its probability is known, its what-if one only when a rule
    # provably drops it (and then it is 0); otherwise the approximation cannot say.
    lp, top = tok.logprob, alts[0].logprob
    if math.isnan(lp):
        return math.nan, int(kept.sum())
    dropped = s.top_k is not None and s.top_k <= len(alts) and lp < alts[-1].logprob
    if s.temperature == 0 and lp < top:
        dropped = True
    if s.min_p is not None and s.min_p > 0:
        scale = s.temperature if s.order == "temperature_first" else 1.0
        ratio = 0.0 if scale == 0 else math.exp((lp - top) / scale)
        dropped |= ratio < s.min_p - TOLERANCE
    return (0.0 if dropped else math.nan), int(kept.sum())


def whatif_sampled(
    res: ChatResult,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    choice: int = 0,
    order: str = "temperature_first",
) -> pd.DataFrame:
    """The generated token's probability under the what-if setting, one row per position.

    Columns: ``choice, position, token, token_id, logprob, raw_prob`` (as returned),
    ``whatif_prob`` (the approximation; NaN when the generated token is not among the returned
    alternatives and no rule provably drops it, 0 when one does), ``in_top``, ``n_kept`` (how
    many alternatives may be sampled under the what-if setting), ``other_mass``, ``tv_bound``.
    """
    s = check_settings(temperature, top_k, top_p, min_p, order)
    c = _choice(res, choice)
    note = _check_raw(res, s)
    rows = []
    for pos, tok in enumerate(c.logprobs or ()):
        alts = _sorted_alts(tok)
        p, n_kept = _sampled_whatif(tok, alts, s)
        rows.append(
            (
                c.index,
                pos,
                tok.token,
                tok.token_id,
                tok.logprob,
                math.exp(tok.logprob),
                p,
                any(_is_sampled(a, tok) for a in alts),
                n_kept,
                _other_mass(alts),
                tv_bound([a.logprob for a in alts], s) if alts else math.nan,
            )
        )
    df = pd.DataFrame.from_records(rows, columns=SAMPLED_COLUMNS)
    df["token_id"] = pd.array(df["token_id"].tolist(), dtype="Int64")
    for col in ("logprob", "raw_prob", "whatif_prob", "other_mass", "tv_bound"):
        df[col] = df[col].astype(float)
    return _attrs(df, s, note)


# --- entropy, surprisal, close calls ----------------------------------------------------------

ENTROPY_NOTES = (
    "surprisal = -logprob of the generated token, in nats, as returned by the server. entropy: "
    "over the returned alternatives only, in nats, a LOWER BOUND of the full distribution's "
    "entropy. top1/top2: the two most likely returned alternatives (raw probabilities, as "
    "returned); top2_gap = top1_prob - top2_prob; may_diverge = top2_gap < {gap}: another "
    "sample would likely diverge here. top2_gap is NaN (may_diverge False) with fewer than two "
    "alternatives."
)


def entropy_frame(res: ChatResult, *, gap: float = 0.1, choice: int = 0) -> pd.DataFrame:
    """Per-position surprisal, entropy (lower bound) and top-2 gap, flagging close calls.

    Columns: ``choice, position, token, logprob, surprisal, entropy, top1_token, top1_prob,
    top2_token, top2_prob, top2_gap, may_diverge, other_mass``. ``gap`` (probability, 0..1) is
    the threshold under which a position is marked ``may_diverge``.
    """
    from tmlab.frames import logprobs_frame

    if isinstance(gap, bool) or not isinstance(gap, int | float) or not 0 <= gap <= 1:
        raise ParameterError("gap", f"gap={gap!r} is not a probability", "a number in 0..1")
    c = _choice(res, choice)
    frame = logprobs_frame(res)
    frame = frame[frame["choice"] == c.index].reset_index(drop=True)
    tops = [_sorted_alts(t) for t in c.logprobs or ()]

    def nth(i: int, attr: str) -> list[Any]:
        if attr == "token":
            return [alts[i].token if len(alts) > i else None for alts in tops]
        return [math.exp(alts[i].logprob) if len(alts) > i else math.nan for alts in tops]

    top1_p = np.asarray(nth(0, "prob"), dtype=float)
    top2_p = np.asarray(nth(1, "prob"), dtype=float)
    gaps = top1_p - top2_p
    df = pd.DataFrame(
        {
            "choice": frame["choice"],
            "position": frame["position"],
            "token": frame["token"],
            "logprob": frame["logprob"],
            "surprisal": -frame["logprob"],
            "entropy": frame["entropy"],
            "top1_token": nth(0, "token"),
            "top1_prob": top1_p,
            "top2_token": nth(1, "token"),
            "top2_prob": top2_p,
            "top2_gap": gaps,
            "may_diverge": np.nan_to_num(gaps, nan=np.inf) < gap,
            "other_mass": frame["other_mass"],
        },
        columns=ENTROPY_COLUMNS,
    )
    df.attrs["notes"] = ENTROPY_NOTES.format(gap=gap)
    df.attrs["gap"] = gap
    return df

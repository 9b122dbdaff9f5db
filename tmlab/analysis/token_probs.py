"""Any token's probability at every position of an answer, on any server, exact or bounded.

:func:`token_probs` answers "how likely was *this* token here?" for tokens in or out of the
alternatives a server returns:

- **tmlab's embedded server** (the answer was asked with ``logprobs_for``): exact, over the
  whole vocabulary, raw and processed, with ranks (:func:`tmlab.logprobs_for_frame`);
- **any other server** (the answer was asked with ``logprobs=True, top_logprobs=N``): exact
  where the token is among the returned alternatives; where it is not, only an upper bound:
  it is no more likely than the least likely alternative returned, nor than the mass outside
  them all. The rows say which (``exact``, ``bound``) and which distribution the numbers
  describe (raw or processed, as :func:`tmlab.meaning` knows it).

For an exact number outside the returned alternatives on such a server, score the text with
:func:`tmlab.score` (needs a server that echoes prompt logprobs; see :func:`tmlab.probe`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from tmlab.errors import ParameterError
from tmlab.meaning import meaning

if TYPE_CHECKING:
    from tmlab.result import ChatResult, TokenLogprob

__all__ = ["TOKEN_PROBS_COLUMNS", "token_probs"]

TOKEN_PROBS_COLUMNS = [
    "position",
    "token",
    "token_id",
    "prob",
    "logprob",
    "rank",
    "exact",
    "bound",
    "source",
]


def _matches(want: str | int, alt: Any) -> bool:
    if isinstance(want, int):
        return alt.token_id == want
    return bool(alt.token == want)


def _row(position: int, want: str | int, tok: TokenLogprob) -> dict[str, Any]:
    alts = sorted(tok.top, key=lambda a: -a.logprob)
    for rank, alt in enumerate(alts, start=1):
        if _matches(want, alt):
            return {
                "position": position,
                "token": alt.token,
                "token_id": alt.token_id,
                "prob": math.exp(alt.logprob),
                "logprob": alt.logprob,
                "rank": rank,
                "exact": True,
                "bound": math.exp(alt.logprob),
                "source": "top_logprobs",
            }
    if _matches(want, tok):  # the generated token, returned without its rank
        return {
            "position": position,
            "token": tok.token,
            "token_id": tok.token_id,
            "prob": math.exp(tok.logprob),
            "logprob": tok.logprob,
            "rank": None,
            "exact": True,
            "bound": math.exp(tok.logprob),
            "source": "logprobs",
        }
    probs = [math.exp(a.logprob) for a in alts]
    bound = min([*probs[-1:], max(0.0, 1.0 - math.fsum(probs))]) if probs else 1.0
    return {
        "position": position,
        "token": want if isinstance(want, str) else None,
        "token_id": want if isinstance(want, int) else None,
        "prob": math.nan,
        "logprob": math.nan,
        "rank": None,
        "exact": False,
        "bound": bound,
        "source": "top_logprobs (not among them: p ≤ bound)",
    }


def token_probs(res: ChatResult, tokens: list[str | int], *, choice: int = 0) -> pd.DataFrame:
    """``tokens``' probabilities (texts as the server spells them, or ids) at every generated
    position of ``res``: exact where known, else an upper bound (see the module docstring).

    One row per (position, token). ``df.attrs["notes"]`` says which distribution the numbers
    describe and how they were obtained.
    """
    if not tokens or not all(
        (isinstance(t, str) and t) or (type(t) is int and t >= 0) for t in tokens
    ):
        raise ParameterError("tokens", f"tokens={tokens!r}", "a list of token texts or ids")
    picked = next((c for c in res.choices if c.index == choice), None)
    if picked is None:
        raise ParameterError("choice", f"choice={choice} is not in this answer", "a choice index")
    if picked.raw.get("logprobs_for"):
        from tmlab.frames import logprobs_for_frame

        lf = logprobs_for_frame(res)
        lf = lf[lf["choice"] == choice]
        wanted = lf["token"].isin([t for t in tokens if isinstance(t, str)]) | lf["token_id"].isin(
            [t for t in tokens if isinstance(t, int)]
        )
        if wanted.any():
            out = lf[wanted]
            df = pd.DataFrame(
                {
                    "position": out["position"],
                    "token": out["token"],
                    "token_id": out["token_id"],
                    "prob": out["prob"],
                    "logprob": out["logprob"],
                    "rank": out["rank"],
                    "exact": True,
                    "bound": out["prob"],
                    "source": "logprobs_for",
                }
            ).reset_index(drop=True)
            df.attrs["notes"] = (
                "Exact, over the whole vocabulary (the embedded server's logprobs_for): the "
                "distribution each token was drawn from; NaN: a sampler stage removed the "
                "token (see res.logprobs_for_frame() for the raw numbers and the stage)."
            )
            return df
    entries = picked.logprobs
    if not entries:
        raise ParameterError(
            "res",
            "this answer has no logprobs to read",
            "an answer asked with logprobs=True, top_logprobs=20 (or logprobs_for on tmlab's "
            "embedded server)",
        )
    rows = [_row(i, want, tok) for i, tok in enumerate(entries) for want in tokens]
    df = pd.DataFrame(rows, columns=TOKEN_PROBS_COLUMNS)
    df["rank"] = pd.array(df["rank"].tolist(), dtype="Int64")
    df["token_id"] = pd.array(df["token_id"].tolist(), dtype="Int64")
    returned = max((len(t.top) for t in entries), default=0)
    df.attrs["notes"] = (
        f"From the {returned} alternatives the server returned per position, "
        f"{meaning(res).text}. Exact where the token is among them; elsewhere only bounded: "
        "p ≤ bound (the least likely returned alternative's probability, and the mass "
        "outside them all). For an exact number, tmlab.score() the text on a server that "
        "echoes prompt logprobs, or ask tmlab's embedded server with logprobs_for."
    )
    return df

"""Label classification by scoring: the probability of each label as the model's answer.

::

    tmlab.classify("Review: 'Loved it.' Is this review positive or negative?",
                   ["positive", "negative"])
    tmlab.classify(None, ["positive", "negative"], prompts=[...])   # many prompts at once

Each label is scored whole (all its tokens, :func:`tmlab.analysis.scoring.score`) as the start of
the assistant's answer to the prompt: ``prob = exp(total logprob)`` is the probability that the
answer begins with that label. ``p_norm`` renormalises over the labels (they sum to 1 per
prompt); ``mass`` is how much of all possible answers the labels cover together (their
``prob`` summed: the rest is answers that start otherwise). Labels that are prefixes of one
another describe overlapping answers, so their mass counts some answers twice; a warning says
so.

Module named ``classification`` (not ``classify``) so that ``tmlab.classify`` stays the
function whatever was imported first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tmlab.analysis.runner import one_line, positive_int, run_in_thread, sweep_client
from tmlab.analysis.scoring import METHODS, ascore, score_echo
from tmlab.errors import ParameterError, ScoreError

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.client import AsyncClient

__all__ = ["CLASSIFY_COLUMNS", "aclassify", "classify"]

CLASSIFY_COLUMNS = [
    "prompt_index",
    "prompt",
    "label",
    "logprob",
    "prob",
    "p_norm",
    "mass",
    "is_top",
    "n_tokens",
    "method",
    "error",
]

CLASSIFY_NOTES = (
    "One row per (prompt, label). logprob: log-probability (nats) that the answer begins with "
    "the label, all its tokens scored (raw: the model's own distribution, no sampling "
    "settings). prob = exp(logprob). p_norm = prob / (sum of prob over the prompt's labels): "
    "sums to 1 per prompt. mass = that sum: the share of all possible answers that begin with "
    "one of the labels. is_top: the label with the highest p_norm. error: None, or why the "
    "prompt's labels could not be scored (then the numbers it names are NaN: a NaN always "
    "comes with its error)."
)


def _labels(labels: Any) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ParameterError("labels", f"labels={labels!r} is not a list", "['yes', 'no']")
    out = list(labels)
    if len(out) < 2 or not all(isinstance(x, str) and x for x in out):
        raise ParameterError(
            "labels", f"labels={labels!r}", "at least two non-empty strings, e.g. ['yes', 'no']"
        )
    if len(set(out)) != len(out):
        raise ParameterError("labels", f"labels={labels!r} has duplicates", "distinct labels")
    return out


def _prompts(prompt: Any, prompts: Any) -> list[str]:
    if prompts is None:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, Sequence):
            prompts = prompt
        else:
            raise ParameterError("prompt", f"prompt={prompt!r} is not a string", "a str")
    elif prompt is not None:
        raise ParameterError("prompts", "both prompt and prompts given", "one of them")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ParameterError("prompts", f"prompts={prompts!r}", "a non-empty list of strings")
    if not all(isinstance(p, str) and p for p in prompts):
        raise ParameterError("prompts", "prompts must all be non-empty strings", "a list of str")
    return list(prompts)


def _overlap(labels: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in labels for b in labels if a != b and b.startswith(a)]


async def _classify_one(
    ac: AsyncClient,
    index: int,
    prompt: str,
    labels: list[str],
    model: str | None,
    method: str,
) -> list[dict[str, Any]]:
    try:
        if method in ("auto", "echo"):
            scored = await asyncio.gather(
                *(score_echo(ac, label, prompt, model, 0) for label in labels)
            )
        else:
            scored = [None] * len(labels)
        if any(s is None for s in scored):
            if method == "echo":
                raise ScoreError("this server returned no prompt logprobs for echo=True")
            scored = [  # the echo was just tried: walk the label (the server's top 20)
                await ascore(label, context=prompt, client=ac, model=model, method="continuation")
                for label in labels
            ]
    except Exception as exc:  # a failed prompt is rows with the error, never lost
        failed = one_line(exc, ac._key)
        return [
            _row(index, prompt, label, math.nan, math.nan, math.nan, math.nan, None, None, failed)
            for label in labels
        ]
    done = [s for s in scored if s is not None]
    logprobs = [s.total_logprob for s in done]
    unknown = [label for label, lp in zip(labels, logprobs, strict=True) if math.isnan(lp)]
    error = None
    if unknown:  # a NaN is never silent: say which label, and why the others lack p_norm
        error = (
            f"label(s) {', '.join(map(repr, unknown))}: a token was outside the alternatives "
            "the server returned, so its probability is unknown (NaN); p_norm and mass need "
            "every label's"
        )
    rows = []
    for label, s in zip(labels, done, strict=True):
        rows.append(
            _row(
                index,
                prompt,
                label,
                s.total_logprob,
                math.exp(s.total_logprob),
                _log_norm(s.total_logprob, logprobs),
                _log_mass(logprobs),
                s.n_tokens,
                s.method,
                error,
            )
        )
    return rows


def _log_mass(logprobs: list[float]) -> float:
    """log of the labels' summed probability (log-sum-exp: no underflow); NaN if one is."""
    if any(math.isnan(lp) for lp in logprobs):
        return math.nan
    top = max(logprobs)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(lp - top) for lp in logprobs))


def _log_norm(logprob: float, logprobs: list[float]) -> float:
    """``logprob`` normalised over the labels, as a log; NaN when a label is unknown."""
    return logprob - _log_mass(logprobs)


def _row(
    index: int,
    prompt: str,
    label: str,
    logprob: float,
    prob: float,
    log_norm: float,
    log_mass: float,
    n_tokens: int | None,
    method: str | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "prompt_index": index,
        "prompt": prompt,
        "label": label,
        "logprob": logprob,
        "prob": prob,
        "p_norm": math.exp(log_norm),  # from logs: labels far below 1e-308 still normalise
        "mass": math.exp(log_mass),
        "n_tokens": n_tokens,
        "method": method,
        "error": error,
    }


def _prepare(
    prompt: Any, labels: Any, prompts: Any, concurrency: Any, method: Any
) -> tuple[list[str], list[str], int]:
    """Check everything before anything is sent; warn about overlapping labels."""
    label_list = _labels(labels)
    prompt_list = _prompts(prompt, prompts)
    concurrency = positive_int("concurrency", concurrency)
    if method not in METHODS:
        raise ParameterError("method", f"method={method!r} is not known", " | ".join(METHODS))
    overlap = _overlap(label_list)
    if overlap:
        warnings.warn(
            f"labels {overlap[0][0]!r} and {overlap[0][1]!r}: one begins the other, so the "
            "answers they describe overlap and their mass counts some answers twice",
            UserWarning,
            stacklevel=3,
        )
    return label_list, prompt_list, concurrency


async def _run(
    ac: AsyncClient,
    prompt_list: list[str],
    label_list: list[str],
    model: str | None,
    concurrency: int,
    method: str,
    bar: Any,
) -> pd.DataFrame:
    results: list[list[dict[str, Any]] | None] = [None] * len(prompt_list)
    queue = iter(enumerate(prompt_list))

    async def worker() -> None:
        for i, p in queue:  # shared: each prompt is taken once
            results[i] = await _classify_one(ac, i, p, label_list, model, method)
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompt_list)))))
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            await ac.aclose()
    return _frame([row for rows in results if rows for row in rows])


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="classify", unit="prompt", disable=not progress)


async def aclassify(
    prompt: Any,
    labels: Sequence[str],
    *,
    client: Any = None,
    prompts: Sequence[str] | None = None,
    model: str | None = None,
    concurrency: int = 4,
    progress: bool = True,
    method: str = "auto",
) -> pd.DataFrame:
    """Async :func:`classify`."""
    labels_, prompts_, conc = _prepare(prompt, labels, prompts, concurrency, method)
    ac = sweep_client(client)
    return await _run(ac, prompts_, labels_, model, conc, method, _bar(len(prompts_), progress))


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    df = pd.DataFrame.from_records(rows, columns=CLASSIFY_COLUMNS)
    for col in ("logprob", "prob", "p_norm", "mass"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["n_tokens"] = pd.array(
        [None if v is None or v != v else int(v) for v in df["n_tokens"]], dtype="Int64"
    )
    best = df.groupby("prompt_index")["p_norm"].transform("max")
    df["is_top"] = (df["p_norm"] == best) & df["p_norm"].notna()
    df["prompt_index"] = df["prompt_index"].astype(np.int64)
    df["error"] = df["error"].astype(object).where(df["error"].notna(), None)
    df.attrs["notes"] = CLASSIFY_NOTES
    return df


def classify(
    prompt: Any,
    labels: Sequence[str],
    *,
    client: Any = None,
    prompts: Sequence[str] | None = None,
    model: str | None = None,
    concurrency: int = 4,
    progress: bool = True,
    method: str = "auto",
) -> pd.DataFrame:
    """The probability of each label as the model's answer to ``prompt``: one row per label.

    ``labels``: two or more strings, each scored whole (every token). ``prompts=[...]`` (or a
    list as ``prompt``) classifies many prompts, ``concurrency`` at a time, with a progress
    bar; a prompt that fails is rows with its ``error``. Columns: ``prompt_index, prompt,
    label, logprob, prob, p_norm`` (normalised over the labels), ``mass`` (what the labels
    cover of all answers), ``is_top, n_tokens, method, error`` (see ``df.attrs["notes"]``).
    ``client``: a :class:`~tmlab.Client` (None: the session's); ``method`` as for
    :func:`tmlab.score`.
    """
    labels_, prompts_, conc = _prepare(prompt, labels, prompts, concurrency, method)
    ac = sweep_client(client)
    bar = _bar(len(prompts_), progress)  # created here, so a notebook shows it in this cell
    return run_in_thread(_run(ac, prompts_, labels_, model, conc, method, bar))

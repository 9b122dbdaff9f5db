"""Parameter sweeps: the same prompt over a grid of parameters, one table row per request.

::

    df = tmlab.sweep("Name a colour.", grid={"temperature": [0.2, 1.0], "top_k": [5, 50]},
                     repeats=5, max_tokens=8)
    tmlab.summarize(df)                         # distinct answers and their entropy per cell
    tmlab.plot_sweep(df, x="temperature", y="distinct_answers", hue="top_k")

Every grid value and fixed parameter is checked against :data:`tmlab.PARAMS` before anything
is sent. Requests run concurrently (at most ``concurrency`` at a time) on an
:class:`~tmlab.AsyncClient`, in the history with source ``"sweep"``. A failed request is a row
with its error; an interrupted sweep (Ctrl-C, the notebook's stop button, a cancelled task)
returns the rows finished so far, and marks the others. Without ``max_tokens`` (or
``max_completion_tokens``), fixed or in the grid, every request gets the session's default
(``%tmconfig max_tokens``, 512 unless changed; ``df.attrs["session_limit"]``).

The default concurrency is what the server advertises in ``/models`` (the embedded server's
``parallel`` slots: 1 unless started with ``--parallel N``), else 8. Queued is not hung: with
a larger ``concurrency`` than the server's slots a request may wait behind others before its
first byte. For a server on this machine the sweep's client therefore has no read timeout
(connect and write timeouts stay); for a remote server the client's timeout holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tmlab import capabilities
from tmlab.analysis.runner import (
    one_line,
    positive_int,
    run_in_thread,
    sweep_client,
)
from tmlab.client import AsyncClient
from tmlab.client.base import Messages, as_messages
from tmlab.client.history import request_source
from tmlab.client.settings import session_limit
from tmlab.errors import ParameterError
from tmlab.params import PARAMS, RESERVED, check_param, validate_params

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.result import ChatResult

__all__ = ["SWEEP_COLUMNS", "asweep", "plot_sweep", "summarize", "sweep"]

# Summaries live in tmlab.analysis.summary; importable from here too, where sweeps are.
from tmlab.analysis.summary import plot_sweep, summarize

# After the grid's parameter columns, in this order.
SWEEP_COLUMNS = [
    "model",
    "repeat",
    "text",
    "finish_reason",
    "prompt_tokens",
    "cached_tokens",
    "cache_hit_rate",
    "completion_tokens",
    "total_tokens",
    "latency_s",
    "ttft_s",
    "mean_entropy",
    "error",
    "history_id",
]
_INT_COLUMNS = ("prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "history_id")

INTERRUPTED = "interrupted: not finished when the sweep was stopped"

SWEEP_NOTES = (
    "One row per request. latency_s: request sent -> last byte, measured by the client; it "
    "includes time spent queued at the server (the embedded server answers one request at a "
    "time). ttft_s equals latency_s unless stream=True. text, finish_reason and mean_entropy "
    "are those of the first choice. mean_entropy: the mean over the answer's tokens of the "
    "entropy (nats) over the returned top_logprobs alternatives only - a lower bound of the "
    "full distribution's entropy; NaN when no alternatives were returned. error: None, or the "
    "error's class and message. history_id: the request's row in tmlab.history(). "
    "cache_hit_rate: cached_tokens / prompt_tokens, as the server reported them (<NA> when it "
    "did not report cached tokens)."
)


@dataclass(frozen=True)
class _SweepRequest:
    index: int  # row number in the frame (cell-major)
    repeat: int
    model: str | None
    cell: dict[str, Any]  # the grid values of this request, as validated
    params: dict[str, Any]  # everything sent: fixed params and the cell


@dataclass(frozen=True)
class _Plan:
    jobs: list[_SweepRequest]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    models: list[str] | None
    repeats: int
    session_limit: int | None = None  # the session's default max_tokens, when it was added


# -- planning: everything is checked before anything is sent -------------------------------


def _values(name: str, values: Any) -> list[Any]:
    out = None
    if not isinstance(values, str | bytes | Mapping):
        with contextlib.suppress(TypeError):
            out = list(values)
    if out is None:
        raise ParameterError(
            name, f"grid[{name!r}] must be a list of values, got {values!r}", "[v1, v2, ...]"
        )
    if not out:
        raise ParameterError(name, f"grid[{name!r}] is empty: nothing to send", "[v1, v2, ...]")
    return out


def _plan(
    grid: Mapping[str, Any] | None,
    repeats: int,
    models: Sequence[str] | str | None,
    fixed: dict[str, Any],
) -> _Plan:
    if grid is None:
        grid = {}
    if not isinstance(grid, Mapping):
        raise ParameterError("grid", f"grid={grid!r} is not a dict", "{'temperature': [0, 1]}")
    repeats = positive_int("repeats", repeats)
    grid = dict(grid)
    if "model" in grid:  # grid={"model": [...]} is the same as models=[...]
        if models is not None:
            raise ParameterError("model", "models given twice: in grid and as models=", "one")
        models = grid.pop("model")
    if isinstance(models, str):
        models = [models]
    if models is not None:
        models = _values("model", models)
        for m in models:
            if not isinstance(m, str) or not m:
                raise ParameterError("model", f"models contains {m!r}", "model names (str)")
    sent_fixed = validate_params(fixed)
    # no length limit given, fixed or in the grid: the session's default (%tmconfig max_tokens)
    limit = session_limit({**sent_fixed, **grid})
    if limit is not None:
        sent_fixed["max_tokens"] = limit
    checked: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if name in RESERVED or name not in PARAMS:
            validate_params({name: None})  # the table's message: unknown, with a suggestion
        if name in fixed:
            raise ParameterError(name, f"{name} is both in the grid and fixed", "one of them")
        out = []
        for value in _values(name, values):
            try:  # the value alone here; combinations are checked per cell below
                out.append(check_param(PARAMS[name], value))
            except ParameterError as exc:
                raise ParameterError(name, f"grid[{name!r}] value {value!r}: {exc}") from None
        checked[name] = out
    names = list(checked)
    cells = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*checked.values())]
    for cell in cells:  # combinations the API rejects (n > 1 at temperature 0 …)
        try:
            validate_params({**sent_fixed, **cell})
        except ParameterError as exc:
            raise ParameterError(exc.param, f"grid cell {cell}: {exc}") from None
    jobs: list[_SweepRequest] = []
    for m in models if models is not None else [None]:
        for cell in cells:
            for r in range(repeats):
                params = {**sent_fixed, **cell}
                jobs.append(_SweepRequest(len(jobs), r, m, cell, params))
    return _Plan(jobs, checked, sent_fixed, list(models) if models else None, repeats, limit)


def _run_order(plan: _Plan) -> list[_SweepRequest]:
    """Repeat-major: every cell gets its first answer before any gets its second, so an
    interrupted sweep has covered the whole grid as evenly as it could."""
    return sorted(plan.jobs, key=lambda j: (j.repeat, j.index))


# -- the client the sweep sends with -------------------------------------------------------


DEFAULT_CONCURRENCY = 8
"""Requests in flight when the server does not say how many it decodes at once."""


async def _slots(ac: AsyncClient, model: str | None) -> int:
    """The sweep's default concurrency: the slots the server advertises for ``model`` in
    ``/models`` now (the embedded server: ``parallel``; a restarted server may have changed
    them), kept in :mod:`tmlab.capabilities`; when ``/models`` does not answer, the slots
    known there; else :data:`DEFAULT_CONCURRENCY`."""
    try:
        served = await ac.models()
    except Exception:  # no answer from /models: what was learned before, else the default
        caps = capabilities.find(ac.base_url, model)
        return caps.slots if caps is not None and caps.slots is not None else DEFAULT_CONCURRENCY
    for m in served:
        slots = m.get("parallel") if isinstance(m, dict) else None
        if (model is None or m.get("id") == model) and isinstance(slots, int) and slots >= 1:
            capabilities.of(ac.base_url, model).slots = slots
            return slots
    return DEFAULT_CONCURRENCY


async def _default_model(ac: AsyncClient) -> str:
    model = ac.model
    if model is not None:
        return model
    served = [str(m.get("id")) for m in await ac.models() if isinstance(m, dict)]
    if len(served) == 1:
        return served[0]
    raise ParameterError(
        "model",
        f"no model given for {ac.base_url}; it serves: {', '.join(served[:20]) or 'none'}",
        "sweep(..., models=[NAME]) or Client(model=NAME)",
    )


# -- running -------------------------------------------------------------------------------


def _mean_entropy(res: ChatResult) -> float:
    """:func:`tmlab.frames.mean_entropy` of the first choice, in plain Python.

    The same number (the mean over positions of ``-Σ p·ln p`` over the returned alternatives,
    positions without alternatives left out; NaN when none has any), without building a
    DataFrame per answer: a sweep computes it for every row while the other requests are in
    flight, and a frame per row costs about a millisecond of the event loop each time.
    """
    choice = next((c for c in res.choices if c.index == 0), None)
    if choice is None or not choice.logprobs:
        return math.nan
    exp = math.exp
    total = 0.0
    positions = 0
    for tok in choice.logprobs:
        if not tok.top:
            continue
        h = 0.0
        for alt in tok.top:
            lp = alt.logprob
            p = exp(lp)
            if p > 0:  # 0·ln 0 = 0 (and a null logprob, NaN, adds nothing: as in the frame)
                h -= p * lp
        total += h
        positions += 1
    return total / positions if positions else math.nan


def _row(
    job: _SweepRequest, model: str, res: ChatResult | None, error: str | None, hid: Any
) -> dict[str, Any]:
    row: dict[str, Any] = dict(job.cell)
    row.update(model=model, repeat=job.repeat, error=error, history_id=hid)
    if res is None:
        return row
    from tmlab.frames import cache_hit_rate

    u, t = res.usage, res.timing
    row.update(
        text=res.text,
        finish_reason=res.finish_reason,
        prompt_tokens=u.prompt_tokens,
        cached_tokens=u.cached_tokens,
        cache_hit_rate=cache_hit_rate(u.prompt_tokens, u.cached_tokens),
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        latency_s=t.latency_s,
        ttft_s=t.ttft_s,
        mean_entropy=_mean_entropy(res),
    )
    return row


async def _execute(
    plan: _Plan,
    ac: AsyncClient,
    prompt: Messages,
    *,
    system: str | None,
    stream: bool,
    concurrency: int | None,
    bar: Any,
) -> pd.DataFrame:
    start = time.perf_counter()
    rows: list[dict[str, Any] | None] = [None] * len(plan.jobs)
    workers: list[asyncio.Task[None]] = []
    interrupted = False
    errors = 0
    default = ""
    try:
        with request_source("sweep"):  # tasks created inside inherit the label
            if plan.models is None:
                default = await _default_model(ac)
            if concurrency is None:
                concurrency = await _slots(ac, default or (plan.models[0] if plan.models else None))
            queue = iter(_run_order(plan))

            async def worker() -> None:
                nonlocal errors
                for job in queue:  # shared: each job is taken once (no await inside next())
                    model = job.model or default
                    try:
                        res = await ac.chat(
                            prompt, model=model, system=system, stream=stream, **job.params
                        )
                    except Exception as exc:  # a failed request is a row, never lost
                        errors += 1
                        hid = getattr(exc, "history_id", None)
                        rows[job.index] = _row(job, model, None, one_line(exc, ac._key), hid)
                    else:
                        rows[job.index] = _row(
                            job, model, res, None, getattr(res, "history_id", None)
                        )
                    bar.update(1)
                    if errors:
                        bar.set_postfix(errors=errors, refresh=False)

            n = min(concurrency, len(plan.jobs))
            workers = [asyncio.create_task(worker()) for _ in range(n)]
            await asyncio.gather(*workers)
    except asyncio.CancelledError:
        interrupted = True
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled: the finished rows are the answer
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            await ac.aclose()
    return _frame(plan, rows, default, interrupted, time.perf_counter() - start)


def _frame(
    plan: _Plan,
    rows: list[dict[str, Any] | None],
    default: str | None,
    interrupted: bool,
    wall_s: float,
) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    records = []
    for job, row in zip(plan.jobs, rows, strict=True):
        if row is None:  # never answered: the sweep was stopped first
            row = _row(job, job.model or default or "", None, INTERRUPTED, None)
        records.append(row)
    columns = [*plan.grid, *SWEEP_COLUMNS]
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in _INT_COLUMNS:
        df[col] = pd.array(
            [None if v is None or v != v else int(v) for v in df[col]], dtype="Int64"
        )
    for col in ("latency_s", "ttft_s", "mean_entropy"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["cache_hit_rate"] = pd.array(
        [None if v is None or v != v else float(v) for v in df["cache_hit_rate"]], dtype="Float64"
    )
    df["repeat"] = df["repeat"].astype(np.int64)
    df["error"] = df["error"].astype(object).where(df["error"].notna(), None)
    notes = SWEEP_NOTES
    if plan.session_limit is not None:
        notes += (
            f" max_tokens={plan.session_limit} is the session's default, sent because no "
            "max_tokens was given (pass max_tokens=N, or %tmconfig max_tokens=N|off, to "
            "change): finish_reason 'length' with that many completion_tokens means the "
            "answer stopped there."
        )
    if interrupted:
        done = sum(r is not None for r in rows)
        notes = (
            f"INTERRUPTED: {done} of {len(rows)} requests finished; the others are rows with "
            f"error={INTERRUPTED!r}. " + notes
        )
    df.attrs.update(
        notes=notes,
        grid={k: list(v) for k, v in plan.grid.items()},
        fixed=dict(plan.fixed),
        session_limit=plan.session_limit,
        repeats=plan.repeats,
        interrupted=interrupted,
        wall_s=wall_s,
    )
    return df


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="req", disable=not progress)


async def asweep(
    prompt_or_messages: Messages,
    grid: Mapping[str, Any] | None = None,
    repeats: int = 1,
    models: Sequence[str] | str | None = None,
    concurrency: int | None = None,
    client: Any = None,
    progress: bool = True,
    system: str | None = None,
    stream: bool = False,
    **fixed_params: Any,
) -> pd.DataFrame:
    """Async :func:`sweep`: ``df = await tmlab.asweep(...)``.

    Cancelling it returns the rows finished so far (``df.attrs["interrupted"]`` is True)
    instead of raising :class:`asyncio.CancelledError`.
    """
    as_messages(prompt_or_messages, system)  # a malformed prompt fails here, not per request
    plan = _plan(grid, repeats, models, fixed_params)
    if concurrency is not None:
        concurrency = positive_int("concurrency", concurrency)
    ac = sweep_client(client)
    bar = _bar(len(plan.jobs), progress)
    return await _execute(
        plan, ac, prompt_or_messages, system=system, stream=stream, concurrency=concurrency, bar=bar
    )


def sweep(
    prompt_or_messages: Messages,
    grid: Mapping[str, Any] | None = None,
    repeats: int = 1,
    models: Sequence[str] | str | None = None,
    concurrency: int | None = None,
    client: Any = None,
    progress: bool = True,
    system: str | None = None,
    stream: bool = False,
    **fixed_params: Any,
) -> pd.DataFrame:
    """Send the prompt for every combination of ``grid`` values, ``repeats`` times each.

    ``grid`` maps parameter names to lists of values (``{"temperature": [0, 0.7, 1.4]}``);
    ``models`` adds the model as one more dimension; ``fixed_params`` are sent with every
    request. Everything is validated before anything is sent. At most ``concurrency``
    requests are in flight at a time (default: as many as the server says it decodes at
    once — the embedded server's ``parallel`` slots — else 8); ``progress`` shows a bar (a
    widget in notebooks).

    Returns one row per request: a column per grid parameter, then ``model, repeat, text,
    finish_reason``, token counts, ``latency_s, ttft_s, mean_entropy, error, history_id``
    (see ``df.attrs["notes"]``). A failed request is a row with its ``error``. Interrupting
    returns the rows finished so far; the others carry ``error="interrupted: ..."``.
    Works in a notebook (whose event loop is running: the sweep runs its own loop in a
    thread) as in a script.
    """
    as_messages(prompt_or_messages, system)  # a malformed prompt fails here, not per request
    plan = _plan(grid, repeats, models, fixed_params)
    if concurrency is not None:
        concurrency = positive_int("concurrency", concurrency)
    ac = sweep_client(client)
    bar = _bar(len(plan.jobs), progress)  # created here, so a notebook shows it in this cell
    coro = _execute(
        plan, ac, prompt_or_messages, system=system, stream=stream, concurrency=concurrency, bar=bar
    )
    return run_in_thread(coro)

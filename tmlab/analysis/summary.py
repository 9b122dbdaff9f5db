"""Summaries of a sweep: distinct answers per grid cell, their entropy, cost; and a plot.

::

    df = tmlab.sweep("Name a colour.", grid={"temperature": [0.2, 1.0]}, repeats=8)
    tmlab.summarize(df)                         # one row per grid cell
    tmlab.plot_sweep(df, x="temperature", y="distinct_answers")

Pure pandas over the frame :func:`tmlab.sweep` returns (or any frame with its columns); no
request is sent. matplotlib is imported by :func:`plot_sweep` only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tmlab.errors import ParameterError
from tmlab.params import PARAMS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["SUMMARY_NOTES", "plot_sweep", "summarize"]


SUMMARY_NOTES = (
    "One row per grid cell. n: answers received (requests without error); errors: requests "
    "that failed or were not finished. answers: each distinct answer text (compared exactly) "
    "with its count, most frequent first. answer_entropy_bits: -Σ p·log2 p over the distinct "
    "answers with p = count / n - the exact entropy of the answers observed in this sample "
    "(0 = always the same answer, log2 n = all different); as an estimate of the model's "
    "answer distribution it is low for small n. top_share: the most frequent answer's count / "
    "n. mean_latency_s and the mean token counts: over the answered requests. mean_entropy: "
    "the mean of the per-request token entropies (nats, over the returned alternatives: a "
    "lower bound). cache_hit_rate: the cell's cached prompt tokens / its prompt tokens, over "
    "the answered requests whose server reported cached tokens (<NA>: none did). cost_usd: "
    "the answered requests at the given prices (USD per million tokens; cached input tokens "
    "at cached_input, default 0); saved_usd: cached tokens x (input - cached_input), what the "
    "cache saved."
)


def _key_columns(df: pd.DataFrame) -> list[str]:
    grid = df.attrs.get("grid")
    keys = [k for k in grid if k in df.columns] if isinstance(grid, dict) else []
    if not keys:
        keys = [c for c in df.columns if c in PARAMS]
    if "model" in df.columns:
        keys.append("model")
    return keys


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _session_prices() -> Mapping[str, Any] | None:
    try:
        from tmlab.client.settings import session
    except ImportError:
        return None
    prices = getattr(session, "prices", None)
    return prices if isinstance(prices, Mapping) else None


def _cost(ok: pd.DataFrame, prices: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(cost_usd, saved_usd) of the answered requests; (None, None) when one is unknown."""
    import pandas as pd

    from tmlab.frames import price_of, request_cost

    total = saved = 0.0
    for model, p, c, out in zip(
        ok["model"] if "model" in ok else [None] * len(ok),
        ok["prompt_tokens"],
        ok["cached_tokens"] if "cached_tokens" in ok else [0] * len(ok),
        ok["completion_tokens"],
        strict=True,
    ):
        price = price_of(prices, model)
        if price is None or pd.isna(p) or pd.isna(out):
            return None, None  # unknown: better no number than a low one
        cost, save = request_cost(price, int(p), None if pd.isna(c) else int(c), int(out))
        total += cost
        saved += save
    return total, saved


def _hit_rate(ok: pd.DataFrame) -> float | None:
    """Σ cached / Σ prompt tokens over the requests whose server reported both."""
    import pandas as pd

    if "cached_tokens" not in ok or "prompt_tokens" not in ok:
        return None
    known = ok["cached_tokens"].notna().to_numpy() & ok["prompt_tokens"].notna().to_numpy()
    prompt = pd.to_numeric(ok["prompt_tokens"][known]).sum()
    return float(pd.to_numeric(ok["cached_tokens"][known]).sum() / prompt) if prompt else None


def _mean(series: Any) -> float:
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").astype(float)
    return float(values.mean()) if values.notna().any() else math.nan


def summarize(df: pd.DataFrame, prices: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per grid cell of a :func:`sweep` frame: how many distinct answers, how spread.

    Grouped by the grid's parameter columns and ``model``. Columns: ``n, errors,
    distinct_answers, answer_entropy_bits, top_answer, top_share, answers`` (a dict answer ->
    count, most frequent first), ``mean_latency_s, mean_prompt_tokens,
    mean_completion_tokens``, ``mean_entropy`` (when the sweep asked for logprobs),
    ``cache_hit_rate`` (Σ cached ÷ Σ prompt tokens) and ``cost_usd``, ``saved_usd`` (what
    cached tokens saved) when prices are known (``prices``, else ``%tmconfig prices=``; USD per
    million tokens, as in :func:`tmlab.usage_frame`). See ``attrs["notes"]``.
    """
    import numpy as np
    import pandas as pd

    keys = _key_columns(df)
    prices = prices if prices is not None else _session_prices()
    has_entropy = "mean_entropy" in df.columns and df["mean_entropy"].notna().any()
    # positions, not labels: a frame concatenated from several sweeps repeats its index
    failed = df["error"].notna().to_numpy() if "error" in df.columns else np.zeros(len(df), bool)
    if keys:
        grouping = pd.DataFrame({k: [_hashable(v) for v in df[k]] for k in keys})
        group_of = grouping.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    else:
        group_of = np.zeros(len(df), dtype=np.int64)
    records = []
    for g in range(int(group_of.max()) + 1 if len(df) else 0):
        where = np.flatnonzero(group_of == g)
        cell = df.iloc[where]
        bad = failed[where]
        ok = cell[~bad]
        counts = Counter(str(t) for t in ok["text"]) if "text" in ok else Counter()
        n = int(sum(counts.values()))
        entropy = -sum((c / n) * math.log2(c / n) for c in counts.values()) if n else math.nan
        top, top_count = counts.most_common(1)[0] if counts else (None, 0)
        record: dict[str, Any] = {k: cell[k].iloc[0] for k in keys}
        record.update(
            n=n,
            errors=int(bad.sum()),
            distinct_answers=len(counts),
            answer_entropy_bits=entropy + 0.0,  # no -0.0
            top_answer=top,
            top_share=top_count / n if n else math.nan,
            answers=dict(counts.most_common()),
            mean_latency_s=_mean(ok["latency_s"]) if "latency_s" in ok else math.nan,
            mean_prompt_tokens=_mean(ok["prompt_tokens"]) if "prompt_tokens" in ok else math.nan,
            mean_completion_tokens=(
                _mean(ok["completion_tokens"]) if "completion_tokens" in ok else math.nan
            ),
        )
        if has_entropy:
            record["mean_entropy"] = _mean(ok["mean_entropy"])
        record["cache_hit_rate"] = _hit_rate(ok)
        if prices:
            cost, saved = _cost(ok, prices) if "prompt_tokens" in ok else (None, None)
            record.update(cost_usd=cost, saved_usd=saved)
        records.append(record)
    out = pd.DataFrame.from_records(records)
    if not records:
        out = pd.DataFrame(columns=[*keys, "n", "errors", "distinct_answers"])
    for col in ("cache_hit_rate", "cost_usd", "saved_usd"):
        if col in out.columns:
            out[col] = pd.array(out[col].tolist(), dtype="Float64")
    out.attrs["notes"] = SUMMARY_NOTES
    out.attrs["keys"] = keys
    return out


def plot_sweep(
    df: pd.DataFrame,
    x: str = "temperature",
    y: str = "distinct_answers",
    hue: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw ``y`` against the parameter ``x``, one line per value of ``hue``; returns the Axes.

    ``df`` is a :func:`sweep` frame or its :func:`summarize` table; a ``y`` that only the
    summary has (``distinct_answers``, ``answer_entropy_bits``, ``top_share`` …) summarizes
    first. Per-request columns (``latency_s``) are drawn as the mean per point, with the
    requests as dots. Without ``hue``, every other parameter that varies gets its own line.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    table = df
    if y not in df.columns:
        table = summarize(df)
        if y not in table.columns:
            choices = ", ".join(c for c in table.columns if c not in table.attrs.get("keys", ()))
            raise ParameterError(
                "y", f"y={y!r} is not a column of the sweep or its summary", choices
            )
    if x not in table.columns:
        raise ParameterError("x", f"x={x!r} is not a column", ", ".join(map(str, table.columns)))
    if hue is not None and hue not in table.columns:
        raise ParameterError(
            "hue", f"hue={hue!r} is not a column", ", ".join(map(str, table.columns))
        )
    numeric = pd.to_numeric(table[y], errors="coerce")
    if numeric.isna().all() and table[y].notna().any():
        raise ParameterError("y", f"y={y!r} is not a numeric column", "a column of numbers")
    keys = table.attrs.get("keys") or _key_columns(table)
    if hue is None:
        lines = [k for k in keys if k != x and table[k].map(_hashable).nunique(dropna=False) > 1]
    else:
        lines = [hue]
    if ax is None:
        _, ax = plt.subplots()
    assert ax is not None
    frame = table.assign(**{k: table[k].map(_hashable) for k in {x, *lines}})
    groups = frame.groupby(lines, sort=False, dropna=False) if lines else [((), frame)]
    for label, part in groups:
        values = part[[x, y]].copy()
        values[y] = values[y].astype(float)
        mean = values.groupby(x, sort=True, dropna=False)[y].mean()
        name = ", ".join(
            f"{k}={v}"
            for k, v in zip(lines, label if isinstance(label, tuple) else (label,), strict=True)
        )
        (line,) = ax.plot(
            [str(i) if i is None else i for i in mean.index],
            mean.to_numpy(),
            marker="o",
            label=name or None,
        )
        if len(values) > len(mean):  # several requests per point: show them too
            ax.scatter(
                values[x].tolist(), values[y].tolist(), s=10, alpha=0.3, color=line.get_color()
            )
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(x)
    one_per_point = len(frame) == len(frame.drop_duplicates(subset=[x, *lines]))
    ax.set_ylabel(y if one_per_point else f"{y} (mean)")
    for axis, column in ((ax.xaxis, x), (ax.yaxis, y)):
        if _counts(frame[column]):  # counts: no tick at 2.5 answers
            axis.set_major_locator(MaxNLocator(integer=True))
    per = "" if one_per_point else "\n(line: mean per point; dots: each answer)"
    ax.set_title(f"{_axis_label(y)} vs {_axis_label(x)}{per}", fontsize=10)  # with units
    if lines:
        ax.legend(title=", ".join(lines) if hue else None, fontsize="small")
    return ax


_UNITS = {
    "distinct_answers": "count",
    "n": "count",
    "errors": "count",
    "answer_entropy_bits": "bits",
    "top_share": "share of answers, 0\u20131",
    "latency_s": "seconds",
    "mean_latency_s": "seconds",
    "mean_prompt_tokens": "tokens",
    "mean_completion_tokens": "tokens",
    "prompt_tokens": "tokens",
    "completion_tokens": "tokens",
    "mean_entropy": "nats",
    "cache_hit_rate": "share, 0\u20131",
    "cost_usd": "USD",
    "saved_usd": "USD",
    "max_tokens": "tokens",
}


def _axis_label(column: str) -> str:
    """A column name with its unit: ``latency_s (seconds)``, ``distinct_answers (count)``."""
    unit = _UNITS.get(column)
    return f"{column} ({unit})" if unit else column


def _counts(values: pd.Series) -> bool:
    """Whether a column holds whole numbers only (counts, top_k …): integer ticks."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(numbers)) and bool((numbers == numbers.round()).all())

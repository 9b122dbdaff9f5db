"""The Explorer's pinned runs: side by side with the differing parameters highlighted.

A pin keeps one run's parameters (as sent), model and result. :func:`pins_html` draws the runs
as columns of a table whose rows that differ between runs are highlighted, so the effect of
one slider shows at a glance; :func:`pins_frame` returns the same as a DataFrame.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tmlab.frames import mean_entropy
from tmlab.params import PARAMS
from tmlab.result import ChatResult

__all__ = ["Pin", "pins_frame", "pins_html"]


@dataclass
class Pin:
    """One pinned run: the parameters sent, the model asked for, the result."""

    params: dict[str, Any]
    model: str | None
    result: ChatResult


def pins_frame(pins: list[Pin]) -> pd.DataFrame:
    """The pinned runs, one row each (see :meth:`tmlab.Explorer.runs_frame`)."""
    names = _param_names(pins)
    rows = []
    for i, p in enumerate(pins, start=1):
        res = p.result
        row: dict[str, Any] = {"run": i, "model": p.model}
        row.update({name: p.params.get(name) for name in names})
        row.update(
            answer=res.text,
            completion_tokens=res.usage.completion_tokens,
            mean_entropy=mean_entropy(res),
            latency_s=res.timing.latency_s,
            finish_reason=res.finish_reason,
            complete=res.complete,
            history_id=getattr(res, "history_id", None),
        )
        rows.append(row)
    columns = ["run", "model", *names, "answer", "completion_tokens", "mean_entropy"]
    columns += ["latency_s", "finish_reason", "complete", "history_id"]
    df = pd.DataFrame(rows, columns=columns)
    for name in names:  # keep None (not sent) and ints as they were, not NaN and floats
        df[name] = pd.Series([row[name] for row in rows], index=df.index, dtype=object)
    df.attrs["notes"] = (
        "parameters: as sent (None: not sent, the server's default); mean_entropy: mean "
        "over positions of the entropy over the returned top_logprobs alternatives, in "
        "nats, a lower bound (NaN without top_logprobs)."
    )
    return df


def _param_names(pins: list[Pin]) -> list[str]:
    used = {name for p in pins for name in p.params}
    return [name for name in PARAMS if name in used]


def _cell(value: Any) -> str:
    if value is None:
        return '<span style="opacity: 0.5">unset</span>'
    if isinstance(value, float):
        return f"{value:g}"
    return html.escape(
        json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    )


def pins_html(pins: list[Pin]) -> str:
    """The pinned runs as an HTML table, one column per run, differing rows highlighted."""
    if not pins:
        return ""
    names = _param_names(pins)
    head = "".join(f"<th>run {i}</th>" for i in range(1, len(pins) + 1))
    rows = []

    def row(label: str, cells: list[str], differ: bool) -> None:
        style = ' style="background: #fff3b0"' if differ else ""
        cls = ' class="tmlab-differs"' if differ else ""
        tds = "".join(f'<td style="vertical-align: top">{c}</td>' for c in cells)
        rows.append(f"<tr{cls}{style}><th>{html.escape(label)}</th>{tds}</tr>")

    models = [p.model for p in pins]
    row("model", [_cell(m) for m in models], len(set(map(str, models))) > 1)
    for name in names:
        values = [p.params.get(name) for p in pins]
        keys = {json.dumps(v, sort_keys=True, default=str) for v in values}
        row(name, [_cell(v) for v in values], len(keys) > 1)
    answers = [p.result.text for p in pins]
    row(
        "answer",
        [
            f'<div style="white-space: pre-wrap; max-width: 28em">{html.escape(a[:600])}'
            f"{'…' if len(a) > 600 else ''}</div>"
            for a in answers
        ],
        len(set(answers)) > 1,
    )
    row("tokens", [_cell(p.result.usage.completion_tokens) for p in pins], False)
    row(
        "mean entropy (nats, over returned alternatives)",
        [_cell(round(e, 3)) if not math.isnan(e := mean_entropy(p.result)) else "—" for p in pins],
        False,
    )
    row(
        "latency (s)",
        [
            _cell(round(p.result.timing.latency_s, 2)) if p.result.timing.latency_s else "—"
            for p in pins
        ],
        False,
    )
    return (
        '<div><b>pinned runs</b> <span style="font-size: smaller; opacity: 0.7">(rows that '
        "differ are highlighted)</span></div>"
        f'<table class="tmlab-pins-table"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    )

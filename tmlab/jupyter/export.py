"""A lesson's runs, saved for slides: one folder of HTML, PNG and CSV in one call.

:func:`export_lesson` writes what a teacher shows after class: the Explorer's pinned runs (their
parameters side by side, differences highlighted, and each answer's token heatmap), any other
answers, and a sweep (its summary, its rows and its plot):

- ``index.html``: one self-contained page (inline styles; the plot as ``sweep.png`` beside it);
- ``runs.csv`` (the pinned runs), ``answers.csv`` (every answer: text, parameters, usage),
  ``sweep.csv`` and ``sweep_summary.csv``;
- ``sweep.png`` (needs matplotlib, the ``plot`` extra; without it the page says so).

``Explorer.export(directory)`` does the same for an Explorer's pins. Nothing here holds the API
key: parameters are those sent, and a result never carries a header.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tmlab.display import tokens_html, usage_line
from tmlab.errors import ParameterError
from tmlab.jupyter.pins import Pin, pins_frame, pins_html
from tmlab.result import ChatResult

__all__ = ["export_lesson"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "line-height:1.45}h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ddd;padding:3px 6px;"
    "vertical-align:top}.answer{margin:1em 0;padding:0.6em;border-left:4px solid #8ab}"
    "img{max-width:100%}small{opacity:0.75}"
)


def _answers_frame(results: Sequence[ChatResult]) -> pd.DataFrame:
    rows = []
    for i, res in enumerate(results, start=1):
        u = res.usage
        rows.append(
            {
                "answer": i,
                "model": res.model,
                "text": res.text,
                "finish_reason": res.finish_reason,
                "params": json.dumps(res.request, sort_keys=True, default=str),
                "prompt_tokens": u.prompt_tokens,
                "cached_tokens": u.cached_tokens,
                "completion_tokens": u.completion_tokens,
                "latency_s": res.timing.latency_s,
            }
        )
    return pd.DataFrame(rows)


def _answer_html(title: str, res: ChatResult) -> str:
    params = ", ".join(
        f"{k}={v!r}" for k, v in sorted(res.request.items()) if k not in ("messages", "model")
    )
    heat = str(tokens_html(res)) if res.choices and res.choices[0].has_logprobs else ""
    return (
        f"<div class='answer'><b>{html.escape(title)}</b> <small>{html.escape(params)}</small>"
        f"<p>{html.escape(res.text)}</p>{heat}<small>{html.escape(usage_line(res))}</small></div>"
    )


def _sweep_plot(sweep: pd.DataFrame, out: Path) -> str:
    """The sweep's plot as ``sweep.png``; the ``<img>`` tag, or a line saying why none."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return "<p><i>No plot: matplotlib is not installed (pip install 'tmlab[plot]').</i></p>"
    from tmlab.analysis.summary import plot_sweep

    x = "temperature" if "temperature" in sweep.columns else None
    if x is None:
        return "<p><i>No plot: the sweep has no temperature column to put on the x axis.</i></p>"
    ax = plot_sweep(sweep, x=x)  # a line per value of every other parameter that varies
    fig = ax.get_figure(root=True)
    assert fig is not None
    fig.savefig(out / "sweep.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return "<img src='sweep.png' alt='the sweep: distinct answers per setting'>"


def export_lesson(
    directory: str | Path,
    *,
    pins: Sequence[Pin] = (),
    results: Sequence[ChatResult] = (),
    sweep: pd.DataFrame | None = None,
    title: str = "tmlab lesson",
) -> Path:
    """Save pinned runs, answers and a sweep into ``directory`` (created if needed) as
    ``index.html`` with CSV and PNG files beside it; returns the page's path."""
    if not pins and not results and sweep is None:
        raise ParameterError(
            "pins", "nothing to export", "pins (Explorer.export), results=[...] or sweep=df"
        )
    bad = [r for r in results if not isinstance(r, ChatResult)]
    if bad:
        raise ParameterError("results", f"{type(bad[0]).__name__} is not a ChatResult", "results")
    if sweep is not None and not isinstance(sweep, pd.DataFrame):
        raise ParameterError("sweep", f"{type(sweep).__name__}", "a tmlab.sweep() DataFrame")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if pins:
        pins_frame(list(pins)).to_csv(out / "runs.csv", index=False)
        parts.append("<h2>Pinned runs</h2>" + pins_html(list(pins)))
        parts += [_answer_html(f"Run {i}", p.result) for i, p in enumerate(pins, start=1)]
    everything = [p.result for p in pins] + list(results)
    if results:
        parts.append("<h2>Answers</h2>")
        parts += [_answer_html(f"Answer {i}", r) for i, r in enumerate(results, start=1)]
    if everything:
        _answers_frame(everything).to_csv(out / "answers.csv", index=False)
    if sweep is not None:
        from tmlab.analysis.summary import summarize

        sweep.to_csv(out / "sweep.csv", index=False)
        summary = summarize(sweep)
        summary.to_csv(out / "sweep_summary.csv", index=False)
        parts.append("<h2>Sweep</h2>" + _sweep_plot(sweep, out))
        parts.append(summary.to_html(index=False, na_rep="—"))
    files = sorted(p.name for p in out.iterdir() if p.name != "index.html")
    parts.append(f"<p><small>Files beside this page: {html.escape(', '.join(files))}</small></p>")
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "".join(parts)
        + "</body></html>",
        encoding="utf-8",
    )
    return page

"""Plots that read: integer ticks for counts, units in the title, and one probability colour
scale shared by the heatmap, the token view and the plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd

from tmlab.analysis.plots import prob_colormap
from tmlab.analysis.summary import plot_sweep
from tmlab.display import PROB_BINS, prob_colour, prob_legend_html, tokens_html
from tmlab.result import ChatResult


def test_counts_get_integer_ticks_and_the_title_units() -> None:
    summary = pd.DataFrame(
        {"temperature": [0.2, 0.7, 1.2], "distinct_answers": [1, 2, 3], "n": [5, 5, 5]}
    )
    summary.attrs["keys"] = ["temperature"]
    ax = plot_sweep(summary)
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_yticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no 1.5 answers
    assert any(not float(t).is_integer() for t in ax.get_xticks())  # 0.2, 0.7: not counts
    assert "distinct_answers (count)" in ax.get_title()
    timed = summary.assign(mean_latency_s=[0.5, 0.25, 0.75])
    ax = plot_sweep(timed, y="mean_latency_s")
    assert "(seconds)" in ax.get_title()
    ax.figure.canvas.draw()
    assert any(not float(t).is_integer() for t in ax.get_yticks())


def test_one_probability_scale_everywhere() -> None:
    cmap, norm = prob_colormap()
    for p in (0.05, 0.3, 0.5, 0.75, 0.95, 1.0):
        rgba = cmap(norm(p))
        expected = matplotlib.colors.to_rgba(prob_colour(p))
        assert rgba == expected, p
    assert len(PROB_BINS) == cmap.N
    legend = prob_legend_html()
    assert all(colour in legend for _, _, colour in PROB_BINS)
    content = [{"token": "A", "logprob": -0.01, "top_logprobs": []}]
    raw = {"choices": [{"index": 0, "message": {"content": "A"}, "logprobs": {"content": content}}]}
    page = tokens_html(ChatResult(raw))
    assert prob_colour(0.99) in page and legend in page

"""Plots: the artists carry the computed numbers and the labels say which distribution."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tmlab import ChatResult, ParameterError  # noqa: E402
from tmlab.plots import OTHER_LABEL, plot_entropy, plot_whatif  # noqa: E402
from tmlab.sampling import RAW_LABEL, WHATIF_LABEL, entropy_frame, whatif  # noqa: E402

LN = math.log


def _lp(token: str, p: float, alts: list[tuple[str, float]]) -> dict[str, Any]:
    top = [{"token": t, "logprob": LN(q)} for t, q in alts]
    return {"token": token, "logprob": LN(p), "top_logprobs": top}


RES = ChatResult(
    {
        "choices": [
            {
                "index": 0,
                "message": {"content": "B A\n"},
                "logprobs": {
                    "content": [
                        _lp("B", 0.3, [("A", 0.5), ("B", 0.3), (" C", 0.1)]),
                        _lp(" A", 0.45, [(" A", 0.45), ("\n", 0.4), ("\t", 0.05)]),
                        _lp("\n", 0.9, [("\n", 0.9), (" ", 0.02)]),
                    ]
                },
            }
        ]
    }
)


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def _heights(container: Any) -> list[float]:
    return [patch.get_height() for patch in container.patches]


def _legend_texts(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.mark.parametrize(
    "settings",
    [{}, {"temperature": 0.5, "top_k": 2}, {"temperature": 1.5, "top_p": 0.7, "min_p": 0.1}],
)
def test_whatif_bars_are_the_computed_probabilities(settings: dict[str, Any]) -> None:
    ax = plot_whatif(RES, 0, **settings)
    ax.figure.canvas.draw()  # renders every label (a missing glyph would warn → fail)
    df = whatif(RES, position=0, **settings)
    raw, what, other = ax.containers
    assert _heights(raw) == pytest.approx(df["raw_prob"].tolist())
    assert _heights(what) == pytest.approx(df["whatif_prob"].tolist())
    assert _heights(other) == pytest.approx([0.1])
    assert _legend_texts(ax) == [RAW_LABEL, WHATIF_LABEL, OTHER_LABEL]
    title = ax.get_title()
    assert "approximation" in title and "3 returned alternatives" in title
    assert "raw (as returned)" in title
    bound = df["tv_bound"].iloc[0]
    assert ("exact here" if bound == 0 else "error") in title


def test_whatif_labels_show_whitespace_and_mark_the_generated_token() -> None:
    ax = plot_whatif(RES, 1, temperature=0.7, ax=plt.figure().add_subplot())
    ax.figure.canvas.draw()
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == [
        "\u201c\u2423A\u201d",
        "\u201c\u21b5\u201d",
        "\u201c\u21e5\u201d",
        "(other)",
    ]
    assert [t.get_fontweight() for t in labels[:3]] == ["bold", "normal", "normal"]
    assert "T=0.7" in ax.get_title()


def test_bad_settings_fail_before_drawing() -> None:
    with pytest.raises(ParameterError):
        plot_whatif(RES, 0, temperature=-1)
    with pytest.raises(ParameterError):
        plot_whatif(RES, 9)
    assert plt.get_fignums() == []


def test_entropy_plot_lines_and_close_calls() -> None:
    ax = plot_entropy(RES, gap=0.1)
    ax.figure.canvas.draw()
    df = entropy_frame(RES, gap=0.1)
    entropy, surprisal = ax.lines
    assert np.asarray(entropy.get_ydata()).tolist() == pytest.approx(df["entropy"].tolist())
    assert np.asarray(surprisal.get_ydata()).tolist() == pytest.approx(
        [-LN(0.3), -LN(0.45), -LN(0.9)]
    )
    marked = ax.collections[0].get_offsets()
    assert np.asarray(marked)[:, 0].tolist() == [1.0]  # 0.45 vs 0.4: a close call
    texts = _legend_texts(ax)
    assert "lower bound" in texts[0]
    assert "\u2212logprob" in texts[1]
    assert "top-2 gap < 0.1" in texts[2] and "diverge" in texts[2]
    assert "lower bound" in ax.get_title()


def test_entropy_plot_gap_is_a_parameter() -> None:
    ax = plot_entropy(RES, gap=0.25)
    assert np.asarray(ax.collections[0].get_offsets())[:, 0].tolist() == [0.0, 1.0]

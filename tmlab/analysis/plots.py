"""Matplotlib plots: what-if bars, per-position entropy and surprisal, a scored text's surprisal.

``matplotlib`` is an optional extra (``pip install 'tmlab[plot]'``), imported inside each
function, so ``import tmlab`` never needs it. Every function draws on ``ax`` when given (else a
new figure) and returns the Axes; the numbers come from :mod:`tmlab.analysis.whatif`, whose frames
hold the same values without a plot.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from tmlab.analysis.whatif import RAW_LABEL, WHATIF_LABEL, check_settings, entropy_frame, whatif
from tmlab.display import PROB_BINS, prob_colour, token_shown
from tmlab.errors import ParameterError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    from tmlab.analysis.scoring import ScoreResult
    from tmlab.result import ChatResult

__all__ = [
    "axes_of",
    "plot_cache",
    "plot_entropy",
    "plot_stages",
    "plot_surprisal",
    "plot_whatif",
    "prob_colormap",
]

OTHER_LABEL = "raw mass outside the returned alternatives (unknown to the what-if)"


def prob_colormap() -> tuple[ListedColormap, BoundaryNorm]:
    """The probability colour scale of the token heatmap and token view
    (:data:`tmlab.display.PROB_BINS`) as a matplotlib colormap and norm over 0–1, for
    plots and colour bars that show probabilities the same way."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    bounds = [low for low, _, _ in PROB_BINS] + [PROB_BINS[-1][1]]
    cmap = ListedColormap([colour for _, _, colour in PROB_BINS], name="tmlab_prob")
    return cmap, BoundaryNorm(bounds, cmap.N)


def axes_of(ax: Axes | None, size: tuple[float, float]) -> Axes:
    """``ax``, or new axes of ``size`` inches on a new figure."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=size, layout="constrained")
    return new


def plot_whatif(
    res: ChatResult,
    position: int,
    *,
    choice: int = 0,
    ax: Axes | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    order: str = "temperature_first",
) -> Axes:
    """Bars of the raw (as returned) and the what-if distribution at one position.

    One pair of bars per returned alternative (the generated token's label in bold), and a
    hatched bar for the raw mass outside the returned alternatives, which the what-if cannot
    see. The title says that the what-if is an approximation, and over how many alternatives.
    Settings as for :func:`tmlab.analysis.whatif.whatif`.
    """
    s = check_settings(temperature, top_k, top_p, min_p, order)
    df = whatif(
        res,
        position=position,
        choice=choice,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        order=s.order,
    )
    ax = axes_of(ax, (max(6.5, 0.55 * len(df) + 2.5), 4.2))
    n = len(df)
    x = list(range(n))
    width = 0.4
    ax.bar([i - width / 2 for i in x], df["raw_prob"], width, label=RAW_LABEL, color="#7a9cc6")
    ax.bar(
        [i + width / 2 for i in x], df["whatif_prob"], width, label=WHATIF_LABEL, color="#e08a4b"
    )
    other = float(df["other_mass"].iloc[0]) if n else float("nan")
    ax.bar([n], [other], width, label=OTHER_LABEL, color="#cccccc", hatch="//", edgecolor="#888")
    ax.set_xticks([*x, n])
    ax.set_xticklabels([*(token_shown(t) for t in df["token"]), "(other)"], rotation=45, ha="right")
    for label, sampled in zip(ax.get_xticklabels(), df["is_sampled"], strict=False):
        if sampled:
            label.set_fontweight("bold")
    ax.set_ylim(0, 1.4)  # headroom for the legend, inside the axes so savefig keeps it
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("probability")
    bound = float(df["tv_bound"].iloc[0]) if n else math.nan
    if bound == 0:
        error = "exact here"
    elif math.isnan(bound):
        error = "error not bounded by the returned numbers"
    else:
        error = f"total-variation error \u2264 {bound:.3f}"
    ax.set_title(
        f"position {position}: {RAW_LABEL} vs what-if ({s.describe()})\n"
        f"what-if = approximation over the {n} returned alternatives\n"
        f"(raw other_mass {other:.3f} not seen; {error})",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_entropy(
    res: ChatResult, *, choice: int = 0, gap: float = 0.1, ax: Axes | None = None
) -> Axes:
    """Per-position entropy (a lower bound) and surprisal, marking the close calls.

    Entropy is over the returned alternatives only, hence a lower bound of the full
    distribution's; surprisal is ``-logprob`` of the generated token, both in nats. Positions
    whose top-2 gap (probability of the most likely minus the second, as returned) is below
    ``gap`` are marked: another sample would likely diverge there.
    """
    df = entropy_frame(res, gap=gap, choice=choice)
    ax = axes_of(ax, (max(6.5, 0.18 * len(df) + 3.0), 4.2))
    pos = df["position"].to_numpy()
    ax.plot(
        pos,
        df["entropy"],
        marker=".",
        label="entropy over the returned alternatives (lower bound)",
        color="#3b6ea8",
    )
    ax.plot(
        pos,
        df["surprisal"],
        marker=".",
        label="surprisal = \u2212logprob of the generated token",
        color="#c0504d",
    )
    close = df[df["may_diverge"]]
    ax.scatter(
        close["position"],
        close["surprisal"],
        s=90,
        facecolors="none",
        edgecolors="#000",
        zorder=3,
        label=f"top-2 gap < {gap:g}: another sample would likely diverge here",
    )
    if len(df) <= 60:
        ax.set_xticks(pos)
        ax.set_xticklabels(
            [token_shown(t) for t in df["token"]], rotation=60, ha="right", fontsize=8
        )
    ax.set_xlabel("position (token)")
    ax.set_ylabel("nats")
    ax.set_title(
        "Per-position entropy (lower bound, over the returned alternatives) and surprisal\n"
        "probabilities as returned by the server",
        fontsize=10,
    )
    top = float(np.nanmax([df["entropy"].max(), df["surprisal"].max(), 0.1]))
    ax.set_ylim(0, top * 1.45)  # headroom for the legend
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_surprisal(score: ScoreResult, *, ax: Axes | None = None) -> Axes:
    """Surprisal (bits) of each token of a scored text, along the text.

    Bars of ``-logprob / ln 2`` per token, the entropy over the returned alternatives (a lower
    bound, bits) as a line, and the mean surprisal as a dashed line; the tokens label the
    x axis when there are few enough. The title says what the numbers are.
    """
    from matplotlib.cm import ScalarMappable

    df = score.frame()
    ax = axes_of(ax, (max(6.5, 0.22 * len(df) + 3.0), 4.2))
    pos = df["position"].to_numpy()
    bits = df["surprisal_bits"].to_numpy(dtype=float)
    # coloured by p = 2^-bits on the heatmap's scale (tmlab.display.PROB_BINS)
    colours = [prob_colour(2.0**-b) for b in bits]
    ax.bar(
        pos,
        np.nan_to_num(bits),
        color=colours,
        edgecolor="#555",
        linewidth=0.5,
        label="surprisal = −log₂ p",
    )
    cmap, norm = prob_colormap()
    ax.figure.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=ax,
        label="bars: surprisal = −log₂ p, coloured by p (the heatmap's scale)",
    )
    ax.plot(
        pos,
        df["entropy_bits"].to_numpy(dtype=float),
        marker=".",
        color="#3b6ea8",
        label="entropy over the returned alternatives (lower bound)",
    )
    mean = float(np.nanmean(bits)) if np.isfinite(bits).any() else math.nan
    if math.isfinite(mean):
        ax.axhline(mean, color="#555", linestyle="--", linewidth=1, label=f"mean {mean:.2f} bits")
    if len(df) <= 60:
        ax.set_xticks(pos)
        ax.set_xticklabels(
            [token_shown(t) for t in df["token"]], rotation=60, ha="right", fontsize=8
        )
    ax.set_xlabel("token of the text")
    ax.set_ylabel("bits")
    ax.set_title(
        f"Surprisal along the text (perplexity {score.perplexity:.2f})\n{score.meaning}",
        fontsize=9,
        wrap=True,
    )
    finite = bits[np.isfinite(bits)]
    ax.set_ylim(0, float(max(finite.max() if finite.size else 1.0, 1.0)) * 1.4)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_cache(report: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Time to first token against prompt tokens, each request coloured by its cached share.

    ``report``: a :func:`tmlab.cache_report` frame (or any frame with ``prompt_tokens``,
    ``cached_tokens`` and ``ttft_s``). The colour is ``cache_hit_rate`` (0 = nothing reused,
    1 = the whole prompt); requests whose server did not report cached tokens are grey
    crosses. Prefill grows with the uncached prompt tokens: hits sit below misses.
    """
    from matplotlib import colormaps

    for col in ("prompt_tokens", "ttft_s"):
        if col not in report.columns:
            raise ParameterError("report", f"the frame has no {col} column", "a cache_report")
    ax = axes_of(ax, (6.5, 4.2))
    x = report["prompt_tokens"].to_numpy(dtype=float, na_value=np.nan)
    y = report["ttft_s"].to_numpy(dtype=float, na_value=np.nan)
    if "cache_hit_rate" in report.columns:
        share = report["cache_hit_rate"].to_numpy(dtype=float, na_value=np.nan)
    else:
        share = np.full(len(report), np.nan)
    known = np.isfinite(share)
    points = ax.scatter(
        x[known], y[known], c=share[known], cmap=colormaps["viridis"], vmin=0.0, vmax=1.0, s=36
    )
    if (~known).any():
        ax.scatter(
            x[~known], y[~known], marker="x", color="#999", label="cached tokens not reported"
        )
        ax.legend(fontsize=8, loc="upper left")
    ax.figure.colorbar(points, ax=ax, label="cached share of the prompt (cache hit rate)")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (s, measured by the client)")
    ax.set_title("Prefill time against prompt length, by cached share", fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return ax


def plot_stages(
    res: ChatResult,
    position: int = 0,
    *,
    choice: int = 0,
    show: int = 12,
    fig: Figure | None = None,
) -> Figure:
    """The sampler's stages at one generated position, one panel per stage that acted.

    From the response's ``sampler_trace`` (ask with ``sampler_trace=True``; tmlab's embedded
    server): each panel shows the ``show`` most likely raw candidates' probabilities after that
    stage (exact, over the whole vocabulary), coloured as in the token heatmap. A token a stage
    removed is a grey outline of its raw probability, labelled with the stage that cut it; the
    drawn token is outlined in black. Returns the figure.
    """
    from tmlab.frames import trace_frame

    df = trace_frame(res, choice)
    at = df[df["position"] == position]
    if at.empty:
        have = sorted(set(df["position"])) if not df.empty else []
        raise ParameterError(
            "position",
            f"no sampler trace at position {position}"
            + (f" (traced: {have[:10]}{' …' if len(have) > 10 else ''})" if have else "")
            + "; ask with sampler_trace=True (tmlab's embedded server)",
        )
    import matplotlib.pyplot as plt

    stages = [s for s, g in at.groupby("stage_index", sort=True) if bool(g["active"].iloc[0])]
    raw = at[at["stage_index"] == stages[0]].head(show)
    ids = list(raw["candidate_id"])
    labels = [token_shown(t) for t in raw["candidate"]]
    if fig is None:
        fig = plt.figure(
            figsize=(max(6.0, 0.55 * len(ids) + 1.5), 1.6 * len(stages) + 1.0),
            layout="constrained",
        )
    axes = fig.subplots(len(stages), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(ids))
    raw_p = raw["p"].to_numpy()
    for ax, si in zip(axes, stages, strict=True):
        rows = at[at["stage_index"] == si].set_index("candidate_id").loc[ids]
        p = rows["p"].to_numpy()
        cut = p <= 0.0
        stage = str(rows["stage"].iloc[0])
        setting = rows["setting"].iloc[0]
        ax.bar(x[~cut], p[~cut], color=[prob_colour(v) for v in p[~cut]], edgecolor="none")
        ax.bar(x[cut], raw_p[cut], color="none", edgecolor="#bbbbbb", hatch="//")
        for i in np.flatnonzero(cut):
            ax.text(
                x[i],
                raw_p[i],
                f"✂ {rows['cut_by'].iloc[i]}",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                color="#888888",
            )
        drawn = np.flatnonzero(rows["drawn"].to_numpy())
        if drawn.size:
            i = drawn[0]
            ax.bar([x[i]], [p[i] if not cut[i] else raw_p[i]], color="none", edgecolor="black")
        title = stage if setting is None or stage == "raw" else f"{stage} = {setting}"
        kept = int(rows["kept"].iloc[0])
        ax.set_title(
            f"{title}   (kept {kept:,}, removed {rows['removed_mass'].iloc[0]:.1%}, "
            f"entropy {rows['entropy'].iloc[0]:.2f} nats)",
            fontsize=9,
            loc="left",
        )
        ax.set_ylim(0, max(1e-9, float(max(p.max(), raw_p.max()))) * 1.25)
        ax.set_ylabel("p")
    axes[-1].set_xticks(x, labels, rotation=45, ha="right")
    token = token_shown(str(at["token"].iloc[0]))
    fig.suptitle(f"Position {position}: drew {token}: probability after each sampler stage")
    return fig

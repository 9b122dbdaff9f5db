"""Display: ChatResults and frames → HTML / Markdown / Styler. Formatting only, no I/O."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from tmlab.result import ChatResult, TokenLogprob

__all__ = [
    "ALTERNATIVES_COLUMN",
    "CELL_CHARS",
    "MAX_ROWS",
    "PROB_BINS",
    "HTMLText",
    "chat_result_html",
    "chat_result_markdown",
    "collapsed_html",
    "finish_notes",
    "one_line_html",
    "prob_colour",
    "prob_legend_html",
    "stats_line",
    "style_frame",
    "style_logprobs",
    "token_heatmap_html",
    "tokens_html",
    "usage_line",
]


def usage_line(res: ChatResult) -> str:
    """One line: model · tokens · cached tokens and hit rate · latency · TTFT · tokens/s ·
    finish reason."""
    u, t = res.usage, res.timing
    parts = []
    if res.model:
        parts.append(str(res.model))
    if u.prompt_tokens is not None or u.completion_tokens is not None:
        tokens = f"{u.prompt_tokens if u.prompt_tokens is not None else '?'} prompt"
        tokens += f" + {u.completion_tokens if u.completion_tokens is not None else '?'} completion"
        if u.reasoning_tokens:
            tokens += f" (incl. {u.reasoning_tokens} reasoning)"
        parts.append(tokens + " tokens")
        if u.cached_tokens is not None and u.prompt_tokens:
            # as the server reported it: 0 is a miss, no number at all is "not reported"
            parts.append(
                f"cached {u.cached_tokens:,} of {u.prompt_tokens:,} "
                f"({_percent(u.cached_tokens / u.prompt_tokens)})"
            )
    if t.latency_s is not None:
        parts.append(f"{t.latency_s:.2f} s")
    if t.ttft_s is not None and t.ttft_s != t.latency_s:
        parts.append(f"TTFT {t.ttft_s:.2f} s")
    if t.tokens_per_s is not None:
        parts.append(f"{t.tokens_per_s:.1f} tok/s")
    parts.extend(finish_notes(res))
    seq, ppl = res.sequence_logprob, res.perplexity
    if seq is not None and ppl is not None:
        parts.append(f"sequence logprob {seq:.3f} (perplexity {ppl:.2f})")
    if not res.complete:
        parts.append("INCOMPLETE: a partial answer (stopped, or the stream broke off)")
    return " · ".join(parts)


def _percent(share: float) -> str:
    """A share as a whole percentage, never rounded up to 100% or down to 0% when it is not."""
    pct = share * 100
    if 0 < pct < 1:
        return "<1%"
    if 99 < pct < 100:
        return ">99%"
    return f"{pct:.0f}%"


def finish_notes(res: ChatResult) -> list[str]:
    """Why the answer ended, for the usage line: the finish reason; the session's default
    length limit when a front end sent it (and that the answer stopped there); a repetition
    loop the answer ends in (:mod:`tmlab.repetition`); logprobs asked for and not returned."""
    notes = []
    limit = res.session_limit
    if res.finish_reason:
        finish = f"finish: {res.finish_reason}"
        if limit is not None and res.stopped_at_session_limit:
            finish += f" (stopped at the session's {limit.tokens}-token limit; {limit.change})"
        notes.append(finish)
    if limit is not None and not res.stopped_at_session_limit:
        notes.append(f"max_tokens {limit.tokens} (session default)")
    loop = res.loop
    if loop is not None:
        notes.append(f"looping: {loop.describe()}")
    if res.logprobs_missing:
        notes.append("no logprobs came back (the server lacks them)")
    return notes


def _tool_calls_text(res: ChatResult) -> str:
    lines = []
    for call in res.tool_calls:
        fn = call.get("function") or {}
        lines.append(f"{fn.get('name', '?')}({fn.get('arguments', '')})")
    return "\n".join(lines)


def chat_result_html(res: ChatResult) -> str:
    """The answer, a collapsible reasoning block, tool calls and the usage line, as HTML."""
    out = ['<div class="tmlab-result">']
    if res.reasoning:
        out.append(
            '<details class="tmlab-reasoning"><summary>reasoning '
            f'({len(res.reasoning)} chars)</summary><div style="white-space: pre-wrap; '
            f'opacity: 0.75">{html.escape(res.reasoning)}</div></details>'
        )
    if len(res.choices) > 1:
        for choice in res.choices:
            out.append(
                f'<div style="white-space: pre-wrap"><b>[{choice.index}]</b> '
                f"{html.escape(choice.text)}</div>"
            )
    else:
        out.append(f'<div style="white-space: pre-wrap">{html.escape(res.text)}</div>')
    if res.tool_calls:
        out.append(f"<pre>{html.escape(_tool_calls_text(res))}</pre>")
    out.append(
        f'<div style="font-size: smaller; opacity: 0.7">{html.escape(usage_line(res))}</div></div>'
    )
    return "".join(out)


def chat_result_markdown(res: ChatResult) -> str:
    """Markdown fallback of :func:`chat_result_html`."""
    parts = []
    if res.reasoning:
        quoted = "\n".join("> " + line for line in res.reasoning.splitlines())
        parts.append(f"> **reasoning**\n{quoted}")
    parts.append(res.text)
    if res.tool_calls:
        parts.append("```\n" + _tool_calls_text(res) + "\n```")
    parts.append(f"*{usage_line(res)}*")
    return "\n\n".join(parts)


ALTERNATIVES_COLUMN = "alternatives (p)"
"""The column of :func:`style_logprobs` that replaces ``top_tokens`` and ``top_logprobs``."""

_ALT_NOTE = (
    "alternatives (p): the returned alternatives, most likely first, with their probabilities "
    "as returned (2 significant digits; the generated token in bold; exact values in the plain "
    "frame's top_tokens/top_logprobs)."
)


def _quoted(token: str) -> str:
    """A token as a JSON string, HTML-escaped: a leading space or a newline stays visible."""
    return html.escape(json.dumps(token, ensure_ascii=False), quote=False)


def _alternatives(tokens: list[str], logprobs: list[float], generated: str) -> str:
    """``"A" 0.77 · "In" 0.16 · …`` as HTML: one compact line that wraps in its cell."""
    pairs = sorted(zip(tokens, logprobs, strict=True), key=lambda tl: -tl[1])
    shown = []
    bolded = False
    for token, lp in pairs:
        item = f"{_quoted(token)} {math.exp(lp):.2g}"
        if token == generated and not bolded:
            item, bolded = f"<b>{item}</b>", True
        # lines break between alternatives only, never inside a token or before its p
        shown.append(f'<span style="white-space: nowrap">{item}</span>')
    return " \u00b7 ".join(shown)


MAX_ROWS = 60
"""How many rows a styled table shows at most: a notebook cell, not a spreadsheet (a pandas
Styler ignores ``display.max_rows``); a line above the table says how many more there are."""

CELL_CHARS = 48
"""How many characters of a text, dict or list cell :func:`style_frame` shows on its line."""


def _more_rows(shown: int, total: int, unit: str, how: str) -> str:
    return f"showing the first {shown:,} of {total:,} {unit} ({total - shown:,} more: {how})."


def style_logprobs(df: pd.DataFrame, max_rows: int | None = MAX_ROWS) -> Styler:
    """A Styler of a logprobs frame: probability bars, the alternatives in one compact column,
    the notes as caption.

    ``top_tokens`` and ``top_logprobs`` (two Python lists per row, too wide for a notebook
    cell) are shown as one column, ``"A" 0.77 · "In" 0.16 · …``, that wraps within the cell;
    the row index, token ids and (for a single choice) the choice column are not shown. The
    plain frame keeps its columns and exact values. At most ``max_rows`` rows are shown
    (``None``: all), and the caption says how many more there are and where they are.
    """
    total = len(df)
    cut = max_rows is not None and total > max_rows
    single_choice = "choice" in df and df["choice"].nunique() <= 1
    if cut:
        df = df.iloc[:max_rows]
    shown = df.copy()
    # Tokens as JSON strings, so that a leading space or a newline is visible.
    for col in ("token", "alt_token"):
        if col in shown:
            shown[col] = [_quoted(t) for t in shown[col]]
    wrapped: list[Hashable] = []
    if "top_tokens" in shown and "top_logprobs" in shown:
        at = list(shown.columns).index("top_tokens")
        columns = zip(df["top_tokens"], df["top_logprobs"], df["token"], strict=True)
        alts = [_alternatives(list(toks), list(lps), tok) for toks, lps, tok in columns]
        shown = shown.drop(columns=["top_tokens", "top_logprobs"])
        shown.insert(at, ALTERNATIVES_COLUMN, alts)
        wrapped.append(ALTERNATIVES_COLUMN)
    styler = shown.style.format(
        {
            c: "{:.4f}"
            for c in (
                "logprob",
                "prob",
                "entropy",
                "top_mass",
                "other_mass",
                "alt_logprob",
                "alt_prob",
            )
            if c in shown
        },
        na_rep="—",
    )
    for col in ("prob", "alt_prob"):
        if col in shown:
            styler = styler.bar(subset=[col], vmin=0.0, vmax=1.0, color="#8fbcd4", height=40)
    if wrapped:
        styler = styler.set_properties(
            subset=wrapped,
            **{"white-space": "normal", "text-align": "left", "min-width": "16em"},
        ).set_table_styles(
            {ALTERNATIVES_COLUMN: [{"selector": "th", "props": "text-align: left"}]},
            overwrite=False,
        )
    tokens: list[Hashable] = [c for c in ("token", "alt_token") if c in shown]
    if tokens:
        styler = styler.set_properties(subset=tokens, **{"white-space": "pre"})
    # Narrow enough for a notebook cell: no row index (position says it), no token ids and
    # no choice column for a single choice (the plain frame keeps them all).
    hidden: list[Hashable] = [c for c in ("token_id", "alt_token_id") if c in shown]
    if single_choice:
        hidden.append("choice")
    styler = styler.hide(axis="index")
    if hidden:
        styler = styler.hide(subset=hidden, axis="columns")
    notes = df.attrs.get("notes")
    caption = [notes] if notes else []
    if cut:
        unit = "alternatives" if "alt_token" in df else "tokens"
        how = "res.logprobs_frame() is the whole DataFrame; style_logprobs(frame, max_rows=None)"
        caption.insert(0, _more_rows(len(df), total, unit, how + " styles every row"))
    if wrapped:
        caption.append(_ALT_NOTE)
    if caption:
        styler = styler.set_caption(html.escape(" ".join(caption)))
    return styler


def one_line_html(value: Any, limit: int = CELL_CHARS) -> str:
    """A cell's value on one line, at most ``limit`` characters (``…`` where cut), as HTML; the
    whole value, escaped, in its ``title`` tooltip when the line does not show all of it.

    Dicts and lists are written as JSON; newlines show as ``↵``; missing values as ``—``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        full = value
    elif isinstance(value, dict | list | tuple):
        try:
            full = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):  # keys JSON cannot write (tuples …)
            full = str(value)
    else:
        full = str(value)
    line = full.replace("\r\n", "\n").replace("\n", " \u21b5 ").replace("\t", " ")
    if len(line) > limit:
        line = line[: max(limit - 1, 1)] + "\u2026"
    text = html.escape(line, quote=False)
    if line == full:
        return text
    return f'<span title="{html.escape(full, quote=True)}">{text}</span>'


def style_frame(
    df: pd.DataFrame,
    *,
    max_rows: int | None = MAX_ROWS,
    cell_chars: int = CELL_CHARS,
    more: str = "the DataFrame itself has them all",
) -> Styler:
    """A Styler of any frame that fits a notebook cell: text, dict and list columns on one
    line each (at most ``cell_chars`` characters, the whole value in the tooltip), at most
    ``max_rows`` rows with a caption saying how many more there are and ``more`` (where to get
    them); numbers to 4 significant digits; the frame's ``attrs["notes"]`` in the caption.
    """
    import pandas as pd

    total = len(df)
    cut = max_rows is not None and total > max_rows
    shown = df.iloc[:max_rows] if cut else df
    texts = [
        c
        for c in shown.columns
        if shown[c].dtype == object or isinstance(shown[c].dtype, pd.StringDtype)
    ]
    floats = [c for c in shown.columns if shown[c].dtype.kind == "f"]

    def cell(value: Any) -> str:
        return one_line_html(value, cell_chars)

    formats: dict[Hashable, Any] = {c: cell for c in texts}
    formats.update({c: "{:.4g}" for c in floats})
    # one call: each call of Styler.format (pandas 3) resets the columns it is not given
    styler = shown.style.format(formats, na_rep="\u2014")
    if texts:  # per column, not per cell: the CSS stays small
        one_line: Any = [{"selector": "td", "props": "white-space: nowrap; text-align: left"}]
        styler = styler.set_table_styles({c: one_line for c in texts}, overwrite=False)
    if isinstance(shown.index, pd.RangeIndex):
        styler = styler.hide(axis="index")
    caption = [_more_rows(len(shown), total, "rows", more)] if cut else []
    notes = df.attrs.get("notes")
    if notes:
        caption.append(str(notes))
    if caption:
        styler = styler.set_caption(html.escape(" ".join(caption)))
    return styler


def collapsed_html(df: pd.DataFrame, hint: str = "", max_rows: int | None = 200) -> HTMLText:
    """A frame folded in a ``<details>``: one line (``all N rows`` and ``hint``) until opened,
    then :func:`style_frame` of it (at most ``max_rows`` rows)."""
    label = f"all {len(df):,} rows" + (f" \u00b7 {hint}" if hint else "")
    table = style_frame(df, max_rows=max_rows).to_html()
    return HTMLText(
        f'<details class="tmlab-rows"><summary>{html.escape(label)}</summary>{table}</details>'
    )


# --- token heatmap -------------------------------------------------------------------------


class HTMLText(str):
    """A ``str`` of HTML that Jupyter displays rendered (it has ``_repr_html_``)."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        return str(self)


PROB_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.2, "#f4a582"),
    (0.2, 0.4, "#fdd49e"),
    (0.4, 0.6, "#fff7bc"),
    (0.6, 0.8, "#d9f0d3"),
    (0.8, 1.0, "#eef3f7"),
)
"""The heatmap's colour scale: ``(low, high, colour)``, low ≤ p < high (the last includes 1)."""

_UNKNOWN_COLOUR = "#dddddd"
# Visible stand-ins for whitespace and control characters; a newline also breaks the line.
_MARKS = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
_MARK_STYLE = "opacity: 0.45"
_TOKEN_STYLE = (
    "position: relative; border-radius: 3px; padding: 1px 1px; margin: 0 1px 0 0; "
    "color: #000; cursor: default"
)
# Only for the popup on hover (JupyterLab, nbviewer). Where <style> is stripped (GitHub) the
# title= tooltip still carries everything; nothing of the popup shows inline.
_HOVER_CSS = (
    "<style>.tmlab-tok:hover{outline:1px solid #555}"
    ".tmlab-tok:hover::after{content:attr(title);position:fixed;margin-top:1.7em;"
    "z-index:20;white-space:pre;background:#fff;color:#000;border:1px solid #999;"
    "border-radius:3px;padding:4px 6px;font-size:12px;line-height:1.35;"
    "box-shadow:0 2px 6px rgba(0,0,0,.25);pointer-events:none}</style>"
)


def prob_colour(p: float) -> str:
    """The colour of probability ``p`` on tmlab's one probability scale (:data:`PROB_BINS`):
    the heatmap, the token view and the plots (``tmlab.analysis.plots.prob_colormap``)."""
    if math.isnan(p):
        return _UNKNOWN_COLOUR
    for low, high, colour in PROB_BINS:
        if low <= p < high:
            return colour
    return PROB_BINS[-1][2]


def token_shown(text: str) -> str:
    """One-line readable form of a token for tooltips: whitespace as markers, quoted."""
    out = []
    for ch in text:
        if ch in _MARKS:
            out.append(_MARKS[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "\u201c" + "".join(out) + "\u201d"


def visible_html(text: str) -> str:
    """HTML of a token's text with whitespace markers; a newline also breaks the line."""
    out = []
    for ch in text:
        if ch in _MARKS:
            out.append(f'<span style="{_MARK_STYLE}">{_MARKS[ch]}</span>')
            if ch == "\n":
                out.append("<br>")
        elif ch.isprintable():
            out.append(html.escape(ch))
        else:
            out.append(html.escape(ch.encode("unicode_escape").decode("ascii")))
    return "".join(out)


@dataclass
class _Piece:
    """What one coloured span shows: one token, or tokens that together make whole characters."""

    positions: list[int]
    tokens: list[TokenLogprob]
    text: str
    escaped: bool = False  # bytes that are not valid UTF-8, shown as \xNN


def _piece_text(token: str, raw: list[int] | None) -> str:
    if raw is None:
        return token
    return bytes(raw).decode("utf-8", errors="backslashreplace")


def _pieces(tokens: list[TokenLogprob]) -> list[_Piece]:
    """Group tokens so that a character split over several tokens' bytes shows whole, once."""
    out: list[_Piece] = []
    pending: list[tuple[int, TokenLogprob]] = []

    def flush(escaped: bool) -> None:
        if pending:
            data = b"".join(bytes(t.bytes or b"") for _, t in pending)
            text = data.decode("utf-8", errors="backslashreplace")
            out.append(_Piece([p for p, _ in pending], [t for _, t in pending], text, escaped))
            pending.clear()

    for pos, tok in enumerate(tokens):
        if tok.bytes is None:
            flush(escaped=True)
            out.append(_Piece([pos], [tok], tok.token))
            continue
        pending.append((pos, tok))
        while pending:
            data = b"".join(bytes(t.bytes or b"") for _, t in pending)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason == "unexpected end of data":
                    break  # a character continues in the next token's bytes
                if len(pending) > 1:
                    # The bytes so far never completed: show them escaped, retry this token.
                    last = pending.pop()
                    flush(escaped=True)
                    pending.append(last)
                    continue
                flush(escaped=True)
                break
            flush(escaped=False)
    flush(escaped=True)
    return out


def _tooltip(piece: _Piece) -> str:
    lines = []
    if len(piece.tokens) > 1:
        joint = math.exp(sum(t.logprob for t in piece.tokens))
        lines.append(
            f"{len(piece.tokens)} tokens make up {token_shown(piece.text)} (UTF-8 bytes split "
            f"across tokens); joint p = {joint:.4f}"
        )
    for pos, tok in zip(piece.positions, piece.tokens, strict=True):
        shown = token_shown(_piece_text(tok.token, tok.bytes))
        lp = tok.logprob
        head = f"position {pos}: {shown}"
        if tok.bytes is not None and len(piece.tokens) > 1:
            head += " bytes " + " ".join(f"{b:02x}" for b in tok.bytes)
        if math.isnan(lp):
            head += "  p unknown (null logprob)"
        else:
            head += f"  p = {math.exp(lp):.4f} (logprob {lp:.4f})"
        lines.append(head)
        if tok.top:
            lines.append("alternatives (probabilities as returned):")
            alts = sorted(tok.top, key=lambda a: -a.logprob)
            for i, alt in enumerate(alts, start=1):
                mark = ""
                same = (
                    alt.token_id == tok.token_id
                    if alt.token_id is not None and tok.token_id is not None
                    else alt.token == tok.token
                )
                if same:
                    mark = "  \u2190 generated"
                text = token_shown(_piece_text(alt.token, alt.bytes))
                lines.append(f"  {i:>2}. {text}  {math.exp(alt.logprob):.4f}{mark}")
            other = max(0.0, 1.0 - sum(math.exp(a.logprob) for a in alts))
            lines.append(f"  other (not returned): {other:.4f}")
    return "\n".join(lines)


_GENERATED = (
    "probability of each generated token, as returned by the server (the embedded "
    "server: the model's raw distribution, before temperature and truncation)"
)


def _legend(what: str = _GENERATED) -> str:
    swatches = []
    for i, (low, high, colour) in enumerate(PROB_BINS):
        last = i == len(PROB_BINS) - 1
        label = f"{low:.1f}\u2013{high:.1f}" if not last else f"\u2265 {low:.1f}"
        swatches.append(
            f'<span style="background: {colour}; color: #000; padding: 0 6px; '
            f'margin-right: 3px; border-radius: 3px">{label}</span>'
        )
    swatches.append(
        f'<span style="background: {_UNKNOWN_COLOUR}; color: #000; padding: 0 6px; '
        'border-radius: 3px">unknown</span>'
    )
    return (
        '<div class="tmlab-legend" style="font-size: 12px; margin-top: 6px; opacity: 0.85">'
        f"colour = {html.escape(what)}: "
        + "".join(swatches)
        + "<br>\u2423 space \u00b7 \u21b5 newline \u00b7 \u21e5 tab \u00b7 hover a token for "
        "the returned alternatives and their probabilities</div>"
    )


def prob_legend_html(what: str = _GENERATED) -> HTMLText:
    """The colour legend of the probability scale, alone (for a view that colours tokens
    without :func:`token_heatmap_html`, e.g. the Explorer's token view)."""
    return HTMLText(_legend(what))


def tokens_html(res: ChatResult, choice: int = 0) -> HTMLText:
    """The answer's tokens coloured by probability, as self-contained HTML, with a legend.

    Whitespace is visible (\u2423 space, \u21b5 newline, which also breaks the line, \u21e5
    tab); each token's ``title`` tooltip lists the returned alternatives with their
    probabilities and the mass not returned. Tokens whose bytes are partial UTF-8 are joined
    with the following ones until the character is whole (coloured by their joint probability);
    bytes that never form a character show as ``\\xNN``. Inline styles and ``title=`` carry
    everything, so it renders in static views that strip ``<style>`` (GitHub); where styles
    survive (JupyterLab, nbviewer) the tooltip also pops up at once. The result is a ``str``
    that Jupyter displays rendered.
    """
    chosen = [c for c in res.choices if c.index == choice]
    box = _BOX
    if not chosen or not chosen[0].logprobs:
        text = chosen[0].text if chosen else ""
        return HTMLText(
            f'{box}<div style="white-space: pre-wrap">{html.escape(text)}</div>'
            '<div style="font-size: 12px; opacity: 0.7">no token logprobs in this response: '
            "ask with logprobs=True, top_logprobs=5 to see the token heatmap</div></div>"
        )
    return token_heatmap_html(chosen[0].logprobs)


_BOX = (
    '<div class="tmlab-tokens" style="font-family: ui-monospace, SFMono-Regular, Menlo, '
    'Consolas, monospace; font-size: 13px; line-height: 2.1">'
)


def token_heatmap_html(
    tokens: list[TokenLogprob], *, what: str = _GENERATED, head: str | None = None
) -> HTMLText:
    """Tokens coloured by probability, with tooltips and a legend saying ``what`` they are.

    The heatmap of :func:`tokens_html` for any list of tokens (a scored text, say); ``head``
    is an optional first line (totals).
    """
    spans = []
    for piece in _pieces(tokens):
        lp = sum(t.logprob for t in piece.tokens)
        style = f"{_TOKEN_STYLE}; background: {prob_colour(math.exp(lp))}"
        if piece.escaped:
            style += "; font-style: italic"
        spans.append(
            f'<span class="tmlab-tok" data-position="{piece.positions[0]}" '
            f'title="{html.escape(_tooltip(piece), quote=True)}" style="{style}">'
            f"{visible_html(piece.text)}</span><wbr>"
        )
    top = f'<div style="font-size: 12px; opacity: 0.85">{html.escape(head)}</div>' if head else ""
    return HTMLText(
        _HOVER_CSS + _BOX + top + "<div>" + "".join(spans) + "</div>" + _legend(what) + "</div>"
    )


def stats_line(stats: dict[str, Any]) -> str:
    """One line of a server's load (its ``/stats``): ``2 running · 3 queued · 41 tokens/s ·
    4 slots (answers may depend on load)``."""
    parts = [f"{stats.get('running', 0)} running", f"{stats.get('queued', 0)} queued"]
    rate = stats.get("tokens_per_s")
    if isinstance(rate, int | float):
        parts.append(f"{rate:.0f} tokens/s")
    slots = stats.get("parallel")
    if isinstance(slots, int):
        if slots == 1:
            exact = "one at a time, exact"
        elif stats.get("batch_invariant") is True:
            exact = "decoded together, each answer as if alone"
        else:
            exact = "answers may depend on load"
        parts.append(f"{slots} slot{'s' if slots != 1 else ''} ({exact})")
    total = stats.get("requests")
    if isinstance(total, int):
        parts.append(f"{total} request{'s' if total != 1 else ''} served")
    shared = stats.get("prompt_tokens_shared")
    if isinstance(shared, int) and shared > 0:
        parts.append(f"{shared:,} prompt tokens evaluated once for several requests")
    return " · ".join(parts)

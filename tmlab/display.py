"""Display: ChatResults and frames → HTML / Markdown / Styler. Formatting only, no I/O."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from tmlab.result import ChatResult

__all__ = ["chat_result_html", "chat_result_markdown", "style_logprobs", "usage_line"]


def usage_line(res: ChatResult) -> str:
    """One line: model · tokens · latency · TTFT · tokens/s · finish reason."""
    u, t = res.usage, res.timing
    parts = []
    if res.model:
        parts.append(str(res.model))
    if u.prompt_tokens is not None or u.completion_tokens is not None:
        tokens = f"{u.prompt_tokens if u.prompt_tokens is not None else '?'} prompt"
        if u.cached_tokens:
            tokens += f" ({u.cached_tokens} cached)"
        tokens += f" + {u.completion_tokens if u.completion_tokens is not None else '?'} completion"
        if u.reasoning_tokens:
            tokens += f" (incl. {u.reasoning_tokens} reasoning)"
        parts.append(tokens + " tokens")
    if t.latency_s is not None:
        parts.append(f"{t.latency_s:.2f} s")
    if t.ttft_s is not None and t.ttft_s != t.latency_s:
        parts.append(f"TTFT {t.ttft_s:.2f} s")
    if t.tokens_per_s is not None:
        parts.append(f"{t.tokens_per_s:.1f} tok/s")
    if res.finish_reason:
        parts.append(f"finish: {res.finish_reason}")
    if not res.complete:
        parts.append("INCOMPLETE (stream broke off)")
    return " · ".join(parts)


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


def style_logprobs(df: pd.DataFrame) -> Styler:
    """A Styler of a logprobs frame: probability bars, compact lists, the notes as caption."""
    shown = df.copy()
    # Tokens as JSON strings, so that a leading space or a newline is visible.
    for col in ("token", "alt_token"):
        if col in shown:
            shown[col] = [json.dumps(t, ensure_ascii=False) for t in shown[col]]
    if "top_tokens" in shown:
        shown["top_tokens"] = [
            "[" + ", ".join(json.dumps(t, ensure_ascii=False) for t in v) + "]"
            for v in shown["top_tokens"]
        ]
    if "top_logprobs" in shown:
        shown["top_logprobs"] = [
            "[" + ", ".join(f"{x:.3f}" for x in v) + "]" for v in shown["top_logprobs"]
        ]
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
    notes = df.attrs.get("notes")
    if notes:
        styler = styler.set_caption(html.escape(notes))
    return styler

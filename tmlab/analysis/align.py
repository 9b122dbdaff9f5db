"""Two answers aligned token by token, with the first divergence marked: :func:`diff`.

Answers are compared token by token when both results carry logprobs, else by pieces of text
(words, spaces and punctuation). ``max |Δ logprob|`` is taken over the generated tokens the
two share before they diverge. The determinism audit (:mod:`tmlab.analysis.audits`) builds on this.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.result import ChatResult

__all__ = ["Diff", "Units", "diff", "diff_units", "max_dlogprob", "unit_of", "units_of"]

_PIECES = re.compile(r"\s+|\w+|[^\w\s]")


@dataclass(frozen=True)
class Units:
    """An answer as the units it is compared in: tokens (with ids and logprobs) or text pieces."""

    tokens: list[str]
    ids: list[int | None]
    logprobs: list[float] | None
    alternatives: list[list[tuple[str, float]]] | None


def units_of(res: ChatResult, unit: str) -> Units:
    """``res``'s first choice as :class:`Units` of ``unit`` (``"token"`` or ``"text piece"``)."""
    choice = res.choices[0] if res.choices else None
    if unit == "token" and choice is not None and choice.logprobs is not None:
        toks = choice.logprobs
        return Units(
            [t.token for t in toks],
            [t.token_id for t in toks],
            [t.logprob for t in toks],
            [[(a.token, a.logprob) for a in t.top] for t in toks],
        )
    pieces = _PIECES.findall(res.text)
    return Units(pieces, [None] * len(pieces), None, None)


def unit_of(results: Sequence[ChatResult]) -> str:
    """``"token"`` when every result carries logprobs (tokens), else ``"text piece"``."""
    have = all(r.choices and r.choices[0].logprobs is not None for r in results)
    return "token" if have else "text piece"


def _first_difference(a: Units, b: Units) -> int | None:
    for i, (ta, tb) in enumerate(zip(a.tokens, b.tokens, strict=False)):
        ia, ib = a.ids[i], b.ids[i]
        if ta != tb or (ia is not None and ib is not None and ia != ib):
            return i
    if len(a.tokens) != len(b.tokens):
        return min(len(a.tokens), len(b.tokens))  # one answer stopped, the other went on
    return None


def max_dlogprob(a: Units, b: Units, upto: int) -> tuple[float, int] | None:
    """max |Δ logprob| of the sampled tokens at positions < upto, and where; None: no logprobs."""
    if a.logprobs is None or b.logprobs is None:
        return None
    best, where = 0.0, -1
    for i in range(upto):
        d = abs(a.logprobs[i] - b.logprobs[i])
        if not math.isnan(d) and (where < 0 or d > best):
            best, where = d, i
    return (best, where) if where >= 0 else None


@dataclass(frozen=True, repr=False)
class Diff:
    """Two answers aligned position by position; ``position`` is where they first differ.

    ``position`` is ``None`` when the answers are identical; when one answer is a prefix of
    the other it is the length of the shorter one (there, one answer ended). ``unit`` says what
    a position counts: ``"token"`` (from logprobs) or ``"text piece"`` (words, spaces,
    punctuation, when a result has no logprobs).
    """

    tokens_a: list[str]
    tokens_b: list[str]
    position: int | None
    unit: str
    logprobs_a: list[float] | None = field(default=None, repr=False)
    logprobs_b: list[float] | None = field(default=None, repr=False)
    alternatives_a: list[list[tuple[str, float]]] | None = field(default=None, repr=False)
    alternatives_b: list[list[tuple[str, float]]] | None = field(default=None, repr=False)

    @property
    def identical(self) -> bool:
        """True when both answers have the same tokens."""
        return self.position is None

    @property
    def shared(self) -> int:
        """How many positions the two answers share before they differ."""
        return len(self.tokens_a) if self.position is None else self.position

    @property
    def max_abs_dlogprob(self) -> float | None:
        """max |logprob_a − logprob_b| over the shared tokens (None without logprobs)."""
        a = Units(self.tokens_a, [], self.logprobs_a, None)
        b = Units(self.tokens_b, [], self.logprobs_b, None)
        found = max_dlogprob(a, b, self.shared)
        return None if found is None else found[0]

    def frame(self) -> pd.DataFrame:
        """One row per position: both tokens, whether they agree, their logprobs and Δ."""
        import numpy as np
        import pandas as pd

        n = max(len(self.tokens_a), len(self.tokens_b))

        def at(values: list[Any] | None, i: int) -> Any:
            return values[i] if values is not None and i < len(values) else None

        df = pd.DataFrame(
            {
                "position": np.arange(n, dtype=np.int64),
                "token_a": [at(self.tokens_a, i) for i in range(n)],
                "token_b": [at(self.tokens_b, i) for i in range(n)],
                "same": [self.position is None or i < self.position for i in range(n)],
                "logprob_a": pd.to_numeric(
                    pd.Series([at(self.logprobs_a, i) for i in range(n)], dtype=object)
                ).astype(float),
                "logprob_b": pd.to_numeric(
                    pd.Series([at(self.logprobs_b, i) for i in range(n)], dtype=object)
                ).astype(float),
            }
        )
        df["dlogprob"] = df["logprob_b"] - df["logprob_a"]
        df.attrs["notes"] = (
            f"one row per {self.unit} position; same: the position is before the first "
            "divergence (after it the answers are different texts and positions no longer "
            "correspond); dlogprob = logprob_b - logprob_a of the generated tokens, as the "
            "server returned them."
        )
        return df

    def __repr__(self) -> str:
        if self.position is None:
            return f"<Diff: identical, {len(self.tokens_a)} {self.unit}s>"
        a, b = (
            t[self.position] if self.position < len(t) else None
            for t in (self.tokens_a, self.tokens_b)
        )
        return f"<Diff: first divergence at {self.unit} {self.position}: {a!r} vs {b!r}>"

    def _alts(self, which: str) -> list[tuple[str, float]]:
        alts = self.alternatives_a if which == "a" else self.alternatives_b
        pos = self.position
        if alts is None or pos is None or pos >= len(alts):
            return []
        return alts[pos]

    def __str__(self) -> str:
        from tmlab.display import token_shown

        unit = self.unit
        if self.position is None:
            text = f"identical: the same {len(self.tokens_a)} {unit}s"
            d = self.max_abs_dlogprob
            if d is not None:
                text += f"; max |Δ logprob| over them = {d:.3g}"
            return text
        p = self.position
        prefix = "".join(self.tokens_a[:p])
        lines = [f"the answers share {p} {unit}s, then differ at {unit} {p} (0-based):"]
        for name, toks, alts in (
            ("A", self.tokens_a, self._alts("a")),
            ("B", self.tokens_b, self._alts("b")),
        ):
            tok = token_shown(toks[p]) if p < len(toks) else "(ended)"
            rest = "".join(toks[p + 1 :])
            line = f"  {name}: …{token_shown(prefix[-30:])} ⟦{tok}⟧ {token_shown(rest[:40])}"
            if alts:
                line += "\n     alternatives: " + ", ".join(
                    f"{token_shown(t)} {lp:.3f}" for t, lp in alts
                )
            lines.append(line)
        d = self.max_abs_dlogprob
        if d is not None:
            lines.append(f"max |Δ logprob| over the shared {unit}s: {d:.3g}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from tmlab.display import token_shown, visible_html

        def row(name: str, toks: list[str], lps: list[float] | None) -> str:
            spans = []
            for i, tok in enumerate(toks):
                title = f"{self.unit} {i}: {token_shown(tok)}"
                if lps is not None and i < len(lps):
                    title += f", logprob {lps[i]:.4f}"
                if self.position is not None and i == self.position:
                    style = "background:#ffd6a5;outline:2px solid #e8590c;border-radius:2px"
                elif self.position is not None and i > self.position:
                    style = "opacity:0.5"
                else:
                    style = ""
                title = html.escape(title)
                spans.append(f'<span title="{title}" style="{style}">{visible_html(tok)}</span>')
            if self.position is not None and self.position >= len(toks):
                spans.append('<span style="outline:2px solid #e8590c">(ended)</span>')
            return (
                f'<tr><th style="text-align:right;vertical-align:top">{name}</th>'
                f'<td style="text-align:left;font-family:monospace">{"".join(spans)}</td></tr>'
            )

        if self.position is None:
            head = f"identical: the same {len(self.tokens_a)} {self.unit}s"
        else:
            head = (
                f"the same for {self.position} {self.unit}s, then different at {self.unit} "
                f"{self.position} (0-based, marked)"
            )
        d = self.max_abs_dlogprob
        if d is not None:
            head += f"; max |Δ logprob| over the shared {self.unit}s = {d:.3g}"
        return (
            f"<div><p>{html.escape(head)}. Hover a {self.unit} for its logprob.</p>"
            f"<table>{row('A', self.tokens_a, self.logprobs_a)}"
            f"{row('B', self.tokens_b, self.logprobs_b)}</table></div>"
        )


def diff(res_a: ChatResult, res_b: ChatResult) -> Diff:
    """Align two results' answers and mark where they first differ.

    By tokens when both results carry logprobs, else by pieces of text (words, spaces,
    punctuation). The first choice of each result is compared.
    """
    unit = unit_of([res_a, res_b])
    a, b = units_of(res_a, unit), units_of(res_b, unit)
    return diff_units(a, b, unit)


def diff_units(a: Units, b: Units, unit: str) -> Diff:
    """The :class:`Diff` of two answers already in :class:`Units`."""
    return Diff(
        a.tokens,
        b.tokens,
        _first_difference(a, b),
        unit,
        a.logprobs,
        b.logprobs,
        a.alternatives,
        b.alternatives,
    )

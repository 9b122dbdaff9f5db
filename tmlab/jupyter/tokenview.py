"""The clickable token view: an answer's tokens, their alternatives, and a click to branch.

:class:`TokenView` is an anywidget: a Python class with synced traits plus one plain ES module
beside it (``tokenview.js``, no build step). Every number is computed here, in Python
(:func:`token_rows`); the browser only draws them. Tokens are coloured by probability (the
scale of :func:`tmlab.display.tokens_html`); hovering a token, or Enter on the selected one,
opens its alternatives with their probabilities; clicking an alternative sends one small
message ``{"type": "branch", "index": i, "alt": k}`` back to Python, which calls
``on_branch(owner, position, token_id_or_text)``: the Explorer then branches there and the new
text streams in (:attr:`TokenView.streaming`). Arrow keys move between tokens, Enter opens
the alternatives (Up/Down choose, Enter branches, Escape closes).

A branch's own tokens follow the prefix it continued from: the prefix's tokens are shown
(dimmed) with the numbers of the answer they came from, so each of them can be branched
again, from that answer.

``res.tokens_html()`` stays the static view (nbviewer, GitHub).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from tmlab.display import prob_colour

if TYPE_CHECKING:
    from tmlab.result import ChatResult, TokenLogprob, TopLogprob

__all__ = ["Row", "TokenView", "token_rows"]

OnBranch = Callable[["ChatResult", int, "int | str"], Any]


@dataclass(frozen=True)
class Row:
    """One token shown: the answer it belongs to (``owner``), its position there, what was
    taken at that position (``taken``) and the alternatives returned there."""

    owner: ChatResult
    position: int
    taken: TokenLogprob | TopLogprob
    alts: tuple[TopLogprob, ...]
    inherited: bool  # part of the prefix a branch continued from


def _same(a: TokenLogprob | TopLogprob, b: TokenLogprob | TopLogprob) -> bool:
    if a.token_id is not None and b.token_id is not None:
        return a.token_id == b.token_id
    return a.token == b.token


def token_rows(res: ChatResult) -> list[Row]:
    """The tokens of ``res`` as shown: for a branch, its prefix's first (from the answers it
    came from, when they are in memory), then its own generated tokens."""
    rows: list[Row] = []
    origin = res.parent
    if origin is not None and origin.parent_result is not None:
        parent = origin.parent_result
        above = token_rows(parent)
        own = [r for r in above if not r.inherited]
        rows = [r for r in above if r.inherited] + own[: origin.position]
        rows = [Row(r.owner, r.position, r.taken, r.alts, True) for r in rows]
        at = own[origin.position] if origin.position < len(own) else None
        if at is not None:
            chosen = next(
                (a for a in (*at.alts, at.taken) if a.token_id == origin.token_id)
                if origin.token_id is not None
                else (a for a in (*at.alts, at.taken) if a.token == origin.token),
                at.taken,
            )
            rows.append(Row(parent, origin.position, chosen, at.alts, True))
    entries = res.choices[0].logprobs if res.choices else None
    for i, entry in enumerate(entries or []):
        rows.append(Row(res, i, entry, tuple(entry.top), False))
    return rows


def _label(text: str) -> str:
    marks = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
    return "".join(
        marks.get(c, c if c.isprintable() else c.encode("unicode_escape").decode()) for c in text
    )


def _text(t: TokenLogprob | TopLogprob) -> str:
    if t.bytes is not None:
        return bytes(t.bytes).decode("utf-8", errors="backslashreplace")
    return t.token


def _dict(row: Row) -> dict[str, Any]:
    prob = math.exp(row.taken.logprob) if math.isfinite(row.taken.logprob) else math.nan
    alts: list[dict[str, Any]] = []
    mass = 0.0
    for alt in sorted(row.alts, key=lambda a: -a.logprob):
        p = math.exp(alt.logprob)
        mass += p
        alts.append(
            {
                "label": _label(_text(alt)),
                "prob": round(p, 6),
                "shown": f"{p:.4f}",
                "taken": _same(alt, row.taken),
                "id": alt.token_id,
            }
        )
    text = _text(row.taken)
    return {
        "text": text,
        "label": _label(text) if text.strip() == "" or "\n" in text else text,
        "newline": "\n" in text,
        "prob": None if math.isnan(prob) else round(prob, 6),
        "shown": "?" if math.isnan(prob) else f"{prob:.4f}",
        "colour": prob_colour(prob),
        "inherited": row.inherited,
        "position": row.position,
        "alts": alts,
        "other": round(max(0.0, 1.0 - mass), 6) if alts else None,
    }


class TokenView(anywidget.AnyWidget):
    """An answer's tokens, coloured by probability; click an alternative to branch there."""

    _esm = Path(__file__).with_name("tokenview.js")

    tokens: traitlets.List[dict[str, Any]] = traitlets.List(
        help="the tokens shown, computed in Python (token_rows)"
    ).tag(sync=True)
    streaming = traitlets.Unicode("", help="new text of a branch, as it streams in").tag(sync=True)
    busy = traitlets.Bool(False, help="a branch is running: clicks are ignored").tag(sync=True)
    note = traitlets.Unicode("", help="one line under the tokens").tag(sync=True)
    stale = traitlets.Bool(False, help="a new answer is on its way: the tokens are dimmed").tag(
        sync=True
    )

    def __init__(self, on_branch: OnBranch | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_branch = on_branch
        self.rows: list[Row] = []
        self.result: ChatResult | None = None
        self.on_msg(self._on_message)
        self.add_class("tmlab-tokenview")

    def show(self, res: ChatResult | None, note: str = "") -> None:
        """Show ``res``'s tokens (``None``: nothing)."""
        self.result = res
        self.rows = token_rows(res) if res is not None else []
        self.streaming = ""
        self.stale = False
        self.note = note
        self.tokens = [_dict(r) for r in self.rows]

    def show_prefix(self, rows: list[Row], note: str) -> None:
        """Show the prefix of a branch that is running: its tokens, then what streams in."""
        self.rows = rows
        self.streaming = ""
        self.stale = False
        self.note = note
        self.tokens = [_dict(r) for r in rows]

    def branch_target(self, index: int, alt: int) -> tuple[ChatResult, int, int | str]:
        """(answer, position, token) of alternative ``alt`` of the token at ``index``."""
        row = self.rows[index]
        alts = sorted(row.alts, key=lambda a: -a.logprob)
        chosen = alts[alt]
        token: int | str = chosen.token_id if chosen.token_id is not None else chosen.token
        return row.owner, row.position, token

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "branch":
            return
        index, alt = content.get("index"), content.get("alt")
        if self.busy or not isinstance(index, int) or not isinstance(alt, int):
            return
        if not 0 <= index < len(self.rows) or not 0 <= alt < len(self.rows[index].alts):
            return
        if self.on_branch is not None:
            self.on_branch(*self.branch_target(index, alt))

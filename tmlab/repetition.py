"""Degenerate repetition: an answer that ends by repeating the same few tokens over and over.

A small model at a low temperature easily falls into a loop (``" unrelenting, unrelenting,
…"``) and goes on until its length limit. :func:`find_loop` names such a loop so that the
finish line can say so (``the last 240 tokens repeat ' unrelenting,' 120 times``); nothing
here stops a generation. Pure functions over a list of tokens (or of words, when an answer
came without its tokens): no HTTP, no display.

**The definition.** The answer's tail is *periodic with period p* over its last ``span``
units when each of those units equals the one ``p`` before it (the last copy may be cut
short, as a length limit cuts it). For the smallest ``p`` in ``1..max_period`` whose periodic
tail holds at least ``min_repeats`` whole copies and spans at least ``min_span`` units, that
tail is a loop; its unit is the first whole copy. With the defaults (``max_period=128``,
``min_repeats=4``, ``min_span=64``) a unit of 1 token must repeat 64 times, of 2 tokens 32
times, of 8 tokens 8 times, of 16 to 128 tokens 4 times: more than the repetition of normal
text (a refrain sung three times, ``ha ha ha``, a few identical lines of code, a numbered
list, whose numbers differ), less than what a loop fills up to the 512-token default limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = [
    "MAX_PERIOD",
    "MIN_REPEATS",
    "MIN_SPAN",
    "Loop",
    "answer_loop",
    "find_loop",
    "text_units",
]

MAX_PERIOD: Final = 128
"""The longest repeated unit looked for, in tokens (a short paragraph: four copies fill 512)."""
MIN_REPEATS: Final = 4
"""Whole copies a unit needs at the end of the answer to count as a loop."""
MIN_SPAN: Final = 64
"""Units (tokens or words) the repeated tail needs to cover to count as a loop."""

_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class Loop:
    """A repeated unit at the end of an answer.

    ``unit``: the repeated tokens (or words), ``repeats``: whole copies of it, ``span``: how
    many of the answer's last units the repetition covers (a cut-off last copy included),
    ``units``: ``"tokens"`` or ``"words"``.
    """

    unit: tuple[str, ...]
    repeats: int
    span: int
    units: str = "tokens"

    @property
    def text(self) -> str:
        """The repeated unit as text."""
        return "".join(self.unit)

    def describe(self) -> str:
        """``the last 240 tokens repeat ' unrelenting,' 120 times``."""
        shown = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return f"the last {self.span} {self.units} repeat {shown!r} {self.repeats} times"

    def __str__(self) -> str:
        return self.describe()


def find_loop(
    tokens: Sequence[str],
    *,
    max_period: int = MAX_PERIOD,
    min_repeats: int = MIN_REPEATS,
    min_span: int = MIN_SPAN,
    units: str = "tokens",
) -> Loop | None:
    """The loop at the end of ``tokens``, or ``None`` (see the module docstring).

    The smallest period ``p ≤ max_period`` whose periodic tail has at least ``min_repeats``
    whole copies and covers at least ``min_span`` units.
    """
    n = len(tokens)
    for p in range(1, min(max_period, n // max(min_repeats, 1)) + 1):
        matched = 0  # how many units, from the end backwards, equal the one p before them
        i = n - 1
        while i >= p and tokens[i] == tokens[i - p]:
            matched += 1
            i -= 1
        span = matched + p
        repeats = span // p
        if repeats >= min_repeats and span >= min_span:
            start = n - span
            return Loop(tuple(tokens[start : start + p]), repeats, span, units)
    return None


def text_units(text: str) -> list[str]:
    """``text`` as words with their leading whitespace (stand-ins for tokens); whitespace at
    the very end is left out (a loop of lines ends with its newline)."""
    return _WORD.findall(text)


def answer_loop(res: ChatResult) -> Loop | None:
    """The loop at the end of ``res``'s first choice: over its tokens when the answer has
    logprobs, else over its words."""
    choice = res.choices[0] if res.choices else None
    if choice is None:
        return None
    if choice.logprobs:
        return find_loop([t.token for t in choice.logprobs])
    return find_loop(text_units(choice.text), units="words")

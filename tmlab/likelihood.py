"""How likely the model found an answer: sequence log-probability, mean, perplexity.

Over the generated tokens of the first choice that came with a log-probability (the
end-of-generation token included when the server returns its logprob, as the embedded server
does: stopping is part of the answer). The numbers are those the server returned: on the
embedded server (and vLLM by default) the model's raw distribution, before temperature,
penalties and truncation — how likely the *model* found the answer, not how likely these
sampling settings were to draw it. ``None`` when the answer has no logprobs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = ["mean_logprob", "perplexity", "sequence_logprob"]


def _values(res: ChatResult, choice: int) -> list[float] | None:
    if choice >= len(res.choices):
        return None
    entries = res.choices[choice].logprobs
    if not entries:
        return None
    values = [e.logprob for e in entries if math.isfinite(e.logprob)]
    return values or None


def sequence_logprob(res: ChatResult, choice: int = 0) -> float | None:
    """Sum of the generated tokens' logprobs: the log-probability of the whole answer."""
    values = _values(res, choice)
    return None if values is None else math.fsum(values)


def mean_logprob(res: ChatResult, choice: int = 0) -> float | None:
    """Mean logprob per generated token (comparable across answers of different lengths)."""
    values = _values(res, choice)
    return None if values is None else math.fsum(values) / len(values)


def perplexity(res: ChatResult, choice: int = 0) -> float | None:
    """``exp(-mean logprob)``: 1 is certain; N is as unsure as a fair pick among N tokens."""
    mean = mean_logprob(res, choice)
    return None if mean is None else math.exp(-mean)

"""What a response's logprobs are: raw, processed, or not known — and how we know.

Servers differ: raw log-probabilities (the log-softmax of the logits before any sampling
setting: vLLM's default, llama.cpp's ``/v1`` routes, tmlab's embedded server by default) or
processed ones (the distribution the token was drawn from, after penalties, temperature and
truncation: vLLM ``--logprobs-mode processed_logprobs``, the embedded server's
``logprobs_mode``). :func:`meaning` answers for one response, in this order: the response
says (``logprobs_mode``, at the top level or in a choice's ``logprobs``); else
:func:`tmlab.probe` measured it for that server and model in this session (recorded by
:func:`note_mode` in :mod:`tmlab.capabilities`, the one record of what a server does); else
unknown. Frames put the answer in their notes; the what-if refuses to
apply a temperature twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tmlab import capabilities

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = ["Meaning", "meaning", "note_mode"]

RAW = "raw_logprobs"
PROCESSED = "processed_logprobs"

DESCRIPTIONS = {
    RAW: "raw_logprobs: the model's distribution (log-softmax of its logits) before "
    "temperature, penalties and truncation",
    PROCESSED: "processed_logprobs: the distribution each token was drawn from, after "
    "penalties, logit bias, temperature and truncation (tokens removed have no entry)",
}
UNKNOWN = "as returned by the server (meaning not probed)"


@dataclass(frozen=True)
class Meaning:
    """``mode`` (RAW, PROCESSED or None), ``source`` ("response" | "probe" | "unknown"), text."""

    mode: str | None
    source: str
    text: str


def note_mode(base_url: str | None, model: str | None, mode: str | None) -> None:
    """Remember what :func:`tmlab.probe` found for a server and model (this session)."""
    caps = capabilities.of(base_url, model)
    caps.logprobs_mode, caps.meaning_probed = mode, True


def _from_response(raw: dict[str, Any]) -> str | None:
    mode = raw.get("logprobs_mode")
    if mode in DESCRIPTIONS:
        return str(mode)
    for choice in raw.get("choices") or []:
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and lp.get("logprobs_mode") in DESCRIPTIONS:
            return str(lp["logprobs_mode"])
        content = lp.get("content") if isinstance(lp, dict) else None
        if content and isinstance(content[0], dict) and "sampling_logprob" in content[0]:
            # Fireworks-style: both numbers, ``logprob`` the raw one, ``sampling_logprob``
            # the processed one; tmlab reads ``logprob``
            return RAW
    return None


def meaning(res: ChatResult) -> Meaning:
    """What ``res``'s logprobs are, and how that is known."""
    mode = _from_response(res.raw)
    if mode is not None:
        return Meaning(mode, "response", DESCRIPTIONS[mode] + " (as the response says)")
    model = res.model
    base = getattr(res, "base_url", None)
    caps = capabilities.find(base, model)
    if caps is not None and caps.meaning_probed:
        found = caps.logprobs_mode
    else:
        # the result may not know its server: a model probed on one server (or on several
        # that agree) still says what its numbers are
        same = {c.logprobs_mode for c in capabilities.known_for_model(model) if c.meaning_probed}
        if not same:
            return Meaning(None, "unknown", UNKNOWN)
        found = same.pop() if len(same) == 1 else None
    if found in DESCRIPTIONS:
        return Meaning(found, "probe", DESCRIPTIONS[found] + " (as tmlab.probe() measured)")
    return Meaning(None, "unknown", "as returned by the server (tmlab.probe() gave no verdict)")

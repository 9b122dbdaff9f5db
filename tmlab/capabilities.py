"""What tmlab knows about a server and model: one record per (base URL, model), this session.

Servers differ (logprobs raw or processed, echo of the prompt, continuation of a final
assistant message or always-prefill, how many requests they decode at once). What was learned
about one is kept here, and only here, as a :class:`Capabilities` record:

============================  ==============================================================
``probe``                     :func:`tmlab.probe`'s table (its cache)
``logprobs_mode``             what the logprobs are (:mod:`tmlab.meaning` reads it), once
                              ``meaning_probed``
``continuation``              the one continuation check (:mod:`tmlab.analysis.continuation_check`),
                              used by branch, ``--prefill``, continuations, score and classify
``echo_suffix``               bytes of the chat template after an answer in an echoed prompt
                              (:func:`tmlab.score`'s echo method)
``slots``                     requests the server decodes at once (the sweep's default
                              concurrency)
============================  ==============================================================

A field is ``None`` until something measured it. Only answers are kept: a measurement that
failed for a reason unrelated to the capability (a timeout, a 5xx, a connection error) is not
stored, so the next use asks again. :func:`forget` clears everything (``probe(refresh=True)``
re-measures one server).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Capabilities", "Continuation", "find", "forget", "known_for_model", "of"]

Key = tuple[str | None, str | None]


@dataclass(frozen=True)
class Continuation:
    """What a server does with a final assistant message (the continuation check's answer).

    ``continues``: it goes on from the message (``None``: unknown, a request failed for
    another reason, see ``error``). ``always_prefills``: it does so even without
    ``continue_final_message`` (llama.cpp's server). ``echoes_prefix``: a non-streamed
    answer's ``message.content`` is the prefix followed by the new text (llama.cpp's server;
    streamed deltas and logprobs hold only the new tokens). ``token_ids``: it honours
    ``continue_token_ids`` (tmlab's server). ``came_back``: what the check saw, in words;
    ``reason``: why it cannot branch, when it cannot.
    """

    continues: bool | None
    always_prefills: bool | None = None
    echoes_prefix: bool = False
    token_ids: bool = False
    came_back: str = ""
    reason: str = ""
    requests: int = 0
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def verdict(self) -> str:
        """One line: ``"continues"``, ``"continues (always prefills)"``, ``"not supported"``
        or ``"unknown"``."""
        if self.continues is None:
            return "unknown"
        if not self.continues:
            return "not supported"
        return "continues (always prefills)" if self.always_prefills else "continues"


@dataclass
class Capabilities:
    """Everything learned about one (base URL, model); ``None``: not measured yet."""

    base_url: str | None
    model: str | None
    probe: pd.DataFrame | None = None
    logprobs_mode: str | None = None
    meaning_probed: bool = False
    continuation: Continuation | None = None
    echo_suffix: int | None = None
    slots: int | None = None


_STORE: dict[Key, Capabilities] = {}
_LOCK = threading.Lock()


def _key(base_url: str | None, model: str | None) -> Key:
    return (base_url.rstrip("/") if base_url else base_url, model)


def of(base_url: str | None, model: str | None) -> Capabilities:
    """The record of (``base_url``, ``model``), created empty on first use."""
    key = _key(base_url, model)
    with _LOCK:
        caps = _STORE.get(key)
        if caps is None:
            caps = _STORE[key] = Capabilities(key[0], model)
        return caps


def find(base_url: str | None, model: str | None) -> Capabilities | None:
    """The record of (``base_url``, ``model``) if anything was learned about it."""
    with _LOCK:
        return _STORE.get(_key(base_url, model))


def known_for_model(model: str | None) -> list[Capabilities]:
    """Every record of ``model``, whatever the server (a result may not know its server)."""
    with _LOCK:
        return [c for (_, m), c in _STORE.items() if m == model]


def forget() -> None:
    """Forget everything learned about every server (the next use measures again)."""
    with _LOCK:
        _STORE.clear()

"""The opt-in prompt cache (``--prompt-cache``): a request's scope, the reusable prefix, counts.

With the cache on, a prompt is not evaluated from position 0 when the KV cache (of the one-slot
context, or of a slot of the batch engine) already holds its first tokens: the cells of the
longest common token prefix with the prompt evaluated there before are kept, and only the rest
is evaluated, as llama.cpp's server and vLLM's prefix caching do, in whole blocks of
:data:`BLOCK` tokens as vLLM does. At least one token is always evaluated (its logits are the
first answer token's distribution).

What is reused, and why the numbers stay the same. Only cells that a *prompt* evaluation wrote
are reused, never a generated token's: a generated token is evaluated alone, a prompt token in a
piece of up to ``n_batch`` tokens, and the two give a token's K and V different roundings
(measured on SmolLM2 Q4_1, AVX2: reusing a previous answer's cells moved the next prompt's last
logits by up to 0.57). The rest of a prompt is evaluated in the pieces a prompt evaluated from
position 0 is cut into (at multiples of ``n_batch``), the first one shorter. Measured on the same
build, that gives the logits of an evaluation from position 0 bit for bit, whatever the length
of the reused prefix (even all but one token); the server measures it again on the model it
loaded before it serves (:func:`tmlab.server.selftest.measure_prompt_cache`), and the responses
that reuse a prefix say so when that measurement found a difference.

Isolation: a request's ``prompt_cache_isolation_key`` (the Tensormesh parameter) scopes what it
may reuse: a prefix evaluated for another key (or for no key, when it has one, and the other way
round) is never reused.

:class:`CacheScope` is a request's cancel flag (a ``threading.Event``) that also carries its key
and what its evaluation reused, so the engines read them where they already get the flag.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BLOCK", "CacheCheck", "CacheScope", "PromptCache", "common_prefix", "reusable"]


class CacheScope(threading.Event):
    """A request's cancel flag, with its prompt-cache scope.

    ``key``: its ``prompt_cache_isolation_key`` (None: none). ``cached_tokens``: the prompt
    tokens its first evaluation reused (None until it is evaluated; 0 without the cache).
    ``exact``: whether reuse was measured exact at start (None: the cache is off).
    """

    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.cached_tokens: int | None = None
        self.exact: bool | None = None


def scope_of(cancel: threading.Event | None) -> CacheScope | None:
    """``cancel`` as a :class:`CacheScope`, if it is one."""
    return cancel if isinstance(cancel, CacheScope) else None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


BLOCK = 16
"""Prefixes are reused in whole blocks of this many tokens (vLLM's default block size), so a
prompt that shares only the chat template's first tokens (``<|im_start|>system``) reuses none."""


def reusable(held: Sequence[int], prompt: Sequence[int]) -> int:
    """Cells of ``held`` (a prompt evaluated before) that ``prompt`` may reuse: their common
    prefix in whole :data:`BLOCK` s, leaving at least one token of ``prompt`` to evaluate."""
    n = min(common_prefix(held, prompt), max(0, len(prompt) - 1))
    return n // BLOCK * BLOCK


@dataclass(frozen=True)
class CacheCheck:
    """What the prompt-cache self-test compared and found.

    ``exact``: every token and logprob of the prompts evaluated after a cached prefix equals
    theirs evaluated from position 0, bit for bit. ``compared``: what, in words.
    ``first_difference``: the first difference, in words (None when exact). ``reused``: the
    prompt tokens the cached evaluations reused, of ``prompt_tokens``.
    """

    exact: bool
    compared: str
    first_difference: str | None
    reused: int
    prompt_tokens: int
    seconds: float

    def describe(self) -> str:
        """One line: what was measured and what it showed."""
        if self.exact:
            return f"measured at start: {self.compared}: equal bit for bit"
        return f"measured at start: {self.compared}: they differ ({self.first_difference})"

    def as_json(self) -> dict[str, Any]:
        """For ``/v1/models`` and ``/v1/stats``."""
        return {**asdict(self), "seconds": round(self.seconds, 2)}


@dataclass
class PromptCache:
    """The cache's settings, its self-test and its counts (``/v1/stats``); thread-safe."""

    check: CacheCheck | None = None
    requests: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def exact(self) -> bool:
        """Whether reuse was measured exact (False until measured)."""
        return self.check is not None and self.check.exact

    def used(self, scope: CacheScope | None, prompt: int, reused: int) -> None:
        """An evaluation of ``prompt`` tokens reused ``reused`` of them (for ``scope``)."""
        with self._lock:
            self.requests += 1
            self.hits += reused > 0
            self.prompt_tokens += prompt
            self.cached_tokens += reused
        if scope is not None and scope.cached_tokens is None:
            scope.cached_tokens = reused
            scope.exact = self.exact

    def as_json(self) -> dict[str, Any]:
        """``prompt_cache`` in ``/v1/models`` and ``/v1/stats``."""
        check = self.check
        with self._lock:
            counts = {
                "evaluations": self.requests,
                "hits": self.hits,
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "hit_rate": round(self.cached_tokens / self.prompt_tokens, 4)
                if self.prompt_tokens
                else None,
            }
        return {
            "enabled": True,
            "exact": self.exact,
            "compared": None if check is None else check.compared,
            "first_difference": None if check is None else check.first_difference,
            "self_test": None if check is None else check.as_json(),
            "notice": "not measured" if check is None else check.describe(),
            **counts,
        }

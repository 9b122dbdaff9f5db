"""The sampler trace: the distribution after each stage of the server's actual chain.

With ``sampler_trace`` a request asks, for each generated position, what llama.cpp's sampler
chain did to the model's distribution, stage by stage, in the order the server applies them
(:data:`CHAIN`): the raw distribution, the end-of-generation ban (``ignore_eos`` /
``min_tokens``), ``logit_bias``, the penalties, the grammar (JSON mode, schemas, tool calls),
then the picker's ``top_k``, ``typical_p``, ``top_p``, ``min_p`` and ``temperature``. The
distribution after ``temperature`` is the one the token was drawn from (the processed
logprobs of the same request); the first is the raw one.

Nothing is recomputed: given an :class:`Observer`, :func:`~tmlab.server.sampler.draw`
applies the members of its chains one at a time (a llama.cpp chain applies its members in
turn) and the observer reads the candidates array after each. So the trace is what the draw saw,
by construction; the tests hold it against an independent numpy implementation.

Per stage: its setting (None when the stage is not in the chain: ``active`` false), how many
tokens still have a finite logit, the probability mass (of the previous stage's distribution)
that it removed, the entropy of the whole distribution after it (nats, over the full
vocabulary), and the probability after it of each candidate: the raw top ``top``, then the
tokens of the final distribution's top ``top`` not yet listed, then the drawn token. Each
candidate says which stage removed it.

With ``temperature`` 0 (greedy) the last stage is the limit T → 0: all mass on the drawn
token. With mirostat the picker truncates after ``temperature`` by its own rule; the trace
ends at ``temperature`` and says ``draw: "mirostat"``.

``logprobs_for`` asks for given tokens' numbers at every generated position: raw and
processed log-probability and rank, and the stage that removed the token.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

__all__ = [
    "CHAIN",
    "MAX_POSITIONS",
    "MAX_TOP",
    "Observer",
    "TraceError",
    "TraceSpec",
    "trace_spec",
]

CHAIN: Final = (
    "raw",
    "eos_ban",
    "logit_bias",
    "penalties",
    "grammar",
    "top_k",
    "typical_p",
    "top_p",
    "min_p",
    "temperature",
)
"""The stages of the server's sampler chain, in the order it applies them."""

MAX_TOP: Final = 100
"""At most this many candidates per stage (``sampler_trace.top``)."""

MAX_POSITIONS: Final = 256
"""Only the first this many generated positions can be traced."""

MAX_WATCH: Final = 50
"""At most this many tokens in ``logprobs_for``."""

# llama.cpp's sampler names → the stage each one is
_STAGE_OF: Final = {
    "logit-bias": "logit_bias",
    "penalties": "penalties",
    "grammar": "grammar",
    "top-k": "top_k",
    "typical": "typical_p",
    "top-p": "top_p",
    "min-p": "min_p",
    "temp": "temperature",
}


class TraceError(ValueError):
    """A ``sampler_trace`` or ``logprobs_for`` the server cannot honour (the 400's text and
    the parameter it names)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TraceSpec:
    """What one request asks to trace: ``top`` candidates at ``positions`` (None: every
    position below :data:`MAX_POSITIONS`), and the ``watch`` tokens of ``logprobs_for``."""

    top: int = 20
    positions: frozenset[int] | None = None
    watch: tuple[int, ...] = ()
    trace: bool = True
    grammar: str | None = None  # what the grammar stage is, for its setting

    def covers(self, position: int) -> bool:
        """Whether ``position`` (0 = the first generated token) is traced."""
        if not self.trace:
            return False
        if self.positions is None:
            return position < MAX_POSITIONS
        return position in self.positions


def trace_spec(
    trace: Any,
    watch: Any,
    *,
    n_vocab: int,
    tokenize: Callable[[str], list[int]],
    grammar: str | None = None,
) -> TraceSpec | None:
    """The spec of a request's ``sampler_trace`` and ``logprobs_for`` (None: neither asked).

    Raises :class:`TraceError` for a shape the server does not take: ``top`` outside
    1..:data:`MAX_TOP`, a position outside 0..:data:`MAX_POSITIONS` - 1, a ``logprobs_for``
    string that is not exactly one token, an id outside the vocabulary.
    """
    if trace in (None, False) and not watch:
        return None
    top, positions = 20, None
    if isinstance(trace, dict):
        extra = set(trace) - {"top", "positions"}
        if extra:
            raise TraceError(
                f"sampler_trace has unknown keys {sorted(extra)}; it takes 'top' and 'positions'",
                "sampler_trace",
            )
        top = trace.get("top", 20)
        if type(top) is not int or not 1 <= top <= MAX_TOP:
            raise TraceError(
                f"sampler_trace.top={top!r} is out of range 1..{MAX_TOP}", "sampler_trace"
            )
        raw = trace.get("positions")
        if raw is not None:
            if not isinstance(raw, list) or not all(type(p) is int for p in raw):
                raise TraceError(
                    "sampler_trace.positions must be a list of generated positions (ints)",
                    "sampler_trace",
                )
            bad = [p for p in raw if not 0 <= p < MAX_POSITIONS]
            if bad:
                raise TraceError(
                    f"sampler_trace.positions: {bad[0]} is outside 0..{MAX_POSITIONS - 1} "
                    f"(only the first {MAX_POSITIONS} generated positions can be traced)",
                    "sampler_trace",
                )
            positions = frozenset(raw)
    elif trace not in (True, None, False):
        raise TraceError(
            f"sampler_trace must be true or {{'top': N, 'positions': [...]}}, got {trace!r}",
            "sampler_trace",
        )
    ids: list[int] = []
    if watch:
        if not isinstance(watch, list) or len(watch) > MAX_WATCH:
            raise TraceError(
                f"logprobs_for must be a list of 1..{MAX_WATCH} token ids or strings",
                "logprobs_for",
            )
        for item in watch:
            if type(item) is int:
                if not 0 <= item < n_vocab:
                    raise TraceError(
                        f"logprobs_for: token id {item} is outside the vocabulary 0..{n_vocab - 1}",
                        "logprobs_for",
                    )
                ids.append(item)
            elif isinstance(item, str) and item:
                tokens = tokenize(item)
                if len(tokens) != 1:
                    raise TraceError(
                        f"logprobs_for: {item!r} is {len(tokens)} tokens here ({tokens}), "
                        "not one; give a single token's text or its id",
                        "logprobs_for",
                    )
                ids.append(tokens[0])
            else:
                raise TraceError(
                    f"logprobs_for: {item!r} is neither a token id nor a token's text",
                    "logprobs_for",
                )
    return TraceSpec(
        top=top,
        positions=positions,
        watch=tuple(dict.fromkeys(ids)),
        trace=trace not in (None, False),
        grammar=grammar,
    )


class _Dist:
    """One stage's distribution: the tokens it still allows and their log-probabilities.

    Kept compact: a truncated stage holds its few tokens, not the vocabulary, and a token's
    log-probability is found by a search among them (-inf when the stage removed it).
    """

    def __init__(self, ids: np.ndarray, weights: np.ndarray, n_vocab: int) -> None:
        finite = np.isfinite(weights)
        if not finite.all():
            ids, weights = ids[finite], weights[finite]
        x = weights.astype(np.float64)
        if x.size:  # as the sampler computes processed logprobs (sampler._log_softmax)
            m = x.max()
            self.lp = x - (m + np.log(np.exp(x - m).sum()))
        else:  # a stage that allowed nothing (the draw then ends the answer)
            self.lp = x
        self.ids = ids
        self.n = n_vocab
        # every id in order (a stage that removed nothing from a fresh row): index directly
        self.whole = ids.size == n_vocab and bool((ids[1:] > ids[:-1]).all())
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._entropy: float | None = None

    @classmethod
    def point(cls, token: int, n_vocab: int) -> _Dist:
        """All the mass on ``token`` (greedy: the limit T → 0)."""
        return cls(np.array([token]), np.array([0.0]), n_vocab)

    @property
    def kept(self) -> int:
        """How many tokens it allows."""
        return int(self.ids.size)

    def at(self, tokens: np.ndarray) -> np.ndarray:
        """The log-probabilities of ``tokens`` (-inf: removed)."""
        if self.whole:
            return self.lp[tokens]
        if not self.ids.size:
            return np.full(np.shape(tokens), -np.inf)
        if self._sorted is None:
            order = np.argsort(self.ids, kind="stable")
            self._sorted = (self.ids[order], self.lp[order])
        ids, lp = self._sorted
        i = np.minimum(np.searchsorted(ids, tokens), ids.size - 1)
        return np.where(ids[i] == tokens, lp[i], -np.inf)

    def entropy(self) -> float:
        """Entropy in nats (exact: every allowed token)."""
        if self._entropy is None:
            self._entropy = float(-(np.exp(self.lp) * self.lp).sum())
        return self._entropy

    def rank(self, token: int) -> int | None:
        """1 + how many tokens are more likely than ``token`` (None: removed)."""
        v = self.at(np.array([token]))[0]
        if not np.isfinite(v):
            return None
        return 1 + int(np.count_nonzero(self.lp > v))

    def top(self, n: int) -> list[int]:
        """The ids of the ``n`` most likely tokens, most likely first."""
        n = min(n, self.kept)
        if n <= 0:
            return []
        lp = self.lp
        # the n-th largest value, then every index at or above it (a partition of the values
        # is cheaper than an argpartition); ties at the boundary: the lower index first
        kth = np.partition(lp, lp.size - n)[lp.size - n]
        idx = np.flatnonzero(lp >= kth)
        idx = idx[np.argsort(-lp[idx], kind="stable")][:n]
        return [int(self.ids[i]) for i in idx]


class Observer:
    """Called by :func:`~tmlab.server.sampler.draw` after each sampler with its llama.cpp
    name: keeps the distribution the candidates array then holds (stages of :data:`CHAIN`;
    of the final draw only its name)."""

    def __init__(self, cand: Any, n_vocab: int) -> None:
        self.cand = cand
        self.n = n_vocab
        self.ran: dict[str, _Dist] = {}
        self.draw = "dist"

    def __call__(self, name: str) -> None:
        stage = _STAGE_OF.get(name, name)
        if stage not in CHAIN:
            self.draw = {"mirostat-v2": "mirostat"}.get(name, name)
            return
        arr = self.cand.candidates
        data = self.cand.candidates_data
        size = int(arr.size)
        ids = np.array(data.id[:size])
        self.ran[stage] = _Dist(ids, np.array(data.logit[:size]), self.n)

    def report(
        self,
        words: Any,
        *,
        settings: dict[str, Any],
        spec: TraceSpec,
        token: int,
        position: int,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(trace, watch)`` of the step that drew ``token``: the position's trace entry when
        ``spec`` covers ``position``, its ``logprobs_for`` entry when ``spec`` watches tokens.
        ``settings``: each stage's setting."""
        dists = self._stages(token)
        trace = None
        if spec.covers(position):
            trace = _entry(words, dists, settings, spec, token, position, self.draw)
        watch = _watch(dists, spec.watch, position) if spec.watch else None
        return trace, watch

    def _stages(self, token: int) -> list[tuple[str, bool, _Dist]]:
        """(stage, active, distribution after it) for every stage of :data:`CHAIN`."""
        out: list[tuple[str, bool, _Dist]] = []
        prev = self.ran["raw"]
        for stage in CHAIN:
            if stage == "temperature" and self.draw == "greedy":
                out.append((stage, True, _Dist.point(token, self.n)))
                continue
            dist = self.ran.get(stage)
            if dist is None:
                out.append((stage, False, prev))
                continue
            out.append((stage, True, dist))
            prev = dist
        return out


def _entry(
    words: Any,
    dists: list[tuple[str, bool, _Dist]],
    settings: dict[str, Any],
    spec: TraceSpec,
    token: int,
    position: int,
    draw_name: str,
) -> dict[str, Any]:
    raw = dists[0][2]
    final = dists[-1][2]
    cands = list(dict.fromkeys([*raw.top(spec.top), *final.top(spec.top), token]))
    at = np.array(cands, dtype=np.int64)
    cut: dict[int, str | None] = dict.fromkeys(cands)
    stages: list[dict[str, Any]] = []
    prev: _Dist | None = None
    for stage, active, dist in dists:
        if prev is None or dist.kept == prev.kept:
            removed = 0.0  # a stage only removes: as many kept, nothing removed
        else:  # the previous stage's mass on what this one no longer allows
            removed = max(0.0, 1.0 - float(np.exp(prev.at(dist.ids)).sum()))
        lp = dist.at(at)
        for c, v in zip(cands, lp, strict=True):
            if cut[c] is None and not np.isfinite(v):
                cut[c] = stage
        stages.append(
            {
                "stage": stage,
                "setting": settings.get(stage) if active else None,
                "active": active,
                "kept": dist.kept,
                "removed_mass": removed,
                "entropy": dist.entropy(),
                "p": np.exp(lp).tolist(),
            }
        )
        prev = dist
    return {
        "position": position,
        "token_id": token,
        "token": _text(words, token),
        "rank": raw.rank(token),
        "draw": draw_name,
        "candidates": [{"id": c, "token": _text(words, c), "cut_by": cut[c]} for c in cands],
        "stages": stages,
    }


def _watch(
    dists: list[tuple[str, bool, _Dist]], watch: Sequence[int], position: int
) -> dict[str, Any]:
    raw = dists[0][2]
    final = dists[-1][2]
    at = np.array(watch, dtype=np.int64)
    raw_lp = raw.at(at)
    final_lp = final.at(at)
    alive = [np.isfinite(d.at(at)) for _, _, d in dists]
    cut: list[str | None] = [
        next((dists[s][0] for s in range(len(dists)) if not alive[s][i]), None)
        for i in range(len(watch))
    ]
    return {
        "position": position,
        "raw_logprob": raw_lp.tolist(),
        "raw_rank": [raw.rank(t) for t in watch],
        "logprob": [float(v) if np.isfinite(v) else None for v in final_lp],
        "rank": [final.rank(t) for t in watch],
        "cut_by": cut,
    }


_TEXTS: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


def _text(words: Any, token: int) -> str:
    """The token as text, control tokens spelled out (as in the logprobs entries)."""
    texts = _TEXTS.setdefault(words, {})
    text = texts.get(token)
    if text is None:
        text = texts[token] = bytes(words.token_bytes(token)).decode("utf-8", errors="replace")
    return text

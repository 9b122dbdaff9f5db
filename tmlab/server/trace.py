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


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax over the finite entries (the others stay -inf), as the sampler computes
    processed logprobs."""
    finite = np.isfinite(x)
    out = np.full(x.shape, -np.inf)
    v = x[finite]
    m = v.max()
    out[finite] = v - (m + np.log(np.exp(v - m).sum()))
    return out


def _rank(lp: np.ndarray, token: int) -> int | None:
    """1 + how many tokens are more likely than ``token`` (None: removed)."""
    if not np.isfinite(lp[token]):
        return None
    return 1 + int(np.count_nonzero(lp > lp[token]))


def _top(lp: np.ndarray, n: int) -> list[int]:
    finite = int(np.count_nonzero(np.isfinite(lp)))
    n = min(n, finite)
    if n <= 0:
        return []
    idx = np.argpartition(-lp, n - 1)[:n]
    return [int(i) for i in idx[np.argsort(-lp[idx], kind="stable")]]


class Observer:
    """Called by :func:`~tmlab.server.sampler.draw` after each stage with the stage's name:
    keeps the dense distribution (log-weights over the whole vocabulary, -inf removed) that
    the candidates array then holds."""

    def __init__(self, cand: Any, n_vocab: int) -> None:
        self.cand = cand
        self.n = n_vocab
        self.ran: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> None:
        arr = self.cand.candidates
        data = self.cand.candidates_data
        size = int(arr.size)
        dense = np.full(self.n, -np.inf)
        dense[np.asarray(data.id[:size], dtype=np.int64)] = data.logit[:size]
        self.ran[_STAGE_OF.get(name, name)] = dense

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
        draw_name = next(
            (d for d in ("greedy", "mirostat-v2", "dist") if d in self.ran), "dist"
        ).replace("-v2", "")
        dists = _distributions(self.ran, token, greedy=draw_name == "greedy")
        trace = None
        if spec.covers(position):
            trace = _entry(words, dists, settings, spec, token, position, draw_name)
        watch = _watch(dists, spec.watch, position) if spec.watch else None
        return trace, watch


def _distributions(
    ran: dict[str, np.ndarray], token: int, *, greedy: bool
) -> list[tuple[str, bool, np.ndarray]]:
    """(stage, active, log-probabilities after it) for every stage of :data:`CHAIN`."""
    out: list[tuple[str, bool, np.ndarray]] = []
    prev: np.ndarray | None = None
    for stage in CHAIN:
        weights = ran.get(stage)
        if stage == "temperature" and greedy:
            lp = np.full(ran["raw"].shape, -np.inf)
            lp[token] = 0.0
            out.append((stage, True, lp))
            continue
        if weights is None:
            assert prev is not None  # raw always ran
            out.append((stage, False, prev))
            continue
        prev = _log_softmax(weights)
        out.append((stage, True, prev))
    return out


def _entry(
    words: Any,
    dists: list[tuple[str, bool, np.ndarray]],
    settings: dict[str, Any],
    spec: TraceSpec,
    token: int,
    position: int,
    draw_name: str,
) -> dict[str, Any]:
    raw = dists[0][2]
    final = dists[-1][2]
    cands = list(dict.fromkeys([*_top(raw, spec.top), *_top(final, spec.top), token]))
    cut: dict[int, str | None] = dict.fromkeys(cands)
    stages: list[dict[str, Any]] = []
    prev_p: np.ndarray | None = None
    for stage, active, lp in dists:
        p = np.exp(lp)
        kept = np.isfinite(lp)
        removed = 0.0 if prev_p is None else float(prev_p[~kept].sum())
        for c in cands:
            if cut[c] is None and not kept[c]:
                cut[c] = stage
        stages.append(
            {
                "stage": stage,
                "setting": settings.get(stage) if active else None,
                "active": active,
                "kept": int(np.count_nonzero(kept)),
                "removed_mass": removed,
                "entropy": float(-(p[kept] * lp[kept]).sum()),
                "p": [float(p[c]) for c in cands],
            }
        )
        prev_p = p
    return {
        "position": position,
        "token_id": token,
        "token": _text(words, token),
        "rank": _rank(raw, token),
        "draw": draw_name,
        "candidates": [{"id": c, "token": _text(words, c), "cut_by": cut[c]} for c in cands],
        "stages": stages,
    }


def _watch(
    dists: list[tuple[str, bool, np.ndarray]], watch: Sequence[int], position: int
) -> dict[str, Any]:
    raw = dists[0][2]
    final = dists[-1][2]
    cut: list[str | None] = []
    for t in watch:
        cut.append(next((stage for stage, _, lp in dists if not np.isfinite(lp[t])), None))
    return {
        "position": position,
        "raw_logprob": [float(raw[t]) for t in watch],
        "raw_rank": [_rank(raw, t) for t in watch],
        "logprob": [float(final[t]) if np.isfinite(final[t]) else None for t in watch],
        "rank": [_rank(final, t) for t in watch],
        "cut_by": cut,
    }


def _text(words: Any, token: int) -> str:
    """The token as text, control tokens spelled out (as in the logprobs entries)."""
    return bytes(words.token_bytes(token)).decode("utf-8", errors="replace")

"""The sampler chain stage by stage, recomputed client side from candidates (numpy, no request).

:func:`run_chain` takes candidate scores *before truncation* (a full row of logits, the stage
just before ``top_k`` of a :ref:`sampler trace <trace>`, or a server's raw ``top_logprobs``)
and the truncation settings, and gives one :class:`Stage` per step of the chain: its setting,
which candidates it kept, each candidate's probability after it, the mass it removed, the
entropy after it, and whether those numbers are exact.

Two orders:

- ``"llama.cpp"`` (tmlab's embedded server): ``top_k, typical_p, top_p, min_p, temperature`` —
  truncation on the untempered distribution, then the temperature; ``min_keep`` 1. Given the
  whole vocabulary it follows llama.cpp's samplers (``src/llama-sampler.cpp``) down to their
  float32 arithmetic: ``top_k`` keeps exactly k tokens (of tokens tied at the cut, llama.cpp's
  sort decides which stay; here the lower index), ``typical_p`` keeps tokens until the mass
  *exceeds* p, ``top_p`` until it *reaches* p (``>=``, cumulated in float32 in descending order,
  the normaliser summed in the array's order), ``min_p`` keeps every logit
  ``>= max + logf(min_p)`` (ties kept), the temperature divides the logits. A temperature
  below :data:`GREEDY_BELOW` is greedy, as on the server: no truncation sampler is in the chain
  and p = 1 on the most likely token.
- ``"transformers"`` (Hugging Face's logits warpers, vLLM): ``temperature, top_k, top_p,
  min_p, typical_p`` — temperature first, in float64; ``top_k`` keeps ties at the cut, ``top_p``
  keeps whole tie groups, boundaries compared with :data:`~tmlab.analysis.sampler_twin.TOLERANCE`
  (as :mod:`tmlab.sampling` does).

**Exact or approximate.** With ``other_mass=0`` the candidates are the whole vocabulary and
every number is exact. With ``other_mass > 0`` (the probability outside the candidates, known
when the scores are absolute log-probabilities) or ``None`` (not known), the unseen tokens — each
at most as likely as ``tail_max`` (default: the least likely candidate) — are tracked as a
*tail* with lower and upper bounds of its mass. A stage is exact when the tail is known to be
cut (``top_k`` ≤ the candidates kept, ``top_p`` reached within the candidates whatever the
tail's mass, a ``min_p`` threshold above ``tail_max``, greedy) or its mass is known exactly;
then ``p`` holds each candidate's exact probability and ``other`` the tail's. Otherwise the
stage is an approximation computed as if the tail did not exist (as :mod:`tmlab.sampling`
does), and ``bound`` bounds its total-variation distance from the exact distribution:
``x / (S + x)`` with ``S`` the kept candidates' weight and ``x`` the tail's largest possible
weight — the reasoning of :func:`~tmlab.analysis.sampler_twin.tv_bound`: at T ≤ 1 an unseen
token of probability ≤ q weighs at most ``p·q^(1/T−1)``; above T = 1 the bound needs
``vocab_size``. ``bound`` is NaN when a decision about the candidates themselves is uncertain
(``typical_p`` needs the whole distribution's entropy; a ``top_p`` cut that moves with the
tail's mass).

``entropy`` (nats) is exact when the tail is gone; with a tail it is a lower bound (the tail's
tokens counted as if each were ``tail_max``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from tmlab.analysis.sampler_twin import TOLERANCE
from tmlab.errors import ParameterError

__all__ = [
    "CHAIN_ORDERS",
    "GREEDY_BELOW",
    "Stage",
    "cut_by",
    "run_chain",
]

Order = Literal["llama.cpp", "transformers"]

CHAIN_ORDERS: Final[dict[str, tuple[str, ...]]] = {
    "llama.cpp": ("top_k", "typical_p", "top_p", "min_p", "temperature"),
    "transformers": ("temperature", "top_k", "top_p", "min_p", "typical_p"),
}
"""The stages after ``input``, in each order."""

GREEDY_BELOW: Final = 1e-5
"""Temperatures below this are greedy (as on tmlab's server: logits ÷ 1e-45 overflow)."""


@dataclass(frozen=True)
class Stage:
    """The distribution after one stage of the chain, over the candidates (aligned with them).

    ``stage``: ``"input"`` or the setting's name; ``setting``: its value (``None``: the stage
    is not in the chain, ``active`` False); ``kept``: bool per candidate; ``p``: probability
    after the stage per candidate (0 = removed); ``other``: the tail's probability (the mass
    outside the candidates; 0 when gone or unknown); ``removed_mass``: mass of the previous
    stage's distribution this stage removed; ``entropy``: nats (a lower bound while a tail
    remains); ``exact``: the numbers are exact; ``bound``: upper bound of the total-variation
    error (0 exact, NaN unknown); ``label``: ``"exact"``, ``"approximate (TV ≤ 0.0123)"`` or
    ``"approximate (no bound)"``.
    """

    stage: str
    setting: Any
    active: bool
    kept: np.ndarray
    p: np.ndarray
    other: float
    removed_mass: float
    entropy: float
    exact: bool
    bound: float
    label: str

    @property
    def n_kept(self) -> int:
        """How many candidates the stage kept."""
        return int(self.kept.sum())


def cut_by(stages: list[Stage]) -> list[str | None]:
    """For each candidate, the stage that removed it (None: kept to the end)."""
    n = stages[0].kept.shape[0]
    out: list[str | None] = [None] * n
    before = np.ones(n, dtype=bool)
    for st in stages:
        for i in np.flatnonzero(before & ~st.kept):
            out[int(i)] = st.stage
        before = st.kept
    return out


# --- settings -------------------------------------------------------------------------------


def _number(name: str, value: Any, lo: float, hi: float, *, low_open: bool = False) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not ok or not (lo < v if low_open else lo <= v) or not v <= hi:
        allowed = f"a number in {'(' if low_open else ''}{lo:g}..{hi:g}"
        raise ParameterError(name, f"{name}={value!r} is out of range", allowed)
    return v


def _settings(
    top_k: Any, typical_p: Any, top_p: Any, min_p: Any, temperature: Any, order: Any
) -> dict[str, Any]:
    if order not in CHAIN_ORDERS:
        raise ParameterError(
            "order", f"order={order!r} is not known", "'llama.cpp' | 'transformers'"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < -1:
        raise ParameterError("top_k", f"top_k={top_k!r}", "an int ≥ -1 (0 or -1: off)")
    return {
        "top_k": int(top_k),
        "typical_p": _number("typical_p", typical_p, 0.0, 1.0, low_open=True),
        "top_p": _number("top_p", top_p, 0.0, 1.0),
        "min_p": _number("min_p", min_p, 0.0, 1.0),
        "temperature": _number("temperature", temperature, 0.0, 2.0),
    }


def _active(name: str, value: Any) -> bool:
    if name == "top_k":
        return bool(value > 0)
    if name in ("typical_p", "top_p"):
        return bool(value < 1.0)
    if name == "min_p":
        return bool(value > 0.0)
    return bool(value != 1.0)  # temperature


# --- the state between stages -------------------------------------------------------------


class _Chain:
    """Scores of the candidates as they go through the chain, plus the unseen tail."""

    def __init__(
        self,
        scores: np.ndarray,
        other_mass: float | None,
        tail_max: float | None,
        vocab_size: int | None,
        f32: bool,
    ) -> None:
        self.lw = scores.astype(np.float64)  # log-weights; -inf = removed
        self.f32 = f32  # emulate llama.cpp's float32 arithmetic (whole vocabulary only)
        self.lg32 = scores.astype(np.float32) if f32 else None
        self.order = np.arange(scores.shape[0])  # llama.cpp's array order of what is kept
        self.sorted = False
        self.certain = True  # decisions about the candidates are exact
        finite = self.lw[np.isfinite(self.lw)]
        if other_mass == 0.0 or finite.size == 0:
            self.t_lo = self.t_hi = 0.0
            self.q = -math.inf
        else:
            self.t_lo = 0.0 if other_mass is None else float(other_mass)
            self.t_hi = math.inf if other_mass is None else float(other_mass)
            self.q = float(finite.min()) if tail_max is None else float(tail_max)
        n_seen = int(scores.shape[0])
        self.n = math.inf if vocab_size is None else float(max(0, vocab_size - n_seen))

    # the tail
    @property
    def alive(self) -> bool:
        return self.t_hi > 0.0

    def kill_tail(self) -> None:
        self.t_lo = self.t_hi = 0.0

    def kept(self) -> np.ndarray:
        return np.isfinite(self.lw)

    def snapshot(self) -> tuple[np.ndarray, float, float, float]:
        """(p per candidate, tail share, bound, entropy) of the current distribution."""
        kept = self.kept()
        p = np.zeros_like(self.lw)
        if not kept.any():
            return p, 0.0, math.nan, math.nan
        m = float(self.lw[kept].max())
        w = np.exp(self.lw[kept] - m)
        s = float(w.sum())
        known = self.t_lo == self.t_hi
        t_est = self.t_lo * math.exp(-m) if known and self.alive else 0.0
        z = s + t_est
        p[kept] = w / z
        other = t_est / z
        pk = p[kept]
        pk = pk[pk > 0]
        entropy = float(-(pk * np.log(pk)).sum())
        if other > 0 and math.isfinite(self.q):
            entropy += -other * (self.q - m - math.log(z))  # each unseen token ≤ tail_max
        if not self.certain:
            bound = math.nan
        elif not self.alive or known:
            bound = 0.0
        elif math.isinf(self.t_hi):
            bound = math.nan
        else:
            x = self.t_hi * math.exp(-m)
            bound = x / (s + x)
        return p, other, bound, entropy

    def remove(self, drop: np.ndarray) -> None:
        """Remove candidates ``drop`` (bool per candidate)."""
        self.lw = np.where(drop, -np.inf, self.lw)
        if self.lg32 is not None:
            self.lg32 = np.where(drop, np.float32(-np.inf), self.lg32)
        self.order = self.order[~drop[self.order]]


# --- llama.cpp's float32 arithmetic (whole vocabulary) -----------------------------------


def _expf(x: np.ndarray) -> np.ndarray:
    # float64 exp rounded to float32: glibc's expf is correctly rounded in nearly all cases
    return np.exp(x.astype(np.float64)).astype(np.float32)


def _logf(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x.astype(np.float64)).astype(np.float32)


def _softmax32(lg: np.ndarray, is_sorted: bool) -> np.ndarray:
    """llama_sampler_softmax_impl: p in float32, the normaliser summed in array order."""
    mx = lg[0] if is_sorted else lg.max()
    e = _expf(lg - mx)
    total = np.cumsum(e, dtype=np.float32)[-1]  # sequential, as the C loop adds
    return (e / total).astype(np.float32)


def _desc(c: _Chain) -> np.ndarray:
    """The kept candidates by descending score (ties: lower index first)."""
    idx = np.flatnonzero(c.kept())
    key = c.lg32[idx] if c.lg32 is not None else c.lw[idx]
    return idx[np.argsort(-key, kind="stable")]


# --- the stages ----------------------------------------------------------------------------


def _top_k(c: _Chain, k: int, ties: bool) -> None:
    desc = _desc(c)
    if k >= desc.size:
        if c.alive:  # all candidates stay; at most k - n unseen tokens too
            extra = k - desc.size
            if math.isfinite(c.n) and c.n > 0:
                c.t_lo = c.t_lo * min(1.0, extra / c.n)
            else:
                c.t_lo = 0.0
            c.n = min(c.n, float(extra))
            c.t_hi = min(c.t_hi, extra * math.exp(c.q))
            c.t_lo = min(c.t_lo, c.t_hi)
            if extra == 0:
                c.kill_tail()
        if c.lg32 is not None:
            c.order, c.sorted = desc, True
        return
    keep = np.zeros(c.lw.shape[0], dtype=bool)
    if ties:  # transformers: every token >= the k-th largest
        kth = c.lw[desc[k - 1]]
        keep[desc] = c.lw[desc] >= kth
    else:
        keep[desc[:k]] = True
    c.remove(~keep)
    c.kill_tail()
    if c.lg32 is not None:
        c.order, c.sorted = desc[:k], True


def _cut_index(cum: np.ndarray, target: float, tol: float) -> int | None:
    hit = np.flatnonzero(cum >= target - tol)
    return int(hit[0]) if hit.size else None


def _top_p(c: _Chain, top_p: float, ties: bool) -> None:
    if c.lg32 is not None and not c.alive:
        lg = c.lg32[c.order]
        p = _softmax32(lg, c.sorted)
        rank = np.argsort(-lg, kind="stable")
        cum = np.cumsum(p[rank], dtype=np.float32)
        hit = np.flatnonzero(cum >= np.float32(top_p))
        last = int(hit[0]) + 1 if hit.size else rank.size
        keep_idx = c.order[rank[:last]]
        keep = np.zeros(c.lw.shape[0], dtype=bool)
        keep[keep_idx] = True
        c.remove(~keep)
        c.order, c.sorted = keep_idx, True
        return
    desc = _desc(c)
    if desc.size == 0:
        return
    m = float(c.lw[desc[0]])
    w = np.exp(c.lw[desc] - m)
    cum = np.cumsum(w)
    s = float(cum[-1])
    scale = math.exp(-m)
    j_lo = _cut_index(cum, top_p * (s + c.t_lo * scale), TOLERANCE * s)
    j_hi = (
        _cut_index(cum, top_p * (s + c.t_hi * scale), TOLERANCE * s)
        if math.isfinite(c.t_hi)
        else None
    )
    if c.alive and j_lo != j_hi:
        c.certain = False
    j = j_hi if math.isfinite(c.t_hi) else j_lo
    if j is None:  # the candidates do not reach top_p: all stay, with part of the tail
        c.t_lo = max(0.0, min(c.t_lo, top_p * (s / scale + c.t_lo) - s / scale))
        return
    last = j + 1
    if ties:  # a whole tie group stays
        last = int(np.searchsorted(-c.lw[desc], -c.lw[desc[j]], side="right"))
    keep = np.zeros(c.lw.shape[0], dtype=bool)
    keep[desc[:last]] = True
    c.remove(~keep)
    c.kill_tail()
    if c.lg32 is not None:
        c.order, c.sorted = desc[:last], True


def _min_p(c: _Chain, min_p: float) -> None:
    kept = c.kept()
    if not kept.any():
        return
    if c.lg32 is not None and not c.alive:
        lg = c.lg32
        threshold = np.float32(lg[kept].max()) + _logf(np.array([min_p], dtype=np.float32))[0]
        c.remove(kept & ~(lg >= np.float32(threshold)))
        return
    top = float(c.lw[kept].max())
    threshold = top + math.log(min_p)
    c.remove(kept & ~(c.lw >= threshold - TOLERANCE))
    if c.alive:
        if c.q < threshold - TOLERANCE:
            c.kill_tail()
        else:
            c.t_lo = 0.0


def _typical(c: _Chain, typical_p: float, hf: bool) -> None:
    kept = c.kept()
    if not kept.any():
        return
    if c.alive:
        c.certain = False  # the entropy of the whole distribution is not known
        c.t_lo = 0.0
    if c.lg32 is not None and not c.alive:
        desc = _desc(c)
        p = _softmax32(c.lg32[desc], True)
        pos = p > 0  # llama.cpp's entropy is NaN with a zero probability; those are skipped
        logp = np.full(p.shape, np.float32(-np.inf))
        logp[pos] = _logf(p[pos])
        terms = np.where(pos, -p * logp, np.float32(0.0)).astype(np.float32)
        ent = np.cumsum(terms, dtype=np.float32)[-1]
        shifted = np.abs(-logp - ent).astype(np.float32)
        rank = np.argsort(shifted, kind="stable")
        cum = np.cumsum(p[rank], dtype=np.float32)
        hit = np.flatnonzero(cum > np.float32(typical_p))
        last = int(hit[0]) + 1 if hit.size else rank.size
        keep_idx = desc[rank[:last]]
        keep = np.zeros(c.lw.shape[0], dtype=bool)
        keep[keep_idx] = True
        c.remove(~keep)
        c.order, c.sorted = keep_idx, False
        return
    idx = np.flatnonzero(kept)
    lw = c.lw[idx]
    logp = lw - (lw.max() + math.log(float(np.exp(lw - lw.max()).sum())))
    p = np.exp(logp)
    ent = float(-(p * logp).sum())
    shifted = np.abs(-logp - ent)
    rank = np.argsort(shifted, kind="stable")
    cum = np.cumsum(p[rank])
    if hf:  # transformers: keep shifted scores ≤ the one where the mass reaches p
        last_ind = min(int((cum < typical_p - TOLERANCE).sum()), rank.size - 1)
        keep_local = shifted <= shifted[rank[last_ind]]
    else:
        hit = np.flatnonzero(cum > typical_p + TOLERANCE)
        last = int(hit[0]) + 1 if hit.size else rank.size
        keep_local = np.zeros(idx.size, dtype=bool)
        keep_local[rank[:last]] = True
    keep = np.zeros(c.lw.shape[0], dtype=bool)
    keep[idx[keep_local]] = True
    c.remove(~keep)


def _temperature(c: _Chain, t: float) -> None:
    kept = c.kept()
    if not kept.any():
        return
    if t < GREEDY_BELOW:
        if c.lg32 is not None:
            order = c.order
            best = order[int(np.argmax(c.lg32[order]))]  # the first maximum in array order
        else:
            idx = np.flatnonzero(kept)
            best = idx[int(np.argmax(c.lw[idx]))]
        keep = np.zeros(c.lw.shape[0], dtype=bool)
        keep[best] = True
        c.remove(~keep)
        c.kill_tail()
        return
    if c.lg32 is not None:
        c.lg32 = (c.lg32 / np.float32(t)).astype(np.float32)
        c.lw = c.lg32.astype(np.float64)
    else:
        c.lw = c.lw / t
    if c.alive:
        a = 1.0 / t
        qw = math.exp(c.q)
        if a >= 1.0:  # each unseen token weighs at most p·q^(a-1)
            c.t_hi = c.t_hi * qw ** (a - 1.0)
            c.t_lo = c.n * (c.t_lo / c.n) ** a if math.isfinite(c.n) and c.n > 0 else 0.0
        else:  # spread evenly is the heaviest; at least p·q^(a-1) each
            c.t_hi = c.n ** (1.0 - a) * c.t_hi**a if math.isfinite(c.n) else math.inf
            c.t_lo = c.t_lo * qw ** (a - 1.0)
        c.t_lo = min(c.t_lo, c.t_hi)
        c.q = c.q / t


def _label(exact: bool, bound: float) -> str:
    if exact:
        return "exact"
    if math.isnan(bound):
        return "approximate (no bound)"
    return f"approximate (TV ≤ {bound:.4g})"


def run_chain(
    logits: Any,
    *,
    top_k: int = 0,
    typical_p: float = 1.0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    temperature: float = 1.0,
    order: str = "llama.cpp",
    other_mass: float | None = 0.0,
    tail_max: float | None = None,
    vocab_size: int | None = None,
) -> list[Stage]:
    """The distribution after each stage of the chain: ``[input, ...]`` in ``order``.

    ``logits``: the candidates' scores before truncation (logits or log-probabilities; -inf =
    already removed). ``other_mass``: the probability outside the candidates (0: they are the
    whole vocabulary; ``None``: not known; > 0 needs absolute log-probabilities). ``tail_max``:
    log-probability no unseen token exceeds (default: the smallest candidate's).
    ``vocab_size``: the vocabulary's size (bounds above T = 1). Settings as on the server
    (``top_k`` 0/-1, ``typical_p``/``top_p`` 1, ``min_p`` 0: off). See the module docstring.
    """
    s = _settings(top_k, typical_p, top_p, min_p, temperature, order)
    scores = np.asarray(logits)
    if scores.ndim != 1 or scores.size == 0 or not np.issubdtype(scores.dtype, np.number):
        raise ParameterError("logits", "logits must be a non-empty 1-D array", "numbers")
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise ParameterError("logits", "logits hold NaN or +inf", "finite numbers or -inf")
    if other_mass is not None:
        other_mass = _number("other_mass", other_mass, 0.0, 1.0)
    greedy = s["temperature"] < GREEDY_BELOW
    llama = order == "llama.cpp"
    c = _Chain(scores, other_mass, tail_max, vocab_size, f32=llama and other_mass == 0.0)
    stages: list[Stage] = []
    prev_p, prev_other, bound, ent = c.snapshot()
    stages.append(
        Stage(
            "input",
            None,
            True,
            c.kept(),
            prev_p,
            prev_other,
            0.0,
            ent,
            bound == 0.0,
            bound,
            _label(bound == 0.0, bound),
        )
    )
    for name in CHAIN_ORDERS[order]:
        value = s[name]
        active = _active(name, value) or (name == "temperature" and greedy)
        if llama and greedy and name != "temperature":
            active = False  # the server's greedy chain has no truncation sampler
        if active:
            if name == "top_k":
                _top_k(c, value, ties=not llama)
            elif name == "typical_p":
                _typical(c, value, hf=not llama)
            elif name == "top_p":
                _top_p(c, value, ties=not llama)
            elif name == "min_p":
                _min_p(c, value)
            else:
                _temperature(c, value)
        p, other, bound, ent = c.snapshot()
        kept = c.kept()
        removed = float(prev_p[~kept].sum()) + (prev_other if not c.alive else 0.0)
        exact = bound == 0.0
        stages.append(
            Stage(
                name,
                value if active else None,
                active,
                kept,
                p,
                other,
                removed,
                ent,
                exact,
                bound,
                _label(exact, bound),
            )
        )
        prev_p, prev_other = p, other
    return stages

"""The numpy twin of the server's sampler chain, for what-if sampling (numpy only).

The embedded server draws each token through llama.cpp's chain (:mod:`tmlab.server.sampler`):
penalties, top_k, top_p, min_p, temperature. This module applies the same arithmetic —
softmax(logprob / T), truncation, renormalisation, in either order — to the log-probabilities
a server returned at one position: :func:`reshape` gives the distribution under other settings,
:func:`tv_bound` an upper bound of how far that is from the exact answer over the whole
vocabulary. :mod:`tmlab.analysis.whatif` (public as ``tmlab.sampling``) applies it to a
:class:`~tmlab.ChatResult` and labels the result as the approximation it is.
``tests/test_sampling_truth.py`` runs it against llama.cpp's full logits and the server's
processed logprobs of the same requests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np

from tmlab.errors import ParameterError
from tmlab.params import validate_params

__all__ = ["TOLERANCE", "Order", "SamplerSettings", "check_settings", "reshape", "tv_bound"]

Order = Literal["temperature_first", "truncate_first"]

TOLERANCE: Final = 1e-9
"""Absolute tolerance of the top_p and min_p boundary comparisons."""


@dataclass(frozen=True)
class SamplerSettings:
    """Validated what-if settings; ``None`` means off."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    order: Order = "temperature_first"

    def describe(self) -> str:
        """Short text such as ``T=0.7, top_p=0.9``."""
        parts = [f"T={self.temperature:g}"]
        for name in ("top_k", "top_p", "min_p"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:g}")
        if self.order != "temperature_first":
            parts.append(f"order={self.order}")
        return ", ".join(parts)


def check_settings(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    order: str = "temperature_first",
) -> SamplerSettings:
    """Check what-if settings against the parameter table's ranges; ParameterError if wrong."""
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    if temperature is None:
        raise ParameterError("temperature", "temperature=None: give a number", "float in 0..2")
    checked = validate_params({k: v for k, v in given.items() if v is not None})
    if order not in ("temperature_first", "truncate_first"):
        raise ParameterError(
            "order", f"order={order!r} is not known", "'temperature_first' | 'truncate_first'"
        )
    k = checked.get("top_k")
    return SamplerSettings(
        temperature=float(checked["temperature"]),
        top_k=None if k is None or k <= 0 else int(k),  # 0 and -1 mean off, as on the server
        top_p=None if checked.get("top_p") is None else float(checked["top_p"]),
        min_p=None if checked.get("min_p") is None else float(checked["min_p"]),
        order=cast(Order, order),
    )


# --- the maths, over one position's alternatives ----------------------------------------


def _temper(logprob: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logprob / T) over the finite entries; T = 0 is the limit (ties share)."""
    out = np.zeros_like(logprob)
    finite = np.isfinite(logprob)
    if not finite.any():
        return out
    top = logprob[finite].max()
    if temperature == 0:
        out[logprob == top] = 1.0
    else:
        # Subtracting the maximum keeps a tiny temperature from overflowing.
        out[finite] = np.exp((logprob[finite] - top) / temperature)
    return out / out.sum()


def _renorm(p: np.ndarray, kept: np.ndarray) -> np.ndarray:
    q = np.where(kept, p, 0.0)
    total = q.sum()
    return q / total if total > 0 else q


def _truncate(p: np.ndarray, s: SamplerSettings) -> np.ndarray:
    """The kept mask after top_k, top_p, min_p (in turn, each over the renormalised rest)."""
    kept = p > 0
    if s.top_k is not None and s.top_k < kept.sum():
        kth = np.sort(p[kept])[::-1][s.top_k - 1]
        kept &= p >= kth
        p = _renorm(p, kept)
    if s.top_p is not None and s.top_p < 1.0:
        values, counts = np.unique(p[kept], return_counts=True)
        values, counts = values[::-1], counts[::-1]  # most likely first, ties grouped
        cum = np.cumsum(values * counts)
        reach = np.flatnonzero(cum >= s.top_p - TOLERANCE)
        cut = values[reach[0]] if reach.size else values[-1]
        kept &= p >= cut
        p = _renorm(p, kept)
    if s.min_p is not None and s.min_p > 0.0 and kept.any():
        kept &= p / p[kept].max() >= s.min_p - TOLERANCE
    return kept


def reshape(
    logprobs: Any, settings: SamplerSettings | None = None, **kwargs: Any
) -> tuple[Any, Any]:
    """What-if probabilities over one position's alternatives: ``(probs, kept)`` arrays.

    ``logprobs`` are the returned alternatives' log-probabilities (any order); the result is
    aligned with them. SamplerSettings as :class:`SamplerSettings` or as keyword arguments
    (``temperature=, top_k=, top_p=, min_p=, order=``). An approximation: see the module
    docstring.
    """
    s = settings if settings is not None else check_settings(**kwargs)
    lp = np.asarray(logprobs, dtype=float)
    if lp.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    if s.order == "temperature_first":
        p = _temper(lp, s.temperature)
        kept = _truncate(p, s)
        return _renorm(p, kept), kept
    kept = _truncate(_temper(lp, 1.0), s)
    p = _temper(np.where(kept, lp, -np.inf), s.temperature)
    return p, kept & (p > 0)


def tv_bound(logprobs: Any, settings: SamplerSettings | None = None, **kwargs: Any) -> float:
    """Upper bound of the what-if's error at one position, from the returned logprobs alone.

    The bound is on the total-variation distance between :func:`reshape` over the returned
    alternatives and the exact what-if over the whole vocabulary, assuming the alternatives
    are the true most likely tokens (every unseen token has probability ≤ q, the smallest
    returned). 0 means exact: ``top_k`` ≤ the number returned, ``temperature=0``, a ``min_p``
    that no unseen token can pass, or a ``top_p`` prefix that holds whatever the unseen mass.
    Otherwise, for T ≤ 1 and temperature first: ``ε̄ = r / (1 + r)``,
    ``r = (other_mass / q) / Σ_kept (p_i / q)^(1/T)`` (without top_p), or
    ``ε̄ + max(g, ε̄) / top_p`` with ``g`` the what-if probability of the first alternative
    past the top_p prefix (with top_p). NaN where no bound is known.
    ``tests/test_sampling_truth.py`` derives these and checks them on the embedded model.
    """
    s = settings if settings is not None else check_settings(**kwargs)
    lp = np.sort(np.asarray(logprobs, dtype=float))[::-1]
    raw = np.exp(lp)
    if raw.size == 0 or not np.isfinite(lp[0]):
        return math.nan
    m = max(0.0, 1.0 - float(raw.sum()))
    positive = raw[raw > 0]
    if positive.size == 0:
        return math.nan
    q, p_max = float(positive.min()), float(positive.max())
    if m == 0.0 or s.temperature == 0 or (s.top_k is not None and s.top_k <= raw.size):
        return 0.0
    t = s.temperature
    power = 1.0 / t if s.order == "temperature_first" else 1.0
    if s.min_p and s.top_p is None and (q / p_max) ** power < s.min_p - TOLERANCE:
        return 0.0  # no unseen token passes min_p
    if t > 1.0 or s.order != "temperature_first":
        return math.nan

    def eps_bar(mask: np.ndarray) -> float:
        # r = (m / q) / Σ (p_i / q)^(1/T), in logs: a small T overflows the powers.
        x = (lp[mask] - math.log(q)) / t
        log_r = math.log(m / q) - (x.max() + math.log(float(np.exp(x - x.max()).sum())))
        return (
            math.exp(log_r) / (1.0 + math.exp(log_r))
            if log_r < 0
            else 1.0 / (1.0 + math.exp(-log_r))
        )

    if s.top_p is None or s.top_p >= 1.0:
        _, kept = reshape(lp, s)
        return eps_bar(kept)
    eps = eps_bar(np.ones(raw.size, dtype=bool))
    untruncated = _temper(lp, t)
    prefix = _truncate(untruncated, SamplerSettings(temperature=t, top_p=s.top_p))
    if untruncated[prefix].sum() * (1.0 - eps) >= s.top_p:
        return 0.0  # the exact rule keeps the same prefix; min_p then acts alike on it
    if s.min_p:
        return math.nan
    after = untruncated[~prefix]
    g = float(after.max()) if after.size else eps
    return min(1.0, eps + max(g, eps) / s.top_p)

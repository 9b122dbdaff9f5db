"""One position of a step-by-step generation: its candidates and every sampler stage's bars.

The numbers behind :class:`tmlab.Stepper` (no widget, no request): :func:`view_of` reads the
candidates of a one-token answer — the sampler trace's (the distribution before ``top_k``, and
the server's own stages) or the ``top_logprobs`` — and :func:`stage_rows` gives the rows the
Stepper draws under given slider settings: the server's own trace when it was taken with them,
else the stages recomputed by :func:`tmlab.analysis.stages.run_chain`, each labelled exact or
approximate with its bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tmlab.analysis.stages import Stage, cut_by, run_chain

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = ["COLUMNS", "SLIDERS", "TRACE_TOP", "View", "label", "stage_rows", "view_of"]

SLIDERS = ("temperature", "top_k", "top_p", "min_p")
"""The settings the Stepper's sliders move (the rest of ``**params`` is sent as given)."""

TRACE_TOP = 50
"""Candidates asked of the sampler trace (``sampler_trace={"top": 50}``)."""
COLUMNS = 16
"""Candidates drawn as bars."""
_PRE = ("eos_ban", "logit_bias", "penalties", "grammar")  # stages before the truncation


@dataclass
class View:
    """One position's candidates as a response returned them, and the token drawn there."""

    ids: list[int | None]
    labels: list[str]
    pieces: list[bytes]
    logprobs: np.ndarray  # before truncation (trace: the stage before top_k; else raw)
    other_mass: float | None
    tail_max: float | None
    settings: dict[str, Any]  # the slider values the request was sent with
    kind: str  # "trace" | "raw" | "processed" | "none"
    trace: dict[str, Any] | None = None
    drawn: int | None = None  # index into the candidates of the token the server drew
    drawn_label: str = ""
    ended: bool = False  # the server drew end-of-generation
    bounded: bool = True  # the candidates hold the top of the distribution before top_k
    entropy: float = math.nan  # of the raw distribution (trace: exact; else lower bound)
    gap: float = math.nan  # top-2 gap of the raw distribution
    extra: dict[str, Any] = field(default_factory=dict)


def label(text: str) -> str:
    """A token as shown: spaces, newlines and tabs made visible, empty as ∅."""
    marks = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
    return (
        "".join(
            marks.get(c, c if c.isprintable() else c.encode("unicode_escape").decode())
            for c in text
        )
        or "\u2205"
    )


def _piece(token: str, raw_bytes: list[int] | None) -> bytes:
    return bytes(raw_bytes) if raw_bytes is not None else token.encode()


def _entropy_gap(p: np.ndarray) -> tuple[float, float]:
    q = np.sort(p[p > 0])[::-1]
    ent = float(-(q * np.log(q)).sum()) if q.size else math.nan
    gap = float(q[0] - q[1]) if q.size > 1 else math.nan
    return ent, gap


def view_of(res: ChatResult, settings: dict[str, Any], meaning: str | None) -> View:
    """The candidates of ``res``'s single generated position (``meaning``: the logprobs' mode
    when not traced, ``"processed_logprobs"`` or else raw)."""
    choice = res.choices[0] if res.choices else None
    ended = choice is not None and choice.finish_reason == "stop" and not choice.text
    trace = choice.raw.get("sampler_trace") if choice is not None else None
    positions = trace.get("positions") if isinstance(trace, dict) else None
    if positions and isinstance(trace, dict):
        return _trace_view(trace, positions[0], settings, ended)
    entries = choice.logprobs if choice is not None else None
    if not entries:  # no logprobs: only the text of the token the server drew
        text = choice.text if choice is not None else ""
        return View(
            [],
            [],
            [],
            np.zeros(0),
            None,
            None,
            settings,
            "none",
            None,
            None,
            label(text) if text else "",
            ended or not text,
            extra={"piece": text.encode()},
        )
    tok = entries[0]
    alts = sorted(tok.top, key=lambda a: -a.logprob)
    ids = [a.token_id for a in alts]
    labels = [label(a.token) for a in alts]
    pieces = [_piece(a.token, a.bytes) for a in alts]
    lp = np.array([a.logprob for a in alts], dtype=float)
    drawn = next(
        (
            i
            for i, a in enumerate(alts)
            if (a.token_id == tok.token_id if a.token_id is not None else a.token == tok.token)
        ),
        None,
    )
    if drawn is None:  # the drawn token was not among the alternatives: add it, at the end
        ids.append(tok.token_id)
        labels.append(label(tok.token))
        pieces.append(_piece(tok.token, tok.bytes))
        lp = np.append(lp, tok.logprob)
        drawn = len(ids) - 1
    kind = "processed" if meaning == "processed_logprobs" else "raw"
    p = np.exp(lp)
    covered = float(p[: len(alts)].sum())
    other = max(0.0, 1.0 - covered) if kind == "raw" else None
    ent, gap = _entropy_gap(p)
    tail = float(lp[: len(alts)].min()) if alts else None
    view = View(ids, labels, pieces, lp, other, tail, settings, kind, None, drawn)
    view.drawn_label, view.entropy, view.gap = labels[drawn], ent, gap
    view.extra["probed"] = meaning is not None
    view.ended = ended or tok.token == ""
    return view


def _trace_view(
    trace: dict[str, Any], pos: dict[str, Any], settings: dict[str, Any], ended: bool
) -> View:
    cands = pos["candidates"]
    stages = pos["stages"]
    names = [s["stage"] for s in stages]
    before = stages[max(0, names.index("top_k") - 1)] if "top_k" in names else stages[0]
    p_in = np.asarray(before["p"], dtype=float)
    with np.errstate(divide="ignore"):
        lp = np.log(p_in)
    top = int(trace.get("top") or TRACE_TOP)
    finite = np.sort(p_in[p_in > 0])[::-1]
    tail = math.log(finite[min(top, finite.size) - 1]) if finite.size else None
    ids: list[int | None] = [int(c["id"]) for c in cands]
    labels = [label(c["token"]) for c in cands]
    pieces = [c["token"].encode() for c in cands]
    drawn = ids.index(int(pos["token_id"])) if pos.get("token_id") in ids else None
    raw_p = np.asarray(stages[0]["p"], dtype=float)
    _, gap = _entropy_gap(raw_p)
    pre_active = any(s["active"] and s["stage"] in ("logit_bias", "penalties") for s in stages)
    view = View(
        ids,
        labels,
        pieces,
        lp,
        max(0.0, 1.0 - float(p_in.sum())),
        tail,
        settings,
        "trace",
        pos,
        drawn,
        labels[drawn] if drawn is not None else "",
        ended,
        bounded=not pre_active,  # a bias or penalty may lift an unseen token above the tail
        entropy=float(stages[0]["entropy"]),
        gap=gap,
    )
    return view


# --- the stage rows drawn (all numbers computed here) ----------------------------------


def _fmt_setting(v: Any) -> str:
    if v is None:
        return "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _trace_row(s: dict[str, Any], cut: list[str | None], cols: Any) -> dict[str, Any]:
    """A row of the server's own trace (exact) for one stage ``s``."""
    return _row(
        s["stage"],
        s["setting"],
        s["active"],
        np.asarray(s["p"], dtype=float),
        cut,
        cols,
        float(s["removed_mass"]),
        float(s["entropy"]),
        int(s["kept"]),
        "exact",
    )


def _row(
    name: str,
    setting: Any,
    active: bool,
    p: np.ndarray,
    cut: list[str | None],
    cols: list[int],
    removed: float,
    entropy: float,
    kept: int,
    label: str,
) -> dict[str, Any]:
    cells = []
    for i in cols:
        val = float(p[i])
        cells.append(
            {
                "h": round(val, 4),
                "txt": f"{val:.3f}" if val >= 0.0005 else ("0" if val == 0 else "<.001"),
                "cut": cut[i] or "",
            }
        )
    return {
        "stage": name,
        "setting": ("" if setting is None else _fmt_setting(setting)) if active else "off",
        "active": active,
        "kept": kept,
        "removed": f"{removed:.3f}",
        "entropy": "" if math.isnan(entropy) else f"{entropy:.3f}",
        "label": label,
        "cells": cells,
    }


def stage_rows(
    view: View, settings: dict[str, Any], order: str
) -> tuple[list[dict[str, Any]], list[int], str]:
    """(rows, candidate columns shown, the view's label) under ``settings``, with no request.

    The server's own trace when it was taken with these settings; else the stages recomputed
    by :func:`run_chain` from the candidates, labelled exact or approximate with its bound.
    """
    n = len(view.ids)
    if n == 0:
        return [], [], "no logprobs: this server returns no candidates; Sample still works"
    cols = [int(c) for c in np.argsort(-view.logprobs, kind="stable")[:COLUMNS]]
    if view.kind == "trace" and view.trace is not None and settings == view.settings:
        cut = [c.get("cut_by") for c in view.trace["candidates"]]
        rows = []
        for s in view.trace["stages"]:
            if not s["active"] and s["stage"] in _PRE:
                continue
            rows.append(_trace_row(s, cut, cols))
        return rows, cols, "exact: the server's own trace of this step"
    if view.kind == "processed":
        p = np.exp(view.logprobs)
        row = _row(
            "processed", None, True, p, [None] * n, cols, 0.0, _entropy_gap(p)[0], n, "as returned"
        )
        row["setting"] = "as drawn"
        return (
            [row],
            cols,
            (
                "processed logprobs (the distribution the token was drawn from): they cannot be "
                "reshaped locally without applying a temperature twice; a slider asks the "
                "server again"
            ),
        )
    stages = run_chain(
        view.logprobs,
        **{k: settings[k] for k in (*SLIDERS, "typical_p") if k in settings},
        order=order,
        other_mass=view.other_mass,
        tail_max=view.tail_max,
    )
    cut = cut_by(stages)
    rows = []
    if view.kind == "trace" and view.trace is not None:
        tcut = [c.get("cut_by") for c in view.trace["candidates"]]
        for s in view.trace["stages"]:
            if s["stage"] == "raw" or (s["active"] and s["stage"] in _PRE):
                rows.append(_trace_row(s, [c if c in _PRE else None for c in tcut], cols))
        cut = [c if c in _PRE else cut[i] for i, c in enumerate(tcut)]
        stages = stages[1:]
    for st in stages:
        rows.append(_stage_row(st, cut, cols, view.bounded))
    last = stages[-1]
    if not view.bounded:
        label = "approximate (no bound: a bias or penalty may lift a token outside the candidates)"
    elif last.exact:
        label = "exact: recomputed from the returned candidates (no request)"
    else:
        label = last.label + ": recomputed from the returned candidates (no request)"
    if view.kind == "raw":
        label = f"what-if approximation over the returned top_logprobs ({order} order): " + label
        if not view.extra.get("probed", True):
            label += " (the logprobs' meaning was not probed: taken as raw, see tmlab.probe())"
    return rows, cols, label


def _stage_row(st: Stage, cut: list[str | None], cols: list[int], bounded: bool) -> dict[str, Any]:
    label = st.label if bounded or not st.active else "approximate (no bound)"
    name = "raw" if st.stage == "input" else st.stage
    return _row(
        name, st.setting, st.active, st.p, cut, cols, st.removed_mass, st.entropy, st.n_kept, label
    )

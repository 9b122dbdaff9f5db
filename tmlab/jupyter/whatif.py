"""The Explorer's what-if panel: reshape one position's returned alternatives, locally.

Sliders for temperature, top_k, top_p and min_p recompute the distribution at a selected
position with :func:`tmlab.analysis.whatif.whatif` — no request is sent — and draw the raw and the
what-if probabilities side by side as HTML bars. The what-if is an approximation over the
returned ``top_logprobs`` only, and says so; the raw mass outside them is shown too.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import ipywidgets as widgets
import pandas as pd

from tmlab.analysis.whatif import WHATIF_LABEL, whatif
from tmlab.errors import ParameterError
from tmlab.params import PARAMS
from tmlab.result import ChatResult

__all__ = ["WhatIfPanel", "server_order"]


def _slider(name: str, value: float, **overrides: Any) -> widgets.FloatSlider:
    """A what-if slider with the bounds of the parameter table's ``name``."""
    p = PARAMS[name]
    return widgets.FloatSlider(
        value=value,
        min=p.ui_min or 0.0,
        max=p.ui_max or 1.0,
        step=p.step or 0.01,
        description=name,
        tooltip=p.help,
        continuous_update=True,
        readout_format=".2f",
        style={"description_width": "110px"},
        **overrides,
    )


def server_order(res: ChatResult) -> str | None:
    """The order in which the server that answered ``res`` applies temperature and truncation,
    when its answer shows which server it is: ``"truncate_first"`` for tmlab's embedded server
    (its logprobs say their ``logprobs_mode``) and llama.cpp's server (its ``timings``); else
    ``None`` (unknown: vLLM and transformers apply the temperature first)."""
    raw = res.raw
    if "timings" in raw or raw.get("logprobs_mode"):
        return "truncate_first"
    for choice in raw.get("choices") or ():
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and lp.get("logprobs_mode"):
            return "truncate_first"
    return None


class WhatIfPanel(widgets.VBox):
    """Reshape the returned alternatives at one position under other sampling settings.

    Local and instant (:func:`tmlab.analysis.whatif.whatif`, no request): the bars show the raw
    probabilities as returned and the what-if ones, an approximation over the returned
    ``top_logprobs`` only; the raw mass outside them is shown too.
    """

    def __init__(self) -> None:
        self.res: ChatResult | None = None
        self._hold = False
        self.position = widgets.IntSlider(
            value=0,
            min=0,
            max=0,
            description="position",
            continuous_update=True,
            style={"description_width": "110px"},
            layout=widgets.Layout(width="480px"),
        )
        self.temperature = _slider("temperature", 1.0)
        top_k = PARAMS["top_k"]
        self.top_k = widgets.IntSlider(
            value=0,
            min=0,
            max=20,
            step=1,
            description="top_k",
            tooltip=top_k.help + " (0: off)",
            continuous_update=True,
            style={"description_width": "110px"},
        )
        self.top_p = _slider("top_p", 1.0)
        self.min_p = _slider("min_p", 0.0)
        self.order = widgets.Dropdown(
            options=[
                ("temperature, then truncation (vLLM, transformers)", "temperature_first"),
                ("truncation, then temperature (llama.cpp: the embedded server)", "truncate_first"),
            ],
            value="temperature_first",
            description="order",
            style={"description_width": "110px"},
            layout=widgets.Layout(width="480px"),
        )
        self.bars = widgets.HTML()
        self.bars.add_class("tmlab-whatif-bars")
        for w in (self.position, self.temperature, self.top_k, self.top_p, self.min_p, self.order):
            w.observe(self._on_change, names="value")
        super().__init__(
            [
                widgets.HTML(
                    "<b>What-if</b> — <i>an approximation</i>, computed here with no new "
                    "request: the returned top_logprobs alternatives reweighted "
                    "(softmax(logprob / T), then top_k, top_p, min_p, renormalised); the "
                    "probability outside them is unknown and left out."
                ),
                self.position,
                widgets.HBox([self.temperature, self.top_k]),
                widgets.HBox([self.top_p, self.min_p]),
                self.order,
                self.bars,
            ]
        )
        self.add_class("tmlab-whatif")
        self._redraw()

    def set_result(self, res: ChatResult | None, request: dict[str, Any] | None = None) -> None:
        """Show ``res`` (with logprobs); the sliders start at the settings it was sent with."""
        self.res = res
        self._hold = True
        try:
            frame = res.logprobs_frame() if res is not None else None
            n = 0 if frame is None else int((frame["choice"] == 0).sum())
            self.position.max = max(n - 1, 0)
            if frame is not None and n:
                # start at the most uncertain position: where the what-if is most telling
                entropy = frame.loc[frame["choice"] == 0, "entropy"].fillna(-1.0)
                self.position.value = int(entropy.to_numpy().argmax())
                widest = max((len(t) for t in frame["top_tokens"]), default=0)
                self.top_k.max = max(widest, 1)
            sent = request or {}

            def given(name: str, default: float) -> float:
                value = sent.get(name)
                return default if value is None else float(value)

            self.temperature.value = given("temperature", 1.0)
            self.top_k.value = min(max(int(given("top_k", 0)), 0), self.top_k.max)
            self.top_p.value = given("top_p", 1.0)
            self.min_p.value = given("min_p", 0.0)
            order = server_order(res) if res is not None else None
            if order is not None:  # the order of the server that answered, where known
                self.order.value = order
        finally:
            self._hold = False
        self._redraw()

    def frame(self) -> pd.DataFrame | None:
        """The what-if frame of the selected position, as shown (None without a result)."""
        if self.res is None:
            return None
        return whatif(
            self.res,
            temperature=self.temperature.value,
            top_k=self.top_k.value or None,
            top_p=self.top_p.value if self.top_p.value < 1 else None,
            min_p=self.min_p.value or None,
            position=self.position.value,
            order=self.order.value,
        )

    def _on_change(self, _change: object) -> None:
        if not self._hold:
            self._redraw()

    def _redraw(self) -> None:
        try:
            df = self.frame()
        except ParameterError as exc:
            self.bars.value = f"<i>{html.escape(str(exc))}</i>"
            return
        if df is None or df.empty:
            self.bars.value = (
                '<i style="opacity: 0.7">send with <b>logprobs</b> on and <b>top_logprobs</b> '
                "≥ 2 to reshape the alternatives here</i>"
            )
            return
        self.bars.value = self._context() + _bars_html(df)

    def _context(self) -> str:
        """The answer just before the selected position, and the token generated there."""
        choice = self.res.choices[0] if self.res is not None and self.res.choices else None
        tokens = [t.token for t in (choice.logprobs or [])] if choice is not None else []
        pos = self.position.value
        if not 0 <= pos < len(tokens):
            return ""
        before = "".join(tokens[max(0, pos - 16) : pos])
        return (
            '<div style="white-space: pre-wrap; margin: 4px 0">…'
            f'{html.escape(before)}<b style="background: #ffe082">{html.escape(tokens[pos])}</b>'
            "</div>"
        )


def _bar(p: float, color: str) -> str:
    width = 0.0 if math.isnan(p) else max(0.0, min(1.0, p)) * 100
    return (
        '<div style="width: 160px; background: #eee; display: inline-block; '
        f'vertical-align: middle"><div style="width: {width:.1f}%; height: 10px; '
        f'background: {color}"></div></div> <code>{p:.4f}</code>'
    )


def _bars_html(df: pd.DataFrame) -> str:
    rows = []
    for r in df.to_dict("records"):
        token = html.escape(json.dumps(r["token"], ensure_ascii=False))
        mark = " ◀ generated" if r["is_sampled"] else ""
        dim = "" if r["kept"] else ' style="opacity: 0.45"'
        raw, reshaped = (
            _bar(float(r["raw_prob"]), "#9e9e9e"),
            _bar(float(r["whatif_prob"]), "#1e88e5"),
        )
        rows.append(
            f"<tr{dim}><td>{r['rank']}</td><td><code>{token}</code>{mark}</td>"
            f"<td>{raw}</td><td>{reshaped}</td></tr>"
        )
    other = float(df["other_mass"].iloc[0])
    pos = int(df["position"].iloc[0])
    return (
        f'<table class="tmlab-whatif-table"><tr><th>rank</th><th>token (position {pos})</th>'
        "<th>raw (as returned)</th>"
        f"<th>{html.escape(WHATIF_LABEL)}</th></tr>{''.join(rows)}</table>"
        f'<div style="font-size: smaller">raw probability outside the returned alternatives: '
        f"<b>{other:.4f}</b> (the what-if ignores it; dimmed rows: cut by the what-if "
        "truncation)</div>"
    )

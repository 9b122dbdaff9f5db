"""KV caching made visible: what each request reused, what it saved, and why a prompt missed.

::

    report = tmlab.cache_report([first, second])   # ChatResults, history ids or a sweep frame
    report.attrs["totals"]                          # Σ prompt, Σ cached, hit rate, cost, saved
    tmlab.plot_cache(report)                        # TTFT against prompt tokens, by cached share
    tmlab.prefix_diff(first, second)                # where the two prompts stop sharing tokens

A server that caches prompts (Tensormesh, vLLM's prefix caching, llama.cpp's server) reuses
the KV of the longest prefix a new prompt shares with an earlier one, and says how many prompt
tokens it reused in ``usage.prompt_tokens_details.cached_tokens``. Those tokens are not
computed again (a shorter time to first token) and Tensormesh bills them at $0. Every count
here is the server's own; ``cache_hit_rate`` is ``cached_tokens / prompt_tokens``.

:func:`prefix_diff` finds the first token where two prompts differ: from the chat template's
exact tokens where the server tokenizes chat messages (``POST /tokenize`` with ``messages``,
tmlab's embedded server and vLLM), otherwise from the characters of the messages, and then it
says so.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tmlab.errors import ParameterError
from tmlab.result import ChatResult

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.client import Client

__all__ = ["CHARACTER_NOTE", "REPORT_COLUMNS", "PrefixDiff", "cache_report", "prefix_diff"]

REPORT_COLUMNS = [
    "history_id",
    "model",
    "prompt_tokens",
    "cached_tokens",
    "cache_hit_rate",
    "completion_tokens",
    "ttft_s",
    "latency_s",
    "cost_usd",
    "saved_usd",
]

REPORT_NOTES = (
    "One row per request, counts as the server reported them. cache_hit_rate: cached_tokens / "
    "prompt_tokens (<NA>: the server did not report cached tokens; 0: it reported none). "
    "ttft_s: request sent -> first token, measured by the client (equal to latency_s for a "
    "request that was not streamed). cost_usd: at the prices given (USD per million tokens), "
    "cached prompt tokens at cached_input (default 0, as on Tensormesh); saved_usd: cached "
    "tokens x (input - cached_input), what the cache saved against the same requests without "
    "it. totals (attrs['totals']): sums over the rows, the hit rate as Σ cached / Σ prompt."
)
_X_ALLOWED = "a ChatResult, a history id (int), a list of them, or a sweep or history DataFrame"

CHARACTER_NOTE = (
    "characters of the messages, not tokens: this server does not tokenize chat messages"
)
TOKEN_NOTE = (
    "tokens of the prompt as the server's chat template renders it (POST /tokenize with "
    "messages): the cache can reuse the tokens before the break, and no token from it on. A "
    "server that caches whole blocks (vLLM: 16 tokens) reuses only the whole blocks before it."
)

# -- cache_report ---------------------------------------------------------------------------


def _session_prices() -> Mapping[str, Any] | None:
    from tmlab.client.settings import session

    prices = getattr(session, "prices", None)
    return prices if isinstance(prices, Mapping) else None


def _record_of_result(res: ChatResult) -> dict[str, Any]:
    u, t = res.usage, res.timing
    return {
        "history_id": res.history_id,
        "model": res.model,
        "prompt_tokens": u.prompt_tokens,
        "cached_tokens": u.cached_tokens,
        "completion_tokens": u.completion_tokens,
        "ttft_s": t.ttft_s,
        "latency_s": t.latency_s,
    }


def _record_of_id(hid: int) -> dict[str, Any]:
    from tmlab.client.history import get_row

    row = get_row(hid)
    if row is None:
        raise ParameterError("x", f"history id {hid} is not in the history", _X_ALLOWED)
    return {
        "history_id": row["id"],
        "model": row.get("model"),
        "prompt_tokens": row.get("prompt_tokens"),
        "cached_tokens": row.get("cached_tokens"),
        "completion_tokens": row.get("completion_tokens"),
        "ttft_s": row.get("ttft_s"),
        "latency_s": row.get("latency_s"),
    }


def _records_of_frame(df: pd.DataFrame) -> list[dict[str, Any]]:
    if "prompt_tokens" not in df.columns:
        raise ParameterError("x", "the DataFrame has no prompt_tokens column", _X_ALLOWED)
    ids = df["history_id"] if "history_id" in df.columns else df.get("id")
    records = []
    for i in range(len(df)):
        rec: dict[str, Any] = {"history_id": None if ids is None else ids.iloc[i]}
        for col in REPORT_COLUMNS[1:8]:
            rec[col] = df[col].iloc[i] if col in df.columns else None
        records.append(rec)
    return records


def _is_id(value: Any) -> bool:
    import numpy as np

    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _records(x: Any) -> list[dict[str, Any]]:
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        return _records_of_frame(x)
    items = [x] if isinstance(x, ChatResult) or _is_id(x) else x
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise ParameterError("x", f"x of type {type(x).__name__} cannot be reported", _X_ALLOWED)
    records = []
    for item in items:
        if isinstance(item, ChatResult):
            records.append(_record_of_result(item))
        elif _is_id(item):
            records.append(_record_of_id(int(item)))
        else:
            raise ParameterError(
                "x", f"an item of type {type(item).__name__} cannot be reported", _X_ALLOWED
            )
    return records


def cache_report(x: Any, prices: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Per request: prompt tokens, cached tokens, hit rate, TTFT, cost and money saved.

    ``x``: a :class:`~tmlab.ChatResult`, a history id, a list of them, or a frame of
    :func:`tmlab.sweep` / :func:`tmlab.history`. ``prices`` in USD per million tokens as in
    :func:`tmlab.usage_frame` (default: ``%tmconfig prices=IN,OUT[,CACHED]``); without prices
    ``cost_usd`` and ``saved_usd`` are <NA>. Requests without a prompt token count (failed
    ones) are left out, counted in ``attrs["left_out"]``. ``attrs["totals"]``: ``requests,
    prompt_tokens, cached_tokens, cache_hit_rate, cost_usd, saved_usd``. Draw it with
    :func:`tmlab.plot_cache`.
    """
    import pandas as pd

    from tmlab.frames import cache_hit_rate, price_of, request_cost

    prices = prices if prices is not None else _session_prices()
    kept, left_out = [], 0
    for rec in _records(x):
        if rec["prompt_tokens"] is None or pd.isna(rec["prompt_tokens"]):
            left_out += 1
            continue
        rec["cache_hit_rate"] = cache_hit_rate(rec["prompt_tokens"], rec["cached_tokens"])
        price = price_of(prices, rec["model"])
        out = rec["completion_tokens"]
        if price is None or out is None or pd.isna(out):
            rec["cost_usd"] = rec["saved_usd"] = None
        else:
            cached = rec["cached_tokens"]
            cached = None if cached is None or pd.isna(cached) else int(cached)
            rec["cost_usd"], rec["saved_usd"] = request_cost(
                price, int(rec["prompt_tokens"]), cached, int(out)
            )
        kept.append(rec)
    df = pd.DataFrame.from_records(kept, columns=REPORT_COLUMNS)
    for col in ("history_id", "prompt_tokens", "cached_tokens", "completion_tokens"):
        df[col] = pd.array([None if pd.isna(v) else int(v) for v in df[col]], dtype="Int64")
    for col in ("cache_hit_rate", "cost_usd", "saved_usd"):
        df[col] = pd.array([None if pd.isna(v) else float(v) for v in df[col]], dtype="Float64")
    for col in ("ttft_s", "latency_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df.attrs.update(
        notes=REPORT_NOTES
        if prices
        else REPORT_NOTES + " No prices: pass prices= or set "
        "%tmconfig prices=IN,OUT[,CACHED] for cost_usd and saved_usd.",
        totals=_totals(df),
        left_out=left_out,
    )
    return df


def _total(series: pd.Series) -> float | None:
    """The sum, or None when a value is unknown (no number beats a low one)."""
    if len(series) == 0 or series.isna().any():
        return None
    return float(series.sum())


def _totals(df: pd.DataFrame) -> dict[str, Any]:
    known = df["cached_tokens"].notna()
    prompt_known = int(df.loc[known, "prompt_tokens"].sum())
    cached = int(df.loc[known, "cached_tokens"].sum())
    return {
        "requests": len(df),
        "prompt_tokens": int(df["prompt_tokens"].sum()),
        "cached_tokens": cached if known.any() else None,
        "cache_hit_rate": cached / prompt_known if prompt_known else None,
        "cost_usd": _total(df["cost_usd"]),
        "saved_usd": _total(df["saved_usd"]),
    }


# -- prefix_diff ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefixDiff:
    """Where two prompts stop sharing a prefix: the first token (or character) that breaks a
    prompt cache.

    ``position``: the index of the first unit that differs (``None``: the prompts are the
    same); ``shared``: the length of the common prefix, in ``unit`` (``"token"`` or
    ``"character"``); ``lengths``: both prompts' lengths in that unit; ``note``: what the units
    are. ``a`` and ``b`` hold each prompt's text as (shared prefix, first differing unit,
    rest). Shown in a notebook as the two prompts aligned with the break highlighted.
    """

    position: int | None
    shared: int
    unit: str
    lengths: tuple[int, int]
    note: str
    a: tuple[str, str, str]
    b: tuple[str, str, str]
    tokens: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def describe(self) -> str:
        """One sentence: how much the prompts share and where they break."""
        units = f"{self.unit}s"
        if self.position is None:
            return f"the prompts are the same: {self.shared} {units} ({self.note})"
        return (
            f"the prompts share their first {self.shared} {units}; {self.unit} {self.position} "
            f"breaks the cache: {self.a[1]!r} vs {self.b[1]!r} ({self.note})"
        )

    def __repr__(self) -> str:
        return f"PrefixDiff({self.describe()})"

    def _repr_html_(self) -> str:
        rows = [_html_row("A", self.a, self.position), _html_row("B", self.b, self.position)]
        return (
            '<div class="tmlab-prefix-diff">'
            f"<div>{html.escape(self.describe())}</div>"
            '<table style="font-family: monospace; white-space: pre-wrap; text-align: left">'
            + "".join(rows)
            + "</table></div>"
        )


_SHOWN = 240  # characters of the shared prefix shown before the break


def _html_row(label: str, parts: tuple[str, str, str], position: int | None) -> str:
    shared, brk, rest = parts
    hidden = ""
    if len(shared) > _SHOWN:
        hidden = f'<i style="opacity: 0.6">[{len(shared) - _SHOWN:,} characters shared] </i>…'
        shared = shared[-_SHOWN:]
    cell = (
        hidden
        + f'<span style="background: #d7f0d7">{html.escape(shared)}</span>'
        + (
            f'<span style="background: #f4a6a6; font-weight: bold">{html.escape(brk) or "∅"}</span>'
            if position is not None
            else ""
        )
        + html.escape(rest[:_SHOWN])
        + ("…" if len(rest) > _SHOWN else "")
    )
    head = f'<th style="vertical-align: top">{label}</th>'
    return f'<tr>{head}<td style="text-align: left">{cell}</td></tr>'


def _messages_of(x: Any, name: str) -> tuple[list[Any], str | None, str | None]:
    """(messages, the server's base URL if known, model if known) of a prompt."""
    from tmlab.client.history import get_row

    allowed = "a ChatResult, a history id (int), a list of messages, or a string"
    if isinstance(x, ChatResult):
        messages = x.request.get("messages")
        if not isinstance(messages, list):
            raise ParameterError(name, f"{name} has no messages in its request", allowed)
        return messages, x.base_url, x.model
    if _is_id(x):
        row = get_row(int(x))
        if row is None or not isinstance(row.get("messages"), list):
            raise ParameterError(name, f"history id {x} is not in the history", allowed)
        return row["messages"], row.get("base_url"), row.get("model")
    if isinstance(x, str):
        return [{"role": "user", "content": x}], None, None
    if isinstance(x, Sequence) and x and all(isinstance(m, Mapping) and "role" in m for m in x):
        return [dict(m) for m in x], None, None
    raise ParameterError(name, f"{name} of type {type(x).__name__} is not a prompt", allowed)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "")
            if isinstance(p, Mapping) and p.get("type") == "text"
            else json.dumps(p, ensure_ascii=False, default=str)
            for p in content
        )
    return "" if content is None else json.dumps(content, ensure_ascii=False, default=str)


def render_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """The messages as one text, in order: ``role: content`` per message, a line each (the
    characters :func:`prefix_diff` compares where the server does not tokenize messages)."""
    return "".join(f"{m.get('role', '?')}: {_content_text(m.get('content'))}\n" for m in messages)


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _root(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


_TOKENIZES: dict[str, bool] = {}  # server root -> whether /tokenize takes chat messages


def _tokenize(root: str, messages: list[Any], model: str | None) -> dict[str, Any] | None:
    """``POST /tokenize`` with ``messages``; None when the server does not tokenize them."""
    import httpx

    if _TOKENIZES.get(root) is False:
        return None
    body: dict[str, Any] = {"messages": messages}
    if model:
        body["model"] = model
    try:
        response = httpx.post(root + "/tokenize", json=body, timeout=60.0)
        data = response.json() if response.is_success else None
    except (httpx.HTTPError, ValueError):
        return None  # unreachable or not JSON: fall back, and ask again next time
    if not response.is_success:
        if response.status_code in (404, 405):  # no such route: remember
            _TOKENIZES[root] = False
        return None  # refused these messages (too long, bad): fall back this time only
    if not isinstance(data, dict):
        _TOKENIZES[root] = False
        return None
    tokens = data.get("tokens")
    # llama.cpp's /tokenize ignores ``messages`` and answers {"tokens": []}: a server that
    # tokenized the messages returns their tokens and their count (tmlab's server, vLLM)
    ok = (
        isinstance(tokens, list)
        and bool(tokens)
        and all(isinstance(t, int) for t in tokens)
        and data.get("count") == len(tokens)
    )
    _TOKENIZES[root] = ok
    return data if ok else None


def _pieces(data: Mapping[str, Any]) -> list[str] | None:
    tokens = data["tokens"]
    for key in ("pieces", "token_strs"):
        pieces = data.get(key)
        if not isinstance(pieces, list) or len(pieces) != len(tokens):
            continue
        if all(isinstance(p, str) for p in pieces):
            return pieces
    return None


def _detokenize(root: str, tokens: Sequence[int]) -> str:
    import httpx

    if not tokens:
        return ""
    try:
        response = httpx.post(root + "/detokenize", json={"tokens": list(tokens)}, timeout=60.0)
        text = response.json().get("prompt") if response.is_success else None
    except (httpx.HTTPError, ValueError, AttributeError):
        text = None
    return text if isinstance(text, str) else " ".join(f"[{t}]" for t in tokens)


def _common(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _server(hints: list[str | None], client: Client | None) -> str | None:
    """The base URL whose /tokenize may be asked: the client's, else the requests' own."""
    from tmlab.client import Client, local

    if client is None:
        known = {h.rstrip("/") for h in hints if h}
        if len(known) == 1:
            return known.pop()
        if known:
            return None  # two servers: no one tokenizer holds both
        client = Client()
    if client.base_url:
        return client.base_url
    return local.ensure_server().base_url if client.embedded else None


def prefix_diff(a: Any, b: Any, *, client: Client | None = None) -> PrefixDiff:
    """Where two prompts stop sharing a prefix: the first token that breaks a prompt cache.

    ``a`` and ``b``: :class:`~tmlab.ChatResult`\\ s, history ids, message lists or strings (one
    user message). On a server on this machine that tokenizes chat messages (``POST /tokenize``
    with ``messages``: tmlab's embedded server, vLLM) the prompts are compared token by token,
    as the chat template renders them; elsewhere the characters of the messages (see
    :func:`render_messages`) are compared, and the result says so (``unit="character"``).
    The server is ``client``'s, else the one the requests went to, else the session's.
    """
    msgs_a, url_a, model_a = _messages_of(a, "a")
    msgs_b, url_b, model_b = _messages_of(b, "b")
    base = _server([url_a, url_b], client)
    model = model_a or model_b or (client.model if client is not None else None)
    if base is not None and _loopback(base):
        root = _root(base)
        da = _tokenize(root, msgs_a, model)
        db = _tokenize(root, msgs_b, model) if da is not None else None
        if da is not None and db is not None:
            return _token_diff(root, da, db)
    return _character_diff(render_messages(msgs_a), render_messages(msgs_b))


def _token_diff(root: str, da: Mapping[str, Any], db: Mapping[str, Any]) -> PrefixDiff:
    ta, tb = list(da["tokens"]), list(db["tokens"])
    n = _common(ta, tb)
    same = len(ta) == len(tb) == n
    pa, pb = _pieces(da), _pieces(db)
    if pa is not None and pb is not None:
        parts_a = ("".join(pa[:n]), "".join(pa[n : n + 1]), "".join(pa[n + 1 :]))
        parts_b = ("".join(pb[:n]), "".join(pb[n : n + 1]), "".join(pb[n + 1 :]))
    else:
        shared = _detokenize(root, ta[:n])
        parts_a = (shared, _detokenize(root, ta[n : n + 1]), _detokenize(root, ta[n + 1 :]))
        parts_b = (shared, _detokenize(root, tb[n : n + 1]), _detokenize(root, tb[n + 1 :]))
    return PrefixDiff(
        position=None if same else n,
        shared=n,
        unit="token",
        lengths=(len(ta), len(tb)),
        note=TOKEN_NOTE,
        a=parts_a,
        b=parts_b,
        tokens=(tuple(ta), tuple(tb)),
    )


def _character_diff(text_a: str, text_b: str) -> PrefixDiff:
    n = _common(text_a, text_b)
    same = text_a == text_b
    return PrefixDiff(
        position=None if same else n,
        shared=n,
        unit="character",
        lengths=(len(text_a), len(text_b)),
        note=CHARACTER_NOTE,
        a=(text_a[:n], text_a[n : n + 1], text_a[n + 1 :]),
        b=(text_b[:n], text_b[n : n + 1], text_b[n + 1 :]),
    )

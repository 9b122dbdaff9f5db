"""``tmlab.probe()``: what this server and model do, measured in a few tiny requests.

Servers disagree on what their numbers mean, so tmlab asks instead of guessing. At most
:data:`MAX_REQUESTS` tiny chat requests (each a few tokens), listed on stdout before the first
is sent, answer:

========================  ===================================================================
logprobs                  supported? the largest ``top_logprobs`` accepted (20, else 5)
logprobs meaning          the same prompt and seed at temperature 1 and 0.5: the returned
                          alternatives unchanged ⇒ raw; rescaled as by a temperature
                          (``log p' = 2·log p − c``) ⇒ processed; anything else ⇒ unknown
seed                      the same seeded request twice at temperature 1: the same answer?
n > 1                     ``n=2``: two choices?
echo with prompt          ``echo=True, logprobs=True``: the prompt's tokens with logprobs?
logprobs
continuation              the one continuation check (:mod:`tmlab.analysis.continuation_check`):
                          greedy, go on from ``1, 2, 3, 4,`` with ``continue_final_message=True,
                          add_generation_prompt=False`` (``5``?), then without them
                          (``5`` again: it always prefills)
reasoning                 ``reasoning_effort="low"``: in ``message.reasoning``,
                          ``message.reasoning_content``, ``<think>`` in the content, or none
usage in streams          ``stream=True`` with ``stream_options.include_usage``: usage?
========================  ===================================================================

The result is kept per (base URL, model) for the session in :mod:`tmlab.capabilities`, the one
record of what a server does (``refresh=True`` asks again): the meaning of the logprobs, so
that frames from this server say what their numbers are and the what-if never applies a
temperature to numbers that already carry one; the continuation verdict, which branch,
``--prefill``, score and classify consult. A request that fails for a reason unrelated to the
capability (a timeout, a 5xx, a connection error, a 429) gives the verdict ``unknown`` with
the error, and such a table is not kept: the next use asks again.

Module named ``probes`` (not ``probe``) so that ``tmlab.probe`` stays the function whatever
was imported first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from tmlab import capabilities
from tmlab.analysis import continuation_check as continuation
from tmlab.analysis.runner import client_kwargs
from tmlab.analysis.scoring import prompt_entries
from tmlab.client import Client
from tmlab.client.base import BaseClient
from tmlab.client.history import request_source
from tmlab.client.settings import session
from tmlab.errors import APIError, BadRequestError, ParameterError
from tmlab.meaning import PROCESSED, RAW, note_mode

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = ["MAX_REQUESTS", "NEEDS", "PROBE_COLUMNS", "PlannedRequest", "needs", "probe"]

MAX_REQUESTS = 10
PROBE_COLUMNS = ["capability", "asked", "came_back", "verdict"]

PROMPT = "Name a colour."
SEED = 7
# |Δ logprob| below which two answers count as the same numbers (servers round differently)
SAME = 1e-4

UNKNOWN = "unknown"
"""The verdict when a request failed for a reason unrelated to the capability."""


@dataclass(frozen=True)
class PlannedRequest:
    """One request the probe sends: what for, and its parameters."""

    purpose: str
    params: dict[str, Any]


PLAN: tuple[PlannedRequest, ...] = (
    PlannedRequest(
        "logprobs (top_logprobs=20; 5 if refused)",
        {"logprobs": True, "top_logprobs": 20, "temperature": 1.0, "seed": SEED, "max_tokens": 4},
    ),
    PlannedRequest(
        "logprobs meaning: the same at temperature 0.5",
        {"logprobs": True, "top_logprobs": 20, "temperature": 0.5, "seed": SEED, "max_tokens": 4},
    ),
    PlannedRequest(
        "seed: the first request again",
        {"logprobs": True, "top_logprobs": 20, "temperature": 1.0, "seed": SEED, "max_tokens": 4},
    ),
    PlannedRequest("n > 1", {"n": 2, "temperature": 1.0, "max_tokens": 2}),
    PlannedRequest(
        "echo with prompt logprobs",
        {"echo": True, "logprobs": True, "max_tokens": 1, "temperature": 0},
    ),
    PlannedRequest(
        "continuation: go on from '1, 2, 3, 4,' (greedy) with continue_final_message",
        {**continuation.ASK, **continuation.CONTINUE},
    ),
    PlannedRequest("continuation: the same without it (always prefills?)", continuation.ASK),
    PlannedRequest(
        "reasoning: reasoning_effort='low'", {"reasoning_effort": "low", "max_tokens": 8}
    ),
    PlannedRequest(
        "usage in streams",
        {"stream": True, "stream_options": {"include_usage": True}, "max_tokens": 2},
    ),
)


def _sync_client(client: Any) -> Client:
    if client is None:
        return Client()
    if isinstance(client, Client):
        return client
    if isinstance(client, BaseClient):
        return Client(**client_kwargs(client))
    raise ParameterError(
        "client", f"client={type(client).__name__} is not a tmlab client", "a tmlab.Client"
    )


class _Prober:
    """Sends the planned requests one by one, counting them."""

    def __init__(self, client: Client, model: str | None) -> None:
        self.client = client
        self.model = model
        self.sent = 0
        self.unsure = False  # a request failed for a reason unrelated to a capability

    def send(self, messages: Any, **params: Any) -> ChatResult:
        if self.sent >= MAX_REQUESTS:  # pragma: no cover - the plan stays within the limit
            raise RuntimeError("the probe would exceed its request budget")
        self.sent += 1
        extra = {k: params.pop(k) for k in list(params) if k in continuation.CONTINUE}
        stream = bool(params.pop("stream", False))
        with request_source("probe"):
            return self.client.chat(
                messages, model=self.model, stream=stream, extra_body=extra or None, **params
            )

    def attempt(self, messages: Any, **params: Any) -> tuple[ChatResult | None, str | None]:
        """(result, None) or (None, why it failed: the server's own words, one line).

        A refusal (400/422) answers the question; any other failure (timeout, 5xx, lost
        connection, rate limit) does not: it marks the probe unsure (see :meth:`verdict`).
        """
        try:
            return self.send(messages, **params), None
        except BadRequestError as exc:
            return None, _short(f"{type(exc).__name__}: {exc}")
        except APIError as exc:
            self.unsure = True
            return None, _short(f"{UNSURE_MARK}{type(exc).__name__}: {exc}")


UNSURE_MARK = "request failed, not an answer: "


def _verdict(err: str | None, verdict: str) -> str:
    """``verdict``, or :data:`UNKNOWN` when ``err`` is a failure unrelated to the capability."""
    return UNKNOWN if err is not None and err.startswith(UNSURE_MARK) else verdict


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _first_alts(res: ChatResult | None) -> dict[str, float]:
    """The first position's returned alternatives: token (id when known) -> logprob."""
    if res is None or not res.choices or not res.choices[0].logprobs:
        return {}
    first = res.choices[0].logprobs[0]
    return {
        str(a.token_id if a.token_id is not None else a.token): a.logprob
        for a in first.top
        if not math.isnan(a.logprob)
    }


def _meaning_verdict(one: dict[str, float], half: dict[str, float]) -> tuple[str | None, str]:
    """Compare the first position's alternatives at T=1 and T=0.5."""
    common = [k for k in one if k in half]
    if len(common) < 2:
        return None, f"{len(common)} alternative(s) in common: cannot compare"
    diffs = [half[k] - one[k] for k in common]
    if max(abs(d) for d in diffs) < SAME:
        return (
            RAW,
            f"unchanged over {len(common)} common alternatives "
            f"(max |Δ| {max(map(abs, diffs)):.1e})",
        )
    shifted = [half[k] - 2 * one[k] for k in common]  # processed at T=0.5: 2·lp − c
    spread = max(shifted) - min(shifted)
    if spread < 1e-3:
        return (
            PROCESSED,
            f"rescaled: logprob(T=0.5) = 2·logprob(T=1) {'−' if shifted[0] < 0 else '+'} "
            f"{abs(shifted[0]):.4f} over "
            f"{len(common)} alternatives (spread {spread:.1e})",
        )
    return None, f"changed, but not as a temperature rescales them (spread {spread:.2f})"


def _plan_text(base_url: str | None, model: str | None) -> str:
    lines = [f"tmlab.probe: up to {MAX_REQUESTS} tiny requests to {base_url} ({model}):"]
    for i, r in enumerate(PLAN, start=1):
        lines.append(f"  {i}. {r.purpose}")
    return "\n".join(lines)


def probe(
    client: Any = None,
    model: str | None = None,
    *,
    refresh: bool = False,
    quiet: bool = False,
    out: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """What this server and model do: one row per capability (asked, came back, verdict).

    At most :data:`MAX_REQUESTS` tiny requests, listed first (unless ``quiet``); the answer
    is cached per (base URL, model) for the session (``refresh=True`` probes again). The
    logprobs' meaning found (raw, processed, or unknown) is remembered: frames of this
    server's answers say it in their notes, and the what-if warns on processed numbers.
    """
    c = _sync_client(client)
    try:
        return _probe(c, model, refresh=refresh, quiet=quiet, out=out)
    finally:
        if c is not client:  # made here: its connections are closed here
            c.close()


def _probe(
    c: Client,
    model: str | None = None,
    *,
    refresh: bool = False,
    quiet: bool = False,
    out: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """:func:`probe` on ``c``."""
    c._setup()  # the embedded server starts here, so that its URL is known
    if model is None:
        model = c.model
        if model is None:
            served = [str(m.get("id")) for m in c.models() if isinstance(m, dict)]
            if len(served) != 1:
                raise ParameterError(
                    "model",
                    f"no model given; {c.base_url} serves {', '.join(served) or 'none'}",
                    "probe(model=NAME) or Client(model=NAME)",
                )
            model = served[0]
    caps = capabilities.find(c.base_url, model)
    if caps is not None and caps.probe is not None and not refresh:
        return caps.probe.copy()
    if not quiet:
        out(_plan_text(c.base_url, model))
    p = _Prober(c, model)
    rows: list[dict[str, str]] = []
    user = [{"role": "user", "content": PROMPT}]

    # 1-3: logprobs, their meaning, the seed
    first, err = p.attempt(user, **PLAN[0].params)
    top = 20
    if first is None and _verdict(err, "") != UNKNOWN:  # 20 refused: try 5
        top = 5
        first, err5 = p.attempt(user, **{**PLAN[0].params, "top_logprobs": 5})
        err = err5 or err
    alts = len(_first_alts(first))
    mode: str | None = None
    meaning_known = False
    if first is None or not first.choices or not first.choices[0].logprobs:
        rows.append(
            _row(
                "logprobs",
                "logprobs=True, top_logprobs=20, then 5",
                err or "no logprobs in the answer",
                _verdict(err, "not supported"),
            )
        )
        meaning_known = _verdict(err, "") != UNKNOWN
        rows.append(_row("logprobs meaning", "temperature 1 vs 0.5", "(no logprobs)", UNKNOWN))
    else:
        rows.append(
            _row(
                "logprobs",
                f"logprobs=True, top_logprobs={top}" + (" (20 was refused)" if top == 5 else ""),
                f"{alts} alternatives at the first position",
                f"supported, top_logprobs up to {top}"
                if alts >= top
                else f"supported; {alts} alternatives returned of {top} asked",
            )
        )
        half, err = p.attempt(user, **{**PLAN[1].params, "top_logprobs": top})
        mode, detail = _meaning_verdict(_first_alts(first), _first_alts(half))
        meaning_known = _verdict(err, "") != UNKNOWN
        rows.append(
            _row(
                "logprobs meaning",
                "the same prompt and seed at temperature 1 and 0.5",
                err or detail,
                _verdict(err, mode or UNKNOWN),
            )
        )
    if meaning_known:
        note_mode(c.base_url, model, mode)
    again, err = p.attempt(user, **{**PLAN[2].params, "top_logprobs": top if first else 0})
    if first is None or again is None:
        rows.append(
            _row(
                "seed",
                "the same request twice, seed=7, temperature 1",
                err or "(failed)",
                UNKNOWN,
            )
        )
    else:
        same = first.text == again.text
        rows.append(
            _row(
                "seed",
                "the same request twice, seed=7, temperature 1",
                f"{first.text!r} / {again.text!r}",
                "repeats" if same else "does not repeat",
            )
        )
    # 4: n > 1
    res, err = p.attempt(user, **PLAN[3].params)
    k = len(res.choices) if res is not None else 0
    rows.append(
        _row(
            "n > 1",
            "n=2",
            err or f"{k} choice(s)",
            _verdict(err, "supported" if k == 2 else "not supported"),
        )
    )
    # 5: echo with prompt logprobs
    res, err = p.attempt(user, **PLAN[4].params)
    entries = prompt_entries(res) if res is not None else []
    rows.append(
        _row(
            "echo with prompt logprobs",
            "echo=True, logprobs=True",
            err or f"{len(entries)} prompt token(s) with logprobs",
            _verdict(err, "supported" if entries else "not supported"),
        )
    )
    # 6-7: continuation of a final assistant message: the one check, asked anew
    cont = continuation.check(c, model, refresh=True)
    p.sent += cont.requests
    if cont.continues is None:
        p.unsure = True
    came_back = cont.came_back
    if cont.error is not None and cont.continues is None:
        came_back = _short(UNSURE_MARK + came_back)
    rows.append(
        _row(
            "continuation of a final assistant message",
            "continue_final_message=True, add_generation_prompt=False; then without",
            came_back,
            cont.verdict,
        )
    )
    # 8: where reasoning arrives
    res, err = p.attempt(user, **PLAN[7].params)
    rows.append(
        _row(
            "reasoning",
            "reasoning_effort='low'",
            err or _where_reasoning(res),
            _verdict(err, _reasoning_verdict(res)),
        )
    )
    # 9: usage in streams
    res, err = p.attempt(user, **PLAN[8].params)
    got = res is not None and res.usage.total_tokens is not None
    rows.append(
        _row(
            "usage in streams",
            "stream=True, stream_options={'include_usage': True}",
            err or (f"usage: {res.usage.total_tokens} total tokens" if got and res else "no usage"),
            _verdict(err, "supported" if got else "not supported"),
        )
    )
    df = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    notes = (
        f"tmlab.probe() of {c.base_url} ({model}): {p.sent} requests. logprobs meaning: "
        "raw = the model's distribution before sampling settings; processed = the distribution "
        "each token was drawn from; unknown = neither pattern (or no logprobs)."
    )
    if p.unsure:
        notes += (
            " unknown also marks a request that failed for a reason unrelated to the "
            "capability (timeout, 5xx, connection, rate limit): this table is not kept, the "
            "next tmlab.probe() asks again."
        )
    df.attrs["notes"] = notes
    df.attrs["base_url"], df.attrs["model"], df.attrs["requests"] = c.base_url, model, p.sent
    df.attrs["logprobs_mode"] = mode
    if not p.unsure:
        capabilities.of(c.base_url, model).probe = df
    return df.copy()


def _row(capability: str, asked: str, came_back: str, verdict: str) -> dict[str, str]:
    return {"capability": capability, "asked": asked, "came_back": came_back, "verdict": verdict}


def _reasoning_fields(res: ChatResult | None) -> list[str]:
    if res is None or not res.choices:
        return []
    msg = res.choices[0].raw.get("message") or {}
    found = [f"message.{k}" for k in ("reasoning", "reasoning_content") if msg.get(k)]
    content = msg.get("content")
    if isinstance(content, str) and ("<think>" in content or "</think>" in content):
        found.append("<think> in the content")
    return found


def _where_reasoning(res: ChatResult | None) -> str:
    found = _reasoning_fields(res)
    return ", ".join(found) if found else "no reasoning text"


def _reasoning_verdict(res: ChatResult | None) -> str:
    found = _reasoning_fields(res)
    return f"in {found[0]}" if found else "none seen"


def forget() -> None:
    """Forget everything learned about every server (the next :func:`probe` asks again)."""
    capabilities.forget()


NEEDS: dict[str, tuple[str, str]] = {
    "logprobs": ("logprobs", "supported"),
    "echo": ("echo with prompt logprobs", "supported"),
    "continuation": ("continuation of a final assistant message", "continues"),
    "n": ("n > 1", "supported"),
}
"""What :func:`needs` can ask for: the probe row that says it, and how its verdict begins."""


def needs(*what: str, client: Any = None, out: Callable[[str], Any] = print) -> bool:
    """Make sure this session's server can do ``what`` (names of :data:`NEEDS`: ``"logprobs"``,
    ``"echo"``, ``"continuation"``, ``"n"``), as the probe says; if it cannot, switch the session
    to the embedded local model (``%tmconfig local``), saying so in one line. True when the
    session's own server can; False when it switched.

    For a lesson that cannot teach without a capability: on a server that lacks it, the lesson
    runs on the local model, labelled, instead of failing cell by cell. A verdict the probe
    could not reach (``unknown``: a timeout, a 5xx) is an error, not a switch.
    """
    unknown = [w for w in what if w not in NEEDS]
    if unknown:
        raise ParameterError("what", f"cannot check {unknown}", ", ".join(NEEDS))
    c = _sync_client(client)
    try:
        table = probe(c, quiet=True)
        where = c.base_url or "this server"
    finally:
        if c is not client:
            c.close()
    verdicts = dict(zip(table["capability"], table["verdict"], strict=True))
    missing = []
    for name in what:
        row, good = NEEDS[name]
        verdict = str(verdicts.get(row, "unknown"))
        if verdict.startswith("unknown"):
            raise APIError(f"could not tell whether the server does {name}: {verdict}")
        if not verdict.startswith(good):
            missing.append(f"{name} ({verdict})")
    if not missing:
        return True
    out(
        f"tmlab: {where} lacks {', '.join(missing)}: this session now uses the embedded "
        "local model (%tmconfig local), where every number below is computed"
    )
    session.update(local=True)
    return False
